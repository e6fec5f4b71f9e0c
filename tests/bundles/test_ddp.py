"""multi_gpu_train.json: torchrun + DistributedDataParallel, here on 2 CPU processes with the gloo backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.workflow import bundle_dir

pytestmark = pytest.mark.slow

BUNDLE = Path(bundle_dir("lckd"))
OVERLAY = BUNDLE / "multi_gpu_train.json"
ELECTION = re.compile(r"teacher election at iteration (\d+) on (\d+) case\(s\), .* -> (.*)$")


def _rank_logs(log_dir: Path) -> dict[int, str]:
    """torchrun --log-dir/--redirects: ``<log_dir>/<run>/attempt_0/<rank>/{stdout,stderr}.log``."""
    out: dict[int, str] = {}
    for rank_dir in log_dir.glob("*/attempt_*/*"):
        text = "".join(f.read_text() for f in sorted(rank_dir.glob("*.log")))
        out[int(rank_dir.name)] = out.get(int(rank_dir.name), "") + text
    return out


def _elections(log: str) -> list[tuple[int, int, str]]:
    found = []
    for line in log.splitlines():
        m = ELECTION.search(line)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), m.group(3)))
    return found


def test_two_process_training_elects_the_same_teachers(tmp_path):
    write_dataset(tmp_path / "data", 6, seed=4, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    configs = f"['{BUNDLE / 'train.json'}','{OVERLAY}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc-per-node=2",
        "--log-dir", str(tmp_path / "logs"), "--redirects", "3",
        "-m", "monai.bundle", "run", "training", "--config_file", configs,
        "--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out"),
        "--ckpt_dir", str(tmp_path / "models"),
        # 3 folds of 2 cases: each rank validates one case (the sampler refuses more ranks than cases)
        "--folds", "3",
        "--filters", "[4,8,16]", "--roi_size", "[16,16,16]", "--num_iterations", "8", "--epoch_length", "4",
        "--phase1_iterations", "4", "--election_interval", "4", "--num_workers", "0", "--cache_rate", "1.0",
        "--log_every", "4", "--amp", "False",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    logs = _rank_logs(tmp_path / "logs")
    assert proc.returncode == 0, f"{proc.stderr[-3000:]}\n" + "\n".join(v[-3000:] for v in logs.values())
    assert sorted(logs) == [0, 1]

    elections = {rank: _elections(text) for rank, text in logs.items()}
    assert [e[0] for e in elections[0]] == [1, 5, 8]  # after iteration 1, then every 4, and at the end
    assert elections[0] == elections[1]  # same teachers, same Dice table on every rank
    assert all(n == 2 for _, n, _ in elections[0])  # each rank scored its shard; sums were all-reduced

    # rank 0 alone saves and logs progress; the others only train
    assert "saved " in logs[0] and "saved " not in logs[1]
    assert "iter 8/8" in logs[0] and "iter 8/8" not in logs[1]
    ckpt = load_checkpoint(tmp_path / "models" / "model.pt")
    assert ckpt["iteration"] == 8 and not any(k.startswith("module.") for k in ckpt["model"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".lckd_med_outputs.json",  # the ownership record lists teacher_election.csv
        "datalist.json",
        "teacher_election.csv",
        "tensorboard",
    ]
    teachers = elections[0][-1][2].split("teachers ")[-1]
    assert "+".join(ckpt["method_state"]["teachers"]) == teachers
