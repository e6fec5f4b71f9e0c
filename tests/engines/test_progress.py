"""ProgressHandler: one readable line every N iterations with phase, teachers, loss terms, speed and ETA."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from ignite.engine import Engine, Events

from lckd_med.engines.progress import ProgressHandler, _fmt_seconds

LOGGER = "lckd_med.test_progress"


def _engine() -> Engine:
    def step(engine, batch):
        return {"loss": torch.tensor(0.5), "seg_loss": torch.tensor(0.25), "kd_loss": torch.tensor(2.5), "x": 1}

    engine = Engine(step)

    @engine.on(Events.ITERATION_COMPLETED)
    def _state(e):
        e.state.phase = 1 if e.state.iteration <= 4 else 2
        e.state.teachers = "t1ce" if e.state.iteration <= 4 else ""
        e.state.status_keys = ("teachers",)  # the method's state shown on the line (LCKD: its teachers)

    return engine


def test_logs_every_n_iterations(caplog):
    engine = _engine()
    ProgressHandler(every=3, logger_name=LOGGER).attach(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(range(4), max_epochs=2)
    lines = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(lines) == 2  # iterations 3 and 6 of 8
    pattern = r"iter (\d+)/8 \((\d+)%\) \| phase (\d) \| teachers (\S+) \| (.*) \| [\d.]+ s/it \| ETA \d+m\d\ds"
    first, second = (re.fullmatch(pattern, line) for line in lines)
    assert first and second, lines
    assert first.groups()[:4] == ("3", "38", "1", "t1ce")
    assert second.groups()[:4] == ("6", "75", "2", "-")  # no teacher shown as '-'
    assert first.group(5) == "loss=0.5000 seg_loss=0.2500 kd_loss=2.5000"  # other output keys are not terms


def test_line_without_method_state(caplog):
    """A method without state (OMD, the baselines) shows no teachers field at all."""
    engine = Engine(lambda e, b: {"loss": torch.tensor(1.0), "mmd_loss": torch.tensor(0.5)})
    ProgressHandler(every=2, logger_name=LOGGER).attach(engine)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        engine.run(range(2), max_epochs=1)
    (line,) = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert re.fullmatch(r"iter 2/2 \(100%\) \| phase \? \| loss=1\.0000 mmd_loss=0\.5000 \| .* s/it \| ETA .*", line), (
        line
    )


@pytest.mark.parametrize(
    "seconds, text", [(0, "0m00s"), (59.9, "0m59s"), (61, "1m01s"), (3600 * 2 + 60 * 5, "2h05m"), (-3, "0m00s")]
)
def test_fmt_seconds(seconds, text):
    assert _fmt_seconds(seconds) == text


@pytest.mark.parametrize("every", [0, -1])
def test_every_must_be_positive(every):
    with pytest.raises(ValueError, match="every"):
        ProgressHandler(every=every)
