"""One line for an error a user can fix, and for Ctrl-C, in every command-line tool (``lckd-med``, ``data_prep``).

A traceback tells a user nothing about the file they gave; :func:`run_guarded` turns the errors that describe input
or environment (a bad file, a full disk, Ctrl-C) into one line on standard error and an exit status.
``LCKD_DEBUG=1`` lets the exception through, traceback and all.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "DEBUG_ENV", "error_line", "run_guarded"]

#: Exit status of a command whose work failed, and after Ctrl-C (128 + SIGINT, as shells report it).
EXIT_FAILED, EXIT_INTERRUPTED = 1, 130
#: Environment variable that shows tracebacks instead of one line.
DEBUG_ENV = "LCKD_DEBUG"


def error_line(e: BaseException) -> str:
    """One line for an error: an ``OSError`` names its file and reason (``[Errno 30] Read-only file system: 'x'``
    -> ``x: Read-only file system``), others give their message."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror and type(e) in (OSError, PermissionError):
        return f"{e.filename}: {e.strerror}"
    text = " ".join(str(e).split())
    return text or type(e).__name__


def run_guarded(
    work: Callable[[], int],
    prefix: str = "error",
    interrupted: str = "interrupted (Ctrl-C)",
    errors: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError),
    failed: int = EXIT_FAILED,
) -> int:
    """``work()``'s exit status; one of ``errors`` becomes ``<prefix>: <error line>`` and status ``failed``, Ctrl-C
    ``<prefix>: <interrupted>`` and status 130 (unless ``LCKD_DEBUG`` is set)."""
    try:
        return work()
    except KeyboardInterrupt:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prefix}: {interrupted}", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except errors as e:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prefix}: {error_line(e)}", file=sys.stderr, flush=True)
        return failed
