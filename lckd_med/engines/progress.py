"""A progress line a person can follow: iteration, phase, the method's state, loss terms, speed and time left.

MONAI's ``StatsHandler`` logs losses but neither throughput nor an estimate of the time left, which is what
one watches during a multi-hour run; this handler adds that line every ``every`` iterations.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["ProgressHandler", "loss_terms"]


def loss_terms(output: dict[str, Any]) -> dict[str, float]:
    """The scalar loss terms of one iteration's output (``loss`` first, then the method's terms in its order).

    Every 0-dim tensor of the output is a term: that is what a method's ``compute_loss`` returns, so the handlers
    (``StatsHandler``/``TensorBoardStatsHandler`` ``output_transform``, :class:`ProgressHandler`) log whatever
    terms the method has.
    """
    terms = {k: float(v) for k, v in output.items() if isinstance(v, torch.Tensor) and v.dim() == 0}
    return {**({"loss": terms.pop("loss")} if "loss" in terms else {}), **terms}


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


class ProgressHandler:
    """Log ``iter i/N (p%) | phase | <method state> | loss terms | s/it | ETA`` every ``every`` iterations.

    The method state is every ``engine.state`` attribute named in ``engine.state.status_keys`` (LCKD: its
    ``teachers``, ``-`` when none); the loss terms are :func:`loss_terms` of the output.

    Args:
        every: iterations between lines (>= 1).
        logger_name: logger to write to (``logging.conf`` of the bundle routes it to the console).
    """

    def __init__(self, every: int = 10, logger_name: str = "lckd_med.train") -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.logger = logging.getLogger(logger_name)
        self._t0 = 0.0
        self._it0 = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.every), self)

    def _start(self, engine: Engine) -> None:
        self._t0 = time.perf_counter()
        self._it0 = int(engine.state.iteration)

    def __call__(self, engine: Engine) -> None:
        it = int(engine.state.iteration)
        total = int(engine.state.max_epochs or 0) * int(engine.state.epoch_length or 0)
        done = max(it - self._it0, 1)
        per_it = (time.perf_counter() - self._t0) / done
        out = engine.state.output or {}
        terms = " ".join(f"{k}={v:.4f}" for k, v in loss_terms(out).items())
        pct = f" ({100.0 * it / total:.0f}%)" if total else ""
        status = "".join(
            f" | {k} {getattr(engine.state, k, None) or '-'}" for k in getattr(engine.state, "status_keys", ())
        )
        self.logger.info(
            "iter %d/%d%s | phase %s%s | %s | %.3f s/it | ETA %s",
            it,
            total,
            pct,
            getattr(engine.state, "phase", "?"),
            status,
            terms,
            per_it,
            _fmt_seconds(per_it * max(total - it, 0)),
        )
