"""The error type for bad user input, and how command lines report it."""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}
"""jsonargparse parser options of every command line here: errors come back to :func:`config_errors_exit`
(one line instead of the usage text) and options are never abbreviated (``--trainer.max_step`` is refused)."""
_NOISE = ("Does not validate against", "Subtypes:", "Errors:", "Problem with given class_path", "Parser key",
          "Expected a <class 'NoneType'>", "Given value")


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


def parse_error_line(err: ArgumentError, args: Sequence[str]) -> str:
    """One line for a command-line parsing error: the key, what is wrong, and where it was given.

    jsonargparse reports a bad key nested in a class as a multi-line account of every union member tried;
    this keeps the path of keys, the innermost reason and the argument or config file that holds the key.
    """
    text = str(err)
    lines = [line.strip().lstrip("- ").strip() for line in text.splitlines()]
    reasons = [line for line in lines if line and not line.startswith(_NOISE)]
    reason = reasons[0] if reasons else lines[0]
    keys = re.findall(r'Parser key "([^"]+)"', text)
    named = re.search(r"'([^']+)' is not accepted", reason)
    name = named.group(1) if named else (keys[-1] if keys else "")
    where = ""
    if name:
        given = [arg for arg in args if name in arg and not arg.startswith(("--config", "-c"))]
        files = [Path(arg.split("=", 1)[1]) for arg in args if arg.startswith("--config=")]
        holding = [f for f in files if f.is_file() and re.search(rf"\b{re.escape(name)}\s*:", f.read_text())]
        where = f" (given on the command line: {given[-1]})" if given else f" (given in {holding[-1]})" if holding else ""
    prefix = f"{'.'.join(keys)}: " if keys else ""
    return f"{prefix}{reason}{where}; see --help or --print_config for the valid keys"


@contextmanager
def config_errors_exit(args: Sequence[str] | None = None) -> Iterator[None]:
    """Print a :class:`ConfigError` (also one wrapped in another exception) or a command-line parsing error of
    ``args`` (default ``sys.argv[1:]``) as one ``error: ...`` line and exit with 2."""
    try:
        yield
    except ArgumentError as err:
        print(f"error: {parse_error_line(err, sys.argv[1:] if args is None else args)}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        cause = find_config_error(err)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
