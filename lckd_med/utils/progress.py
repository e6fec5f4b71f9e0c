"""One progress bar (count, rate, ETA) for long loops over cases, quiet in CI and in logs.

Every long loop of the toolkit (data preparation, evaluation, batch inference, scoring a folder) shows one tqdm bar
on the terminal, and prediction one more over each case's sliding windows
(:class:`lckd_med.prediction.SubsetPredictor`); training logs its own line with an ETA (:class:`lckd_med.engines.progress.ProgressHandler`). A bar
is pointless, and clutters the log, when nobody watches: it is off when standard error is not a terminal, when the
``CI`` environment variable is set (GitHub Actions, GitLab CI and most others set it), or when
``LCKD_MED_PROGRESS=0``. ``LCKD_MED_PROGRESS=1`` forces it on.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["PROGRESS_ENV", "progress_enabled", "progress_bar", "ProgressLogHandler"]

#: Environment variable forcing bars on (``1``) or off (``0``).
PROGRESS_ENV = "LCKD_MED_PROGRESS"
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")


def progress_enabled(requested: bool = True, stream: TextIO | None = None) -> bool:
    """Whether to draw a progress bar.

    Args:
        requested: the caller's own switch (e.g. a ``progress`` argument); False always wins.
        stream: where the bar goes (default ``sys.stderr``).

    Returns:
        ``requested`` and not switched off by :data:`PROGRESS_ENV`, and (unless forced on by it) ``CI`` unset and
        ``stream`` a terminal.
    """
    if not requested:
        return False
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in _OFF:
        return False
    if forced in _ON:
        return True
    if os.environ.get("CI", "").strip().lower() not in ("", *_OFF):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    desc: str,
    total: int | None = None,
    unit: str = "case",
    enabled: bool = True,
    leave: bool = True,
) -> tqdm:
    """A tqdm bar (count, rate, elapsed and ETA) drawn only when :func:`progress_enabled` says so.

    Args:
        iterable: what to iterate over (None for a manual ``update()`` bar, then give ``total``).
        desc: short label, e.g. ``"inference"``.
        total: number of items (taken from ``len(iterable)`` when it has one).
        unit: item name.
        enabled: the caller's switch, see :func:`progress_enabled`.
        leave: keep the finished bar on the screen (False for a bar inside another one, e.g. windows of a case).
    """
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        unit=unit,
        disable=not progress_enabled(enabled),
        dynamic_ncols=True,
        leave=leave,
    )


class ProgressLogHandler(logging.Handler):
    """A logging handler that prints each message (``%(message)s``) on standard output through ``tqdm.write``, so
    lines and progress bars on one terminal do not overwrite each other. The stream is looked up at each message
    (whatever ``sys.stdout`` is then)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # a closed stream must not break the command
            self.handleError(record)
