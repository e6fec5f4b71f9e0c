"""Smoke tests of the benchmark scripts on tiny sizes (they measure nothing here: speed is not unit-tested)."""

from __future__ import annotations

import json

import pytest
import torch

from lckd_med.benchmarks import sweep, train_step


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_sweep_benchmark_outputs_agree(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--filters", "4", "8", "--shape", "12", "12", "10", "--roi", "8", "8", "8", "--repeats", "1"]
    assert sweep.main([*args, "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["max_abs_diff"] < 1e-4
    assert res["sweep_s"] > 0 and res["separate_s"] > 0


def test_train_step_benchmark(capsys):
    assert train_step.main(["--filters", "4", "8", "--roi", "8", "8", "8", "--steps", "1", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fp32"]["step_s"] > 0
    assert res["bf16"].startswith("skipped")
