"""Benchmark scripts: FLOP targets of the default network (deterministic, so asserted), tiny smoke runs.

Wall-clock is never asserted here; the smoke runs only check that every code path runs and reports.
"""

from __future__ import annotations

import json

import pytest
import torch

from lckd_med.benchmarks import flops, suite, sweep, train_step
from lckd_med.methods import METHODS
from lckd_med.networks import build_preset
from tests.testkit import TINY_NETWORKS, tiny_method_network

#: Smallest crop of the 5-level lean network's size divisor (32, 32, 16): per-voxel counts are exact at any crop.
CROP = (32, 32, 16)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lean_flops():
    torch.manual_seed(0)
    return flops.flops_per_voxel(build_preset(), "lckd", CROP)


@pytest.mark.parametrize(
    ("figure", "limit"),
    [("train", 1.0), ("train_phase2", 1.0), ("infer", 0.4), ("sweep15", 2.0)],
)
def test_default_network_meets_flop_targets(lean_flops, figure, limit):
    """Issue 9 targets, MFLOP per input voxel: training step <= 1.0, one subset <= 0.4, 15 subsets <= 2.0."""
    assert 0 < lean_flops[figure] <= limit


def test_sweep_is_cheaper_than_15_passes(lean_flops):
    assert lean_flops["sweep15"] < 0.5 * lean_flops["passes15"]


def test_fullres_preset_reproduces_the_measured_previous_default():
    """The counting matches the figures in REFERENCE.md section 7 (2.58 / 0.86 / 5.5 MFLOP per voxel)."""
    res = flops.flops_per_voxel(build_preset("fullres", fill_levels="all"), "lckd", (16, 16, 16), phase2=False)
    assert res["train"] == pytest.approx(2.58, abs=0.01)
    assert res["infer"] == pytest.approx(0.86, abs=0.01)
    assert res["sweep15"] == pytest.approx(5.54, abs=0.01)


def test_counts_do_not_depend_on_the_crop():
    net = build_preset("lean", filters=[4, 8, 16])
    a = flops.flops_per_voxel(net, "lckd", (8, 8, 4), phase2=False)
    b = flops.flops_per_voxel(net, "lckd", (16, 8, 8), phase2=False)
    assert a == b


def test_saved_activation_bytes_counts_the_graph():
    lin = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    assert flops.saved_activation_bytes(lambda: lin(x).relu().sum()) >= 2 * 64 * 256 * 4


def test_suite_smoke(tmp_path, capsys):
    out, md = tmp_path / "suite.json", tmp_path / "suite.md"
    models = ["LCKD lean_small", "OMD lean_small", suite.BASELINE]
    tiny = ["--roi", "16", "16", "16", "--steps", "1", "--repeats", "1", "--case_shape", "20", "16", "16"]
    assert suite.main([*tiny, "--device", "cpu", "--models", *models, "--json", str(out), "--md", str(md)]) == 0
    res = json.loads(out.read_text())
    assert list(res["models"]) == models
    lean = res["models"]["LCKD lean_small"]
    assert lean["mflop_per_voxel"]["sweep15"] < lean["mflop_per_voxel"]["passes15"] and lean["params_m"] > 1
    assert res["models"][suite.BASELINE]["step"]["vs_dynunet"] == 1.0
    assert 0 < lean["window"]["sweep_vs_passes"] and lean["case"]["case_15_subsets_s"] > 0
    assert "case" in res["models"][suite.BASELINE] and "window" not in res["models"][suite.BASELINE]
    table = md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 * (len(models) + 1) and "step / DynUNet" in table


