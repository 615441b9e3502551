"""Errors the CLI maps to exit codes: bad usage, config or input data exit with 2."""


class UsageError(Exception):
    """Bad usage, configuration or input: the CLI prints the message and exits with 2."""


class ConfigError(UsageError):
    """A grid or cell configuration is invalid."""


class DataError(UsageError):
    """A data set cannot be read: names the file or folder at fault."""
