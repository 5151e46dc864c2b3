"""Update rules: learned meta-optimizers and hand-designed baselines behind one interface."""

from lightning_l2o.meta_optimizers.base import Info, MetaOptimizer, State
from lightning_l2o.meta_optimizers.baselines import (
    BASELINES,
    DECAYED_BASELINES,
    Adam,
    AdamW,
    BaselineSetting,
    SGDMomentum,
    baseline_settings,
    build_baseline,
)
from lightning_l2o.meta_optimizers.ff import FFMetaOptimizer
from lightning_l2o.meta_optimizers.gnn import NFNMetaOptimizer, PNAMetaOptimizer, RelationalTransformerMetaOptimizer
from lightning_l2o.meta_optimizers.lstm import LSTMMetaOptimizer
from lightning_l2o.meta_optimizers.opt2vec import Opt2Vec, TinyOpt2VecNetwork

__all__ = [
    "BASELINES", "DECAYED_BASELINES", "Adam", "AdamW", "BaselineSetting", "FFMetaOptimizer", "Info", "LSTMMetaOptimizer", "MetaOptimizer", "NFNMetaOptimizer", "Opt2Vec", "PNAMetaOptimizer", "RelationalTransformerMetaOptimizer",
    "SGDMomentum", "State", "TinyOpt2VecNetwork",
    "baseline_settings", "build_baseline",
]