def test_suite_cuda_table_columns():
    """The CUDA columns (Mvox/s, MFU, peak memory) render from a CUDA-shaped result (no GPU in CI)."""
    step = {"step_s": 0.1, "voxels_per_s": 4e7, "mvox_per_s": 40.0, "mfu": 0.05, "peak_gib": 3.2, "vs_dynunet": 1.0}
    row = {
        "params_m": 1.0,
        "saved_activations_gib": 0.1,
        "mflop_per_voxel": {"train": 1.0, "infer": 0.3, "sweep15": 1.5, "passes15": 4.5},
        "step": step,
        "case": {"case_1_subset_s": 0.1, "case_15_subsets_s": 0.9},
    }
    res = {"models": {"x": row}, "roi": [1, 1, 1], "flop_roi": [1, 1, 1], "batch": 2, "bf16_peak_tflops": 790.0}
    res |= {
        "device": "gpu",
        "torch_threads": 1,
        "precision": "bf16 autocast",
        "case_shape": [2, 2, 2],
        "sw_roi": [1] * 3,
    }
    table = suite.markdown_tables(res)
    assert "| x | 0.100 | 1.00 | 40.0 | 5.0 % | 3.20 |" in table


def test_bf16_peak_measurement_runs():
    assert suite.measure_bf16_peak(torch.device("cpu"), n=64, repeats=1) > 0


def test_build_models_rejects_unknown():
    with pytest.raises(ValueError, match="unknown models"):
        suite.build_models(["ResNet-50"])


def test_sweep_benchmark_outputs_agree(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = ["--filters", "4", "8", "--shape", "12", "12", "10", "--roi", "8", "8", "8", "--repeats", "1"]
    assert sweep.main([*args, "--device", "cpu", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["max_abs_diff"] < 1e-4
    assert res["sweep_s"] > 0 and res["separate_s"] > 0


def test_suite_covers_every_registered_method_under_every_preset():
    """Every preset of every method (the U-Net presets; RFNet's and mmFormer's one, ``published``), its default
    marked."""
    kinds = [kind for kind, _ in suite.MODELS.values()]
    assert all(kinds.count(name) == len(cls.presets) for name, cls in METHODS.items())
    for name, cls in METHODS.items():
        assert f"{cls.label} {cls.default_preset} (default)" in suite.MODELS, name
    assert set(kinds) == {*METHODS, train_step.PEER}


#: Crop of the tiny benchmark runs per method: mmFormer's window (rebuilt to the crop) takes multiples of 16, >= 32.
TINY_ROI = {"mmformer": (32, 32, 32)}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_step_is_counted(method):
    """FLOPs of each method's own training step (its compute_loss) at tiny widths: both phases, inference, sweep."""
    if method in TINY_NETWORKS:  # their own tiny networks (tests/testkit.py)
        net = tiny_method_network(method, **({} if method == "mmformer" else {"filters": [4, 8]}))
    else:
        net = METHODS[method].build_network("lean", filters=[4, 8])
    res = flops.flops_per_voxel(net, method, TINY_ROI.get(method, (8, 8, 4)))
    assert res["train"] > res["infer"] > 0 and res["sweep15"] <= res["passes15"]
    assert ("train_phase2" in res) is METHODS[method].drops_modalities


@pytest.mark.parametrize("method", list(METHODS))
def test_train_step_benchmark(capsys, method):
    roi = [str(r) for r in TINY_ROI.get(method, (8, 8, 8))]
    argv = ["--filters", "4", "8", "--roi", *roi, "--steps", "1", "--device", "cpu", "--method", method]
    assert train_step.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["fp32"]["step_s"] > 0
    assert res["bf16"].startswith("skipped")


def test_training_loss_rejects_unknown_kind():
    net = build_preset("lean", filters=[2, 2])
    x, y = train_step.make_batch(1, (4, 4, 2), "cpu")
    with pytest.raises(ValueError, match="kind"):
        train_step.training_loss(net, "unet", x, y)


def test_sweep_benchmark_one_subset_sweep_only(tmp_path):
    out = tmp_path / "r.json"
    args = ["--filters", "4", "8", "--shape", "12", "12", "10", "--roi", "8", "8", "8", "--repeats", "1"]
    argv = [*args, "--warmup", "0", "--subsets", "flair+t1+t1ce+t2", "--sweep_only", "--device", "cpu"]
    assert sweep.main([*argv, "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["subsets"] == ["flair+t1+t1ce+t2"] and res["sweep_s"] > 0 and "separate_s" not in res
