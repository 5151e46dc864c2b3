"""Compiled CPU kernels: built from C sources in the package on first use, cached per machine, switchable.

A kernel's source is compiled with the system's C compiler (``$CC``, default ``cc``; about a second) for this
machine (``-march=native``) into ``$L2O_CACHE_DIR`` (default ``~/.cache/lightning_l2o``), once per source,
compiler and CPU, and loaded with ``ctypes``. Where it cannot be built, :func:`load` warns once, saying why, and
returns ``None``: its callers then run their PyTorch (eager) path. ``L2O_FUSED_KERNELS=0`` or
:data:`fused_kernels` (``False``) turns every compiled kernel off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import tempfile
import warnings
from pathlib import Path

from lightning_l2o.switch import Switch

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp-simd", "-shared", "-fPIC")
fused_kernels = Switch(os.environ.get("L2O_FUSED_KERNELS", "1") != "0")
"""Whether compiled kernels may be used: ``L2O_FUSED_KERNELS`` (``0``: never); ``with fused_kernels(False):``
turns them off within a block, for comparisons with the eager paths."""


def enabled() -> bool:
    """Whether compiled kernels may be used (:data:`fused_kernels`)."""
    return bool(fused_kernels)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$L2O_CACHE_DIR``, else ``~/.cache/lightning_l2o``."""
    return Path(os.environ.get("L2O_CACHE_DIR") or Path.home() / ".cache" / "lightning_l2o")


def _cpu_flags() -> str:
    try:
        return next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def build(source: Path, compiler: str | None = None) -> Path:
    """Compile ``source`` for this machine (once; later calls find it in :func:`cache_dir`) and return the
    library's path. Raises ``RuntimeError`` naming the compiler's complaint where it cannot be built."""
    compiler = compiler or os.environ.get("CC", "cc")
    libraries = ["-lmvec", "-lm"] if platform.system() == "Linux" and platform.machine() == "x86_64" else ["-lm"]
    command = [compiler, *FLAGS, str(source), *libraries]
    key = hashlib.sha256("\0".join([source.read_text(), *command, _cpu_flags()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{source.stem}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        try:
            result = subprocess.run([*command, "-o", str(built)], capture_output=True, text=True, timeout=120,
                                    check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise RuntimeError(f"cannot run the C compiler '{compiler}': {error}") from None
        if result.returncode != 0:
            raise RuntimeError(f"'{compiler}' failed to compile {source.name}: {result.stderr.strip()[-2000:]}")
        os.replace(built, target)  # atomic: processes building at once (DDP ranks) each leave a whole file
    return target


@functools.cache
def load(source: Path, serves: str) -> ctypes.CDLL | None:
    """The library compiled from ``source`` (built on first call), or ``None`` with one warning saying why it is
    unavailable and that ``serves`` (what the kernel computes, e.g. "the FF step") then runs in eager mode."""
    try:
        return ctypes.CDLL(str(build(source)))
    except (RuntimeError, OSError) as error:
        warnings.warn(f"the compiled CPU kernel for {serves} is unavailable ({error}); it runs in PyTorch's eager mode, "
                      f"slower. Install a C compiler (set $CC to it) to enable it, or set L2O_FUSED_KERNELS=0 to "
                      f"silence this", stacklevel=3)
        return None
