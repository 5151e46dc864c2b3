"""On/off switches that a ``with`` block sets and then restores: which kernels run, and in which kind of step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace


class Switch:
    """A flag read by ``bool(switch)`` and set within a block by ``with switch(enabled):``, restored after it.

    Args:
        default: its value outside every block.
        available: whether it can be on at all (if not, ``with switch(True)`` leaves it off).
        per_thread: a block sets it for its own thread only; other threads keep their value.
    """

    def __init__(self, default: bool, available: bool = True, per_thread: bool = False) -> None:
        self._available = available
        self._default = default and available
        self._value = threading.local() if per_thread else SimpleNamespace()

    def __bool__(self) -> bool:
        return getattr(self._value, "on", self._default)

    @contextmanager
    def __call__(self, enabled: bool = True) -> Iterator[None]:
        previous, self._value.on = bool(self), enabled and self._available
        try:
            yield
        finally:
            self._value.on = previous
