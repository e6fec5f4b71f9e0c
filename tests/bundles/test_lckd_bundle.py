"""The lckd bundle through the real CLI (``python -m monai.bundle run ...``), run from an unrelated directory.

train.json -> evaluate.json -> inference.json on cases with missing sequences, plus the failure paths a user meets
first: no dataset, and one corrupt case among good ones.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from lckd_med.constants import SUBSET_NAMES, file_suffixes
from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.election import ELECTION_COLUMNS
from lckd_med.engines.workflow import bundle_dir
from lckd_med.inference import REPORT_NAME
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME
from lckd_med.reports import REPORT_FILES

pytestmark = pytest.mark.slow

BUNDLE = Path(bundle_dir("lckd"))
TINY = [
    "--filters", "[4,8,16]", "--roi_size", "[16,16,16]", "--num_iterations", "8", "--epoch_length", "4",
    "--phase1_iterations", "4", "--election_interval", "0", "--num_workers", "0", "--cache_rate", "1.0",
    "--log_every", "4", "--amp", "False",
]  # fmt: skip
SUFFIX = file_suffixes(2018)


def _bundle(cwd: Path, run_id: str, config: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLE / config), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # small CPU runs: one thread each avoids oversubscription
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _explain(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lckd_bundle")
    write_dataset(root / "data", 6, seed=21, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    (root / "cwd").mkdir()  # commands run from here: nothing may depend on the working directory
    return root


@pytest.fixture(scope="module")
def trained(work) -> subprocess.CompletedProcess:
    paths = ["--dataset_dir", str(work / "data"), "--output_dir", str(work / "out"), "--ckpt_dir", str(work / "models")]
    return _bundle(work / "cwd", "training", "train.json", *paths, *TINY)


@pytest.fixture(scope="module")
def evaluated(work, trained) -> subprocess.CompletedProcess:
    assert trained.returncode == 0, _explain(trained)
    paths = ["--dataset_dir", str(work / "data"), "--output_dir", str(work / "out"), "--ckpt_dir", str(work / "models")]
    return _bundle(work / "cwd", "evaluate", "evaluate.json", *paths, "--save_predictions", "True", "--amp", "False")


def test_training_writes_model_and_election_record(work, trained):
    assert trained.returncode == 0, _explain(trained)
    ckpt = load_checkpoint(work / "models" / "model.pt")
    assert (ckpt["iteration"], ckpt["phase"]) == (8, 2)
    assert ckpt["network"]["hparams"]["filters"] == [4, 8, 16] and ckpt["train_config"]["roi_size"] == [16, 16, 16]
    assert ckpt["method_state"]["teachers"] and ckpt["label_convention"] == "brats2018"
    assert ckpt["train_config"]["voxel_spacing_mm"] == [4.0, 4.0, 4.0]  # the training data's, for prediction's warning
    election = pd.read_csv(work / "out" / "teacher_election.csv")
    assert list(election.columns) == list(ELECTION_COLUMNS)
    # the reference schedule: after the first iteration (interval 0: no periodic ones, no phase-switch election by
    # default) and at the end of training (8); the checkpoint holds the final one
    assert sorted(election["iteration"].unique()) == [1, 8] and len(election) == 2 * 12
    last = election[(election["iteration"] == 8) & election["elected"]]
    assert sorted(ckpt["method_state"]["teachers"]) == sorted(set(last["modality"]))
    assert len(ckpt["method_state"]["history"]) == len(election)
    assert (work / "out" / "datalist.json").is_file() and any((work / "out" / "tensorboard").iterdir())
    assert not any((work / "cwd").iterdir())  # nothing written to the working directory
    assert "teacher election at iteration 1" in trained.stdout + trained.stderr


def test_evaluate_writes_subset_reports(work, evaluated):
    assert evaluated.returncode == 0, _explain(evaluated)
    for name in REPORT_FILES.values():
        assert (work / "out" / name).is_file(), name
    summary = (work / "out" / REPORT_FILES["summary_md"]).read_text()
    assert "FLAIR+T1+T1ce+T2" in summary
    assert "| Mean |" in evaluated.stdout  # the table is printed at the end of the run
    subset_dice = json.loads((work / "models" / SUBSET_DICE_NAME).read_text())["subset_dice"]
    assert list(subset_dice) == list(SUBSET_NAMES)
    assert len(list((work / "out" / "predictions").rglob("*.nii.gz"))) == 15 * 2  # two held-out cases


def _case_folder(src: Path, dst: Path, keep: tuple[str, ...]) -> Path:
    """Copy a BraTS2018 case folder keeping only some sequences (and no segmentation)."""
    dst.mkdir(parents=True)
    for modality in keep:
        shutil.copy(next(src.glob(f"*_{SUFFIX[modality]}.nii.gz")), dst)
    return dst


def _source_cases(work: Path) -> list[Path]:
    return sorted(p for p in (work / "data").glob("*/*") if p.is_dir())


def _inference(work: Path, input_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    args = ["--input_dir", str(input_dir), "--output_dir", str(output_dir), "--ckpt_dir", str(work / "models")]
    return _bundle(work / "cwd", "inference", "inference.json", *args)


def test_inference_on_cases_with_missing_sequences(work, evaluated):
    assert evaluated.returncode == 0, _explain(evaluated)
    src = _source_cases(work)
    inputs = work / "inputs"
    cases = {
        "caseA": _case_folder(src[0], inputs / "caseA", ("flair", "t1ce")),
        "caseB": _case_folder(src[1], inputs / "caseB", ("t2",)),
    }
    proc = _inference(work, inputs, work / "preds")
    assert proc.returncode == 0, _explain(proc)
    report = pd.read_csv(work / "preds" / REPORT_NAME).set_index("case_id")
    assert dict(report["modalities"]) == {"caseA": "flair+t1ce", "caseB": "t2"}
    assert set(report["status"]) == {"ok"}
    expected = json.loads((work / "models" / SUBSET_DICE_NAME).read_text())["subset_dice"]
    assert report.loc["caseB", "expected_dice_WT"] == pytest.approx(expected["t2"]["WT"], abs=1e-6)
    for case_id, folder in cases.items():
        ref = nib.load(next(folder.glob("*.nii.gz")))
        out = nib.load(work / "preds" / f"{case_id}.nii.gz")
        assert out.shape == ref.shape
        np.testing.assert_allclose(out.affine, ref.affine, atol=1e-5)
        assert set(np.unique(np.asarray(out.dataobj)).tolist()) <= {0, 1, 2, 4}


def test_inference_with_a_corrupt_case_fails_but_writes_the_others(work, evaluated):
    assert evaluated.returncode == 0, _explain(evaluated)
    src = _source_cases(work)
    inputs = work / "inputs_corrupt"
    _case_folder(src[2], inputs / "good", ("t1", "t2"))
    bad = inputs / "broken"
    bad.mkdir(parents=True)
    (bad / f"broken_{SUFFIX['flair']}.nii.gz").write_bytes(b"this is not a NIfTI file")
    proc = _inference(work, inputs, work / "preds_corrupt")
    assert proc.returncode != 0, _explain(proc)
    assert "broken" in proc.stderr
    assert (work / "preds_corrupt" / "good.nii.gz").is_file()
    assert not (work / "preds_corrupt" / "broken.nii.gz").exists()
    report = pd.read_csv(work / "preds_corrupt" / REPORT_NAME).set_index("case_id")
    assert report.loc["good", "status"] == "ok" and report.loc["broken", "status"] == "error"


def test_missing_dataset_names_both_ways_out(work):
    missing = work / "no_such_brats"
    paths = ["--dataset_dir", str(missing), "--output_dir", str(work / "out_missing"), "--ckpt_dir", str(work / "m2")]
    proc = _bundle(work / "cwd", "training", "train.json", *paths, *TINY)
    assert proc.returncode != 0
    assert f"dataset_dir does not exist: {missing}" in proc.stderr
    assert "Two ways out" in proc.stderr
    assert "--dataset_dir" in proc.stderr and "python -m data_prep.synthetic" in proc.stderr
    assert not (work / "m2" / "model.pt").exists()
