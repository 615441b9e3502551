"""Errors the CLI maps to exit codes: bad usage, config or input data exit with 2."""


class UsageError(Exception):
    """Bad usage, configuration or input: the CLI prints the message and exits with 2."""


class ConfigError(UsageError):
    """A grid or cell configuration is invalid."""


class DataError(UsageError):
    """A data set cannot be read: names the file or folder at fault."""


class DiskFullError(UsageError):
    """No space left where a run writes: names the disk and its free space (exit 2; a rerun
    after freeing space resumes)."""


NO_SPACE = frozenset({28, 122})
"""errno ENOSPC and EDQUOT (Linux): no space left, disk quota exceeded."""


def disk_full(error: BaseException | None) -> BaseException | None:
    """The exception in ``error``'s chain that says the disk is full (OSError ENOSPC or EDQUOT,
    SQLite's "database or disk is full"), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_SPACE:
            return error
        if "database or disk is full" in str(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def disk_full_error(folder: str, cause: BaseException | str, done: str) -> DiskFullError:
    """DiskFullError naming ``folder``'s disk, its free space, the file that failed (or the
    error's first line, ``cause`` as text) and ``done`` (what was kept)."""
    import shutil

    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.1f} MiB free"
    except OSError:
        free = "free space unknown"
    if isinstance(cause, str):
        where = f" ({cause.splitlines()[0]})" if cause else ""
    else:
        where = f" (writing {cause.filename})" if getattr(cause, "filename", None) else ""
    return DiskFullError(f"no space left on the disk holding {folder} ({free}){where}: "
                         f"{done}; free some space and run again to resume")


class RunInterrupted(Exception):
    """`bench run` stopped by SIGINT or SIGTERM; every cell committed so far is kept."""

    def __init__(self, signum: int, committed: int) -> None:
        import signal

        self.signum, self.committed = signum, committed
        super().__init__(f"interrupted ({signal.Signals(signum).name}): {committed} cells "
                         "committed, rerun to resume")
