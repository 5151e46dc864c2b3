"""The error type for bad user input, and how command lines report it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class ConfigError(ValueError):
    """A bad configuration value or missing input, reported to the user as one line naming the fix."""


def find_config_error(err: BaseException | None) -> ConfigError | None:
    """The :class:`ConfigError` that caused ``err`` (jsonargparse wraps errors raised while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def config_errors_exit() -> Iterator[None]:
    """Print a :class:`ConfigError` (also one wrapped in another exception) as ``error: ...`` and exit with 2."""
    try:
        yield
    except Exception as err:
        cause = find_config_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
