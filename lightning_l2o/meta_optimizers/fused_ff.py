"""The FF rule's deployed step as a compiled CPU kernel.

In PyTorch's eager mode the deployed FF step makes several passes over every chunk of coordinates: the momenta,
seven logarithms and clamps, the interleaving of the 14 features, the first and last layers (the last a product
with only 2 outputs, a poor shape for any BLAS) and the update. :func:`fused_ff_step` does the momenta, the
features and the first layer in one C kernel and the output layer and the update in another
(``fused_ff.c``); the hidden ``64 -> 64`` layers between them stay with oneDNN
(:func:`~lightning_l2o.meta_optimizers.linear.linear`). The results are the eager path's to float rounding (the
momenta bit for bit; tests).

The kernel is compiled on first use (:mod:`lightning_l2o.compiled_kernels`: with ``$CC`` for this machine, cached
in ``$L2O_CACHE_DIR``). Where it cannot be built, a warning says why and the step runs in eager mode.

It serves deployed steps only (``LearnedOptimizer.step``, within
:data:`~lightning_l2o.meta_optimizers.base.deployed_step`): meta-training records a graph, and meta-test keeps the
eager path, because 1000 steps of training amplify a difference in the last bits into a different trajectory (a
final accuracy that differs by about the seed-to-seed noise), and the harness's figures are to reproduce bit for bit. The step also stays eager for other feature sets,
``progress_features``, ``adam_lr``, ``network_dtype: bfloat16``, CUDA, and with more than one intra-op thread (the
kernels run on one thread; set ``torch.set_num_threads(1)``, as the chunked step wants anyway).
``L2O_FUSED_KERNELS=0`` or :data:`~lightning_l2o.compiled_kernels.fused_kernels` (``False``) turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from lightning_l2o import compiled_kernels
from lightning_l2o.meta_optimizers.base import Info, State, in_deployed_step
from lightning_l2o.meta_optimizers.features import KOFINAS_BETAS, LOG_SIGN_P, KofinasFeatures
from lightning_l2o.meta_optimizers.linear import linear

if TYPE_CHECKING:
    from lightning_l2o.meta_optimizers.ff import FFMetaOptimizer

SOURCE = Path(__file__).with_name("fused_ff.c")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on first call), or ``None`` with a warning saying why they are unavailable."""
    lib = compiled_kernels.load(SOURCE, "the FF step")
    if lib is None:
        return None
    pointer, rows, real = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    lib.ff_first_layer.argtypes = [rows, pointer, pointer, pointer, pointer, pointer, pointer, pointer, rows, real,
                                   pointer]
    lib.ff_first_layer.restype = None
    lib.ff_output_update.argtypes = [rows, pointer, rows, pointer, pointer, real, real, pointer, pointer]
    lib.ff_output_update.restype = ctypes.c_double
    return lib


def applies(rule: FFMetaOptimizer, params: Tensor, grads: Tensor, state: State) -> bool:
    """Whether :func:`fused_ff_step` computes this step: a deployed step with no graph to record, the ``kofinas``
    features with nothing added, float32, contiguous tensors on the CPU, one intra-op thread."""
    if not (compiled_kernels.enabled() and in_deployed_step()):
        return False  # meta-training and meta-test: no further checks on their hot path
    momenta = state.get("momenta")
    tensors = (params, grads, momenta)
    records_graph = torch.is_grad_enabled() and (
        any(t.requires_grad for t in tensors) or any(p.requires_grad for p in rule.parameters()))
    return (not records_graph and type(rule.features) is KofinasFeatures and rule.adam is None
            and rule.network_dtype == torch.float32 and len(params) > 0 and torch.get_num_threads() == 1
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)
            and state.keys() == {"momenta"} and momenta.shape == (len(params), len(KOFINAS_BETAS))
            and grads.shape == params.shape and library() is not None)


def fused_ff_step(rule: FFMetaOptimizer, params: Tensor, grads: Tensor, state: State, lr: float | Tensor,
                  ) -> tuple[Tensor, State, Info]:
    """``rule``'s step (as its ``forward``) through the compiled kernels, chunk by chunk; see :func:`applies`.

    Shapes: ``params``, ``grads`` ``(n,)``, ``state["momenta"]`` ``(n, 5)`` -> new params ``(n,)``, new momenta.
    """
    lib = library()
    first, *hidden_layers, output = [layer for layer in rule.network.net if isinstance(layer, torch.nn.Linear)]
    first_weight_t, first_bias = first.weight.detach().t().contiguous(), first.bias.detach().contiguous()
    output_weight, output_bias = output.weight.detach().contiguous(), output.bias.detach().contiguous()
    betas = torch.tensor(KOFINAS_BETAS, dtype=torch.float32)
    momenta, new_momenta, new_params = state["momenta"], torch.empty_like(state["momenta"]), torch.empty_like(params)
    n, width, size = len(params), first.out_features, params.element_size()
    buffer = params.new_empty(min(rule.chunk_size, n), width)
    sum_squares = 0.0
    for start in range(0, n, rule.chunk_size):
        rows = min(rule.chunk_size, n - start)
        hidden = buffer[:rows]
        lib.ff_first_layer(rows, params.data_ptr() + start * size, grads.data_ptr() + start * size,
                           momenta.data_ptr() + start * len(KOFINAS_BETAS) * size,
                           new_momenta.data_ptr() + start * len(KOFINAS_BETAS) * size, betas.data_ptr(),
                           first_weight_t.data_ptr(), first_bias.data_ptr(), width, LOG_SIGN_P, hidden.data_ptr())
        for layer in hidden_layers:
            hidden = linear(hidden, layer.weight, layer.bias, relu=True)
        hidden = hidden.contiguous()
        sum_squares += lib.ff_output_update(rows, hidden.data_ptr(), width, output_weight.data_ptr(),
                                            output_bias.data_ptr(), float(lr), rule.exp_scale,
                                            params.data_ptr() + start * size, new_params.data_ptr() + start * size)
    return new_params, {"momenta": new_momenta}, {"update_rms": torch.tensor(math.sqrt(sum_squares / n))}
