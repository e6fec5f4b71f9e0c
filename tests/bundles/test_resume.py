"""Exact resume through the real CLI: ``python -m monai.bundle run training`` (train.json + demo.json overlay), killed
(SIGKILL) or interrupted (Ctrl-C = SIGINT) after a checkpoint and run again, ends with the same ``model.pt`` weights,
bit for bit, as one uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.workflow import bundle_dir

pytestmark = pytest.mark.slow

BUNDLE = Path(bundle_dir("lckd"))
CONFIGS = f"['{BUNDLE / 'train.json'}','{BUNDLE / 'demo.json'}']"
ITERATIONS = 24
TINY = [
    "--filters", "[4,8,16]", "--roi_size", "[16,16,16]", "--num_iterations", str(ITERATIONS), "--epoch_length", "4",
    "--phase1_iterations", "12", "--election_interval", "8", "--val_max_cases", "1", "--num_workers", "0",
    "--save_every_epochs", "1", "--log_every", "4", "--amp", "False",
]  # fmt: skip


def _cmd(work: Path, name: str) -> list[str]:
    paths = ["--dataset_dir", str(work / "data"), "--output_dir", str(work / name / "out")]
    paths += ["--ckpt_dir", str(work / name / "models")]
    return [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIGS, *paths, *TINY]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(work: Path, name: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(work, name), cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _run_and_signal(work: Path, name: str, sig: int, after_iteration: int) -> tuple[int, str]:
    """Start a training, send ``sig`` once a checkpoint at ``after_iteration`` or later is logged; (exit, output)."""
    proc = subprocess.Popen(
        _cmd(work, name), cwd=work, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines, sent = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if not sent and " saved " in line and "(iteration " in line:
            iteration = int(line.split("(iteration ")[1].split(",")[0])
            if iteration >= after_iteration:
                proc.send_signal(sig)
                sent = True
    code = proc.wait(timeout=300)
    assert sent, "the run ended before the signal could be sent:\n" + "".join(lines[-40:])
    return code, "".join(lines)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_dataset(root / "data", 6, seed=21, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


@pytest.fixture(scope="module")
def uninterrupted(work) -> dict:
    _run(work, "whole")
    return load_checkpoint(work / "whole" / "models" / "model.pt")


def _assert_same_training(resumed: dict, whole: dict) -> None:
    assert resumed["iteration"] == whole["iteration"] == ITERATIONS
    assert resumed["model"].keys() == whole["model"].keys()
    differing = [k for k in whole["model"] if not torch.equal(resumed["model"][k], whole["model"][k])]
    assert differing == [], f"{len(differing)} weight tensors differ, e.g. {differing[:3]}"
    assert resumed["method_state"] == whole["method_state"]  # teachers and election record


def test_killed_and_resumed_training_equals_an_uninterrupted_one(work, uninterrupted):
    code, out = _run_and_signal(work, "killed", signal.SIGKILL, after_iteration=8)
    assert code == -signal.SIGKILL, out[-3000:]
    saved = load_checkpoint(work / "killed" / "models" / "model.pt")
    assert 8 <= saved["iteration"] < ITERATIONS  # killed after a checkpoint, before the end
    resumed = _run(work, "killed")
    assert f"resumed from {work / 'killed' / 'models' / 'model.pt'}" in resumed.stdout + resumed.stderr
    _assert_same_training(load_checkpoint(work / "killed" / "models" / "model.pt"), uninterrupted)


def test_ctrl_c_saves_a_checkpoint_with_one_line_and_resumes_exactly(work, uninterrupted):
    code, out = _run_and_signal(work, "ctrl_c", signal.SIGINT, after_iteration=4)
    assert code == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "interrupted at iteration" in errors[0] and "resume" in errors[0], out[-3000:]
    saved = load_checkpoint(work / "ctrl_c" / "models" / "model.pt")
    assert f"interrupted at iteration {saved['iteration']}:" in errors[0]  # the checkpoint holds that iteration
    assert 4 <= saved["iteration"] < ITERATIONS
    _run(work, "ctrl_c")
    _assert_same_training(load_checkpoint(work / "ctrl_c" / "models" / "model.pt"), uninterrupted)
