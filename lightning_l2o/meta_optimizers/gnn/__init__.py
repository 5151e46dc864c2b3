"""GNN meta-optimizers on neural graphs (Kofinas et al. 2024)."""

from lightning_l2o.meta_optimizers.gnn.layers import EdgeUpdate, FiLMPNAConv, LayerPositionEmbedding
from lightning_l2o.meta_optimizers.gnn.pna import PNAMetaOptimizer, PNANetwork, degree_histogram

__all__ = ["EdgeUpdate", "FiLMPNAConv", "LayerPositionEmbedding", "PNAMetaOptimizer", "PNANetwork", "degree_histogram"]
