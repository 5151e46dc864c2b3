"""Errors that the command line reports as one clear message instead of a traceback."""


class ConfigError(ValueError):
    """A bad configuration value, missing input file or incompatible checkpoint; the message names the fix."""
