"""What every GNN meta-optimizer on neural graphs shares: the graph's input embeddings and the per-parameter
read-out of its edge and node embeddings."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from torch import Tensor, nn
from torch_geometric.nn.dense.linear import Linear

from lightning_l2o.errors import ConfigError
from lightning_l2o.graphs import DEFAULT_KERNEL_SIZE, NeuralGraph
from lightning_l2o.meta_optimizers.base import State, check_positive
from lightning_l2o.meta_optimizers.features import ALL, ChunkFeatures
from lightning_l2o.meta_optimizers.ff import PerParameterMLP
from lightning_l2o.meta_optimizers.gnn.layers import GaussianFourierFeatures, LayerPositionEmbedding
from lightning_l2o.meta_optimizers.linear import linear
from lightning_l2o.meta_optimizers.per_parameter import PerParameterOptimizer
from lightning_l2o.params import ParamSpace

INPUT_ENCODINGS = ("linear", "fourier")
"""How a GNN embeds its edges' and nodes' features: ``linear``, or ``fourier``, through
:class:`~lightning_l2o.meta_optimizers.gnn.layers.GaussianFourierFeatures` first."""

MEMORY_KEYS = ("gnn_h", "gnn_c")
"""A recurrent GNN's per-node memory in the rule's state, each ``(memory_layers, N, hidden_dim)``."""


def check_input_encoding(owner: str, input_encoding: str) -> None:
    """Raise a :class:`ConfigError` naming ``owner`` unless ``input_encoding`` is one of :data:`INPUT_ENCODINGS`."""
    if input_encoding not in INPUT_ENCODINGS:
        raise ConfigError(f"{owner}: input_encoding must be one of {list(INPUT_ENCODINGS)}, got {input_encoding!r}; "
                          f"e.g. input_encoding: fourier")


def readout(channels: int) -> nn.Sequential:
    """The two-layer MLP that turns a GNN's final edge or node embeddings into the read-out's inputs."""
    return nn.Sequential(Linear(channels, channels), nn.ReLU(), Linear(channels, channels))


class GraphNetwork(nn.Module):
    """Base of the GNNs over a neural graph: the input embeddings of its edges and nodes.

    Each edge's padded kernel features ``(K*K*F)`` go to :attr:`edge_directions` embeddings in one product
    (``edge_in``): a forward-edge and a reverse-edge embedding (for PNA the projection of ``[E, E^T, E + E^T]``, which
    for a forward edge is ``[e, 0, e]`` and for its reverse ``[0, e, e]``), or only the forward one; bias features
    ``(F)`` go to node embeddings (``node_in``), plus the layer position embeddings. With ``input_encoding:
    fourier`` both inputs go through :class:`~lightning_l2o.meta_optimizers.gnn.layers.GaussianFourierFeatures`
    (``C`` frequencies of standard deviation ``fourier_scale``) before their linear maps. A subclass adds its layers and
    read-outs and implements ``forward(features, graph, memory=None)`` with :meth:`embed_inputs`; a recurrent one
    sets :attr:`memory_layers` and carries a per-node memory from step to step: ``memory`` in, the new memory out
    (``None`` for a network without one).

    Shapes:
        - :meth:`embed_inputs`: per-parameter features ``(n, F)``, a graph with ``E`` forward edges and ``N`` nodes
          -> edge embeddings ``(E, D C)`` (``D`` = :attr:`edge_directions`: forward, then reverse, along the last
          dimension), node embeddings ``(N, C)``
        - ``forward``: the same inputs and ``memory``, ``h, c (memory_layers, N, C)`` or ``None`` -> forward-edge
          embeddings ``(E, C)``, node embeddings ``(N, C)``, the new memory or ``None``
    """

    memory_layers: int = 0
    """Layers of per-node memory ``h, c`` a recurrent network carries over steps (0: none)."""

    edge_directions: int = 2
    """Input embeddings per edge: 2, forward and reverse (a GNN whose messages run both ways), or 1, forward."""

    def __init__(self, in_features: int, channels: int, kernel_size: int, max_inputs: int, max_hidden_layers: int,
                 max_outputs: int, input_encoding: str = "linear", fourier_scale: float = 3.0) -> None:
        super().__init__()
        check_input_encoding(type(self).__name__, input_encoding)
        check_positive(type(self).__name__, fourier_scale=fourier_scale)
        self.kernel_size = kernel_size
        edge_features = kernel_size**2 * in_features
        if input_encoding == "fourier":
            self.edge_fourier = GaussianFourierFeatures(edge_features, channels, fourier_scale)
            self.node_fourier = GaussianFourierFeatures(in_features, channels, fourier_scale)
            edge_features = in_features = 2 * channels
        else:
            self.edge_fourier = self.node_fourier = None
        self.edge_in = Linear(edge_features, self.edge_directions * channels)
        self.node_in = Linear(in_features, channels)
        self.positions = LayerPositionEmbedding(channels, max_inputs, max_hidden_layers, max_outputs)

    def reset_parameters(self) -> None:
        for module in (self.edge_in, self.node_in, self.positions, self.edge_fourier, self.node_fourier):
            if module is not None:
                module.reset_parameters()

    def embed_inputs(self, features: Tensor, graph: NeuralGraph) -> tuple[Tensor, Tensor]:
        if graph.kernel_size != self.kernel_size:
            raise ConfigError(f"the neural graph pads kernels to {graph.kernel_size}x{graph.kernel_size} but this GNN "
                              f"reads {self.kernel_size}x{self.kernel_size}; build the graph with "
                              f"kernel_size={self.kernel_size}")
        edge_features, node_features = graph.to_graph(features)
        if self.edge_fourier is not None:
            edge_features, node_features = self.edge_fourier(edge_features), self.node_fourier(node_features)
        edge_in = linear(edge_features, self.edge_in.weight, self.edge_in.bias)
        return edge_in, self.node_in(node_features) + self.positions(graph)


def reset_sequential(layers: nn.Sequential) -> None:
    """Reset every layer of ``layers`` that has parameters (``nn.Sequential`` itself has no ``reset_parameters``)."""
    for layer in layers:
        if hasattr(layer, "reset_parameters"):
            layer.reset_parameters()


class GraphMetaOptimizer(PerParameterOptimizer):
    """Base of the GNN rules: a :class:`GraphNetwork` (``self.network``) on the optimizee's neural graph; each
    parameter's update from its edge's (weights) or node's (biases) embedding.

    The embedding is concatenated with the parameter's own features and a per-parameter MLP (``self.head``,
    ``head_layers`` hidden layers of ``hidden_dim``) gives ``(a, b)`` and the further outputs of
    :class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer`. The GNN runs on the whole graph,
    the read-out in chunks. A subclass passes its constructor arguments here and implements :meth:`build_network`.
    A recurrent network's per-node memory lives in the state (:data:`MEMORY_KEYS`), started at zeros.

    Args:
        head_layers: hidden layers of the per-parameter read-out MLP (default: ``num_layers``).
        kernel_size: edges carry kernels padded to ``kernel_size x kernel_size``.
        max_inputs, max_hidden_layers, max_outputs: size of the position-embedding table.
        input_encoding: ``linear`` (the features' linear embedding) or ``fourier`` (Gaussian Fourier features of
            them first, as the reference's NFN and relational transformer; ``B`` is drawn at construction).
        fourier_scale: standard deviation of the Fourier features' frequencies (with ``input_encoding: fourier``).
        options: the arguments of :class:`~lightning_l2o.meta_optimizers.per_parameter.PerParameterOptimizer`
            (``features``, ``lr``, ...; ``adam_lr``, ``output_scale`` and the schedule act on the
            read-out's output layer; with ``network_dtype: bfloat16`` the read-out runs in bf16) and the subclass's
            own, recorded for checkpoints.
    """

    def __init__(self, head_layers: int | None = None, kernel_size: int = DEFAULT_KERNEL_SIZE, max_inputs: int = 1024,
                 max_hidden_layers: int = 32, max_outputs: int = 1024, input_encoding: str = "linear",
                 fourier_scale: float = 3.0, **options: Any) -> None:
        head_layers = options["num_layers"] if head_layers is None else head_layers
        check_positive(type(self).__name__, head_layers=head_layers, kernel_size=kernel_size, max_inputs=max_inputs,
                       max_hidden_layers=max_hidden_layers, max_outputs=max_outputs, fourier_scale=fourier_scale)
        check_input_encoding(type(self).__name__, input_encoding)
        super().__init__(**options, head_layers=head_layers, kernel_size=kernel_size, max_inputs=max_inputs,
                         max_hidden_layers=max_hidden_layers, max_outputs=max_outputs, input_encoding=input_encoding,
                         fourier_scale=fourier_scale)
        num_features, hidden_dim = self.features.num_features, options["hidden_dim"]
        self.network = self.build_network(num_features)
        self.head = PerParameterMLP(hidden_dim + num_features, hidden_dim, head_layers, self.num_outputs)
        self.reset_parameters()

    @abstractmethod
    def build_network(self, in_features: int) -> GraphNetwork:
        """The GNN, from :attr:`config` and the number of per-parameter features."""

    @property
    def input_embedding_config(self) -> dict[str, Any]:
        """The keyword arguments of every :class:`GraphNetwork` that configure its input embeddings."""
        keys = ("kernel_size", "max_inputs", "max_hidden_layers", "max_outputs", "input_encoding", "fourier_scale")
        return {key: self.config[key] for key in keys}

    def reset_parameters(self) -> None:
        """The GNN's own init, and PyTorch's default for the read-out but He init for its hidden layers: with the
        default, 8 ReLU layers shrink the input's signal ~10^4-fold and every parameter gets nearly the same
        update. The read-out's output layer is then scaled as ``output_scale`` / ``adam_lr`` ask."""
        self.network.reset_parameters()
        self.head.reset_parameters()
        for layer in self.head.net[:-1]:
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        self.init_output_layer()

    @property
    def output_layer(self) -> nn.Linear:
        return self.head.output_layer

    def check_space(self, space: ParamSpace) -> None:
        """The optimizee must have a neural graph (:meth:`~lightning_l2o.params.ParamSpace.require_graph`)."""
        space.require_graph(type(self).__name__)

    def init_network_state(self, params: Tensor, space: ParamSpace) -> State:
        """Zeros for a recurrent network's per-node memory; nothing for the others."""
        if not self.network.memory_layers:
            return {}
        graph = space.require_graph(type(self).__name__)
        zeros = params.new_zeros(self.network.memory_layers, graph.num_nodes, self.config["hidden_dim"])
        return {MEMORY_KEYS[0]: zeros, MEMORY_KEYS[1]: zeros.clone()}

    def network_context(self, features: ChunkFeatures, space: ParamSpace, state: State,
                        ) -> tuple[tuple[Tensor, Tensor], State]:
        """The GNN on the whole graph: each owner's (edge's or bias node's) embedding through the read-out's first
        layer, ``(R, hidden)``, and the owner of each coordinate, ``(n,)``; and a recurrent GNN's new memory."""
        graph = space.require_graph(type(self).__name__)
        memory = tuple(state[key] for key in MEMORY_KEYS) if self.network.memory_layers else None
        edge_embeddings, node_embeddings, memory = self.network(features(ALL), graph, memory)
        context = self.head.project_shared(graph.owner_table(edge_embeddings, node_embeddings)), graph.param_owner
        return context, {} if memory is None else dict(zip(MEMORY_KEYS, memory, strict=True))

    def network_chunk(self, features: Tensor, state: State, rows: slice, context: Any) -> tuple[Tensor, State]:
        projected, owner = context
        return self.head.forward_projected(projected[owner[rows]], features), {}
