"""Exact resume at every kind of training boundary, through the real bundle (train.json + demo.json overlay, run by
``monai.bundle.run`` in this process, tiny network and volumes).

Schedule of the runs (12 iterations, epochs of 3): elections at 4, 8 and 12; the phase switch after iteration 6, which
is also a periodic save (``save_every_epochs 2``: saves at 6 and 12), as the paper recipe's switch at 80,000 is;
epoch ends at 3, 6, 9, 12. Ctrl-C (SIGINT sent to this process while an iteration runs, or while the election runs)
saves and stops; a kill (an exception no handler catches, as SIGKILL leaves the files) leaves the last periodic save.
Running the same command again must end with the weights, teachers and election record of one uninterrupted run,
bit for bit. The uninterrupted reference run is shared by the module.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import run as bundle_run

from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.workflow import bundle_dir

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BUNDLE = Path(bundle_dir("lckd"))
ITERATIONS = 12
SETTINGS = {
    "filters": [4, 8],
    "roi_size": [16, 16, 16],
    "num_iterations": ITERATIONS,
    "epoch_length": 3,
    "phase1_iterations": 6,
    "election_interval": 4,
    "first_election": None,
    "save_every_epochs": 2,
    "val_max_cases": 1,
    "num_workers": 0,
    "log_every": 100,
    "sw_overlap": 0.0,
    "amp": False,
    "seed": 3,
}


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing is saved on the way out."""


class StopAt:
    """At ``event`` of ``iteration``: send SIGINT to this process (Ctrl-C) or raise :class:`Killed`."""

    def __init__(self, iteration: int, how: str, event: str = "ITERATION_STARTED") -> None:
        self.iteration, self.how, self.event = iteration, how, event

    def __repr__(self) -> str:
        return f"{self.how} at {self.event} of {self.iteration}"

    def attach(self, engine) -> None:
        engine.add_event_handler(getattr(Events, self.event)(once=self.iteration), self)

    def __call__(self, engine) -> None:
        if self.how == "sigint":
            os.kill(os.getpid(), signal.SIGINT)
        else:
            raise Killed


class WeightTrace:
    """Records a hash of the network weights after every iteration."""

    def __init__(self) -> None:
        self.hashes: dict[int, str] = {}

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        flat = torch.cat([p.detach().flatten() for p in engine.network.parameters()])
        self.hashes[engine.state.iteration] = hashlib.sha1(flat.numpy().tobytes()).hexdigest()


def _train(work: Path, name: str, extra: list | None = None) -> int:
    """One ``run training`` of the bundle with ``extra`` handlers; its exit status (0, or the ``SystemExit`` code)."""
    handlers = ["@validate#election", *(extra or [])]
    hook = sys.excepthook
    try:
        bundle_run(
            "training",
            config_file=[str(BUNDLE / "train.json"), str(BUNDLE / "demo.json")],
            logging_file=False,
            dataset_dir=str(work / "data"),
            datalist=str(work / "datalist.json"),
            output_dir=str(work / name / "out"),
            ckpt_dir=str(work / name / "models"),
            method_handlers=handlers,
            **SETTINGS,
        )
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        sys.excepthook = hook  # the bundle's initialize installs the one-line error hook
    return 0


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_boundaries")
    write_dataset(root / "data", 6, seed=21, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


@pytest.fixture(scope="module")
def reference(work) -> tuple[dict, dict[int, str]]:
    """The uninterrupted run: its checkpoint and its weights after every iteration."""
    tracer = WeightTrace()
    assert _train(work, "whole", [tracer]) == 0
    return load_checkpoint(work / "whole" / "models" / "model.pt"), tracer.hashes


#: Where the interruptions land, chained: each run is stopped at the next one and resumed from what it saved.
CHAINS = {
    "sigint": [
        StopAt(3, "sigint"),  # epoch end without a save
        StopAt(4, "sigint", "ITERATION_COMPLETED"),  # while the election of iteration 4 runs
        StopAt(6, "sigint"),  # phase switch, also a periodic save
        StopAt(7, "sigint"),  # first phase-2 iteration
        StopAt(9, "sigint"),  # epoch end in phase 2
    ],
    "kill": [
        StopAt(7, "kill"),  # just after the phase switch's periodic save: resumes from 6
        StopAt(11, "kill"),  # after the election at 8 and the epoch end at 9: resumes from 6 again
        StopAt(12, "kill", "ITERATION_COMPLETED"),  # the last iteration, before the final save
    ],
}


@pytest.mark.parametrize("how", sorted(CHAINS))
def test_interrupted_at_every_boundary_and_resumed_training_equals_the_uninterrupted_one(work, reference, how):
    """Each resumed run must retrace the uninterrupted run's weights iteration by iteration."""
    whole, trace = reference
    name = f"chain_{how}"
    ckpt = work / name / "models" / "model.pt"
    for stop in CHAINS[how]:
        start = load_checkpoint(ckpt)["iteration"] if ckpt.is_file() else 0
        tracer = WeightTrace()
        if how == "sigint":
            assert _train(work, name, [stop, tracer]) == 130
        else:
            with pytest.raises(Killed):
                _train(work, name, [stop, tracer])
        _assert_retraced(tracer.hashes, trace, f"resumed at {start}, stopped at {stop}")
    start = load_checkpoint(ckpt)["iteration"]
    tracer = WeightTrace()
    assert _train(work, name, [tracer]) == 0
    _assert_retraced(tracer.hashes, trace, f"resumed at {start} to the end")
    resumed = load_checkpoint(ckpt)
    assert resumed["iteration"] == whole["iteration"] == ITERATIONS
    differing = [k for k in whole["model"] if not torch.equal(resumed["model"][k], whole["model"][k])]
    assert differing == [], f"{len(differing)} of {len(whole['model'])} weight tensors differ"
    assert resumed["method_state"] == whole["method_state"]  # LCKD's teachers and election record


def _assert_retraced(hashes: dict[int, str], reference: dict[int, str], what: str) -> None:
    assert hashes, f"{what}: no iteration ran"
    differing = [i for i in sorted(hashes) if hashes[i] != reference[i]]
    assert not differing, f"{what}: weights differ from the uninterrupted run's from iteration {differing[0]} on"


def test_ctrl_c_at_the_last_iteration_ends_the_training_normally(work, reference):
    whole, _ = reference
    assert _train(work, "sigint_last", [StopAt(ITERATIONS, "sigint")]) == 0
    done = load_checkpoint(work / "sigint_last" / "models" / "model.pt")
    assert done["iteration"] == ITERATIONS
    assert all(torch.equal(done["model"][k], whole["model"][k]) for k in whole["model"])
