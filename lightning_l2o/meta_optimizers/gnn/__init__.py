"""GNN meta-optimizers on neural graphs (Kofinas et al. 2024)."""

from lightning_l2o.meta_optimizers.gnn.base import GraphMetaOptimizer, GraphNetwork
from lightning_l2o.meta_optimizers.gnn.layers import (
    EdgeUpdate,
    FiLMPNAConv,
    GaussianFourierFeatures,
    LayerPositionEmbedding,
)
from lightning_l2o.meta_optimizers.gnn.nfn import NFNMetaOptimizer, NFNNetwork, NPLinear
from lightning_l2o.meta_optimizers.gnn.pna import PNAMetaOptimizer, PNANetwork, degree_histogram
from lightning_l2o.meta_optimizers.gnn.relational_transformer import (
    RelationalAttention,
    RelationalTransformerMetaOptimizer,
    RelationalTransformerNetwork,
)

__all__ = ["EdgeUpdate", "FiLMPNAConv", "GaussianFourierFeatures", "GraphMetaOptimizer", "GraphNetwork",
           "LayerPositionEmbedding", "NFNMetaOptimizer", "NFNNetwork", "NPLinear", "PNAMetaOptimizer", "PNANetwork",
           "RelationalAttention", "RelationalTransformerMetaOptimizer", "RelationalTransformerNetwork",
           "degree_histogram"]
