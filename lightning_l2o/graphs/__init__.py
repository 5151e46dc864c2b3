"""Neural graphs of optimizees (torch_geometric ``Data``) and their index maps into the flat parameter vector."""

from lightning_l2o.graphs.neural_graph import DEFAULT_KERNEL_SIZE, SUPPORTED, NeuralGraph

__all__ = ["DEFAULT_KERNEL_SIZE", "SUPPORTED", "NeuralGraph"]
