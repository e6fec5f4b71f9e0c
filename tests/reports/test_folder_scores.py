"""Tests of lckd_med.reports.folder_scores: label discovery, subsets from the inference report, refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd_med.constants import brats_affine
from lckd_med.reports.folder_scores import find_labels, find_predictions, score_folder

SHAPE = (12, 12, 8)


def labels(et: int = 4) -> np.ndarray:
    gt = np.zeros(SHAPE, np.uint8)
    gt[2:9, 2:9, 2:6] = 2
    gt[4:7, 4:7, 3:5] = et
    return gt


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, brats_affine() if affine is None else affine), path)
    return path


def test_labels_from_a_brats_dataset_folder(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2018_Data_Training"
    for grade, cid in (("HGG", "Brats18_A_1"), ("LGG", "Brats18_B_1")):
        for s in ("flair", "seg"):
            save(root / grade / cid / f"{cid}_{s}.nii.gz", labels())
    found, conv = find_labels(root)
    assert sorted(found) == ["Brats18_A_1", "Brats18_B_1"] and conv.et == 4
    assert found["Brats18_A_1"].name == "Brats18_A_1_seg.nii.gz"


@pytest.mark.parametrize("name", ["c1.nii.gz", "c1_seg.nii.gz", "c1-seg.nii", "c1.nii"])
def test_labels_from_a_flat_folder(tmp_path, name):
    save(tmp_path / name, labels())
    found, conv = find_labels(tmp_path)
    assert list(found) == ["c1"] and conv is None


def test_subset_from_inference_report_and_2023_labels(tmp_path):
    save(tmp_path / "l" / "g1.nii.gz", labels(et=3))
    save(tmp_path / "p" / "g1.nii.gz", labels(et=3))
    (tmp_path / "p" / "inference_report.csv").write_text("case_id,modalities,status\ng1,t1ce+t2,ok\n")
    assert list(find_predictions(tmp_path / "p")) == ["g1"]
    res = score_folder(tmp_path / "p", tmp_path / "l", progress=False)
    assert set(res.metrics["subset"]) == {"t1ce+t2"} and (res.metrics["dice"] == 1.0).all()
    assert res.reports == {}


def test_grid_mismatch_is_reported_not_raised(tmp_path):
    save(tmp_path / "l" / "a.nii.gz", labels())
    save(tmp_path / "l" / "b.nii.gz", labels())
    save(tmp_path / "p" / "a.nii.gz", labels())
    save(tmp_path / "p" / "b.nii.gz", labels(), np.diag([1.0, 1.0, 1.0, 1.0]))
    res = score_folder(tmp_path / "p", tmp_path / "l", tmp_path / "r", progress=False)
    assert res.metrics["case_id"].unique().tolist() == ["a"]
    assert any(p.startswith("b: prediction") and "does not overlay" in p for p in res.problems)
    assert res.reports["summary_md"].is_file()


@pytest.mark.parametrize(
    "kw, error, expected",
    [
        ({"subset": "dwi"}, ValueError, "unknown subset"),
        ({"postprocess_min_et": -1}, ValueError, "postprocess_min_et"),
        ({"release": "latest"}, ValueError, "unknown BraTS release"),
        ({"pred_dir": "missing"}, FileNotFoundError, "prediction folder"),
        ({"labels": "missing"}, FileNotFoundError, "label folder"),
    ],
)
def test_bad_arguments(tmp_path, kw, error, expected):
    save(tmp_path / "l" / "a.nii.gz", labels())
    save(tmp_path / "p" / "a.nii.gz", labels())
    args = {"pred_dir": tmp_path / "p", "labels": tmp_path / "l", "progress": False}
    args.update({k: (tmp_path / v if k in ("pred_dir", "labels") else v) for k, v in kw.items()})
    with pytest.raises(error, match=expected):
        score_folder(**args)
