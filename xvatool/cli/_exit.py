"""The exit codes of the command line: one table from error class to code, at the CLI boundary.

The library's errors say what went wrong; what a shell script sees is decided here (README,
"Exit codes"). The first row whose class matches wins, so more specific classes come
first; an `XvatoolError` not listed exits 1.
"""

from __future__ import annotations

from xvatool.errors import (
    Interrupted,
    LocalIOError,
    PartialFailure,
    UsageError,
    XvatoolError,
)

__all__ = ["EXIT_CODES", "EXIT_FAILURE", "EXIT_INTERRUPTED", "exit_code_of"]

EXIT_FAILURE = 1
"""An invalid archive or a failed operation (any error not in the table)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C or SIGTERM; resumable state was kept (128 + SIGINT, as shells report it)."""

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (UsageError, 2),
    (LocalIOError, 2),
    (PartialFailure, 3),
    (Interrupted, EXIT_INTERRUPTED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
    (XvatoolError, EXIT_FAILURE),
)
"""(error class, exit code), first match wins: 2 usage or local I/O, 3 partial, 130 interrupted."""


def exit_code_of(exc: BaseException) -> int:
    """The exit code for an error reaching the command line."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILURE
