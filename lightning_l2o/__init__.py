"""lightning-l2o: learned optimizers meta-trained and meta-tested with PyTorch Lightning."""

import warnings

with warnings.catch_warnings():  # torch_geometric 2.8 scripts helpers at import; torch 2.14 deprecates torch.jit.script
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
    import torch_geometric  # noqa: F401

from lightning_l2o.checkpoints import load_meta_optimizer
from lightning_l2o.meta_optimizers import (
    Adam,
    FFMetaOptimizer,
    LSTMMetaOptimizer,
    MetaOptimizer,
    NFNMetaOptimizer,
    Opt2Vec,
    PNAMetaOptimizer,
    RelationalTransformerMetaOptimizer,
    SGDMomentum,
)
from lightning_l2o.module import L2OModule
from lightning_l2o.optim import LearnedOptimizer, Opt2VecOptimizer, load_learned_optimizer
from lightning_l2o.pretrained import list_pretrained, load_pretrained, pretrained_card

__all__ = [
    "Adam", "FFMetaOptimizer", "L2OModule", "LSTMMetaOptimizer", "LearnedOptimizer", "MetaOptimizer", "NFNMetaOptimizer", "Opt2Vec", "Opt2VecOptimizer", "PNAMetaOptimizer",
    "RelationalTransformerMetaOptimizer", "SGDMomentum",
    "list_pretrained", "load_learned_optimizer", "load_meta_optimizer", "load_pretrained", "pretrained_card",
]
