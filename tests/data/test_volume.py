from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd_med.data.volume import intensity_problems, read_nifti
from tests.testkit import mri_like

SHAPE = (16, 16, 12)


def _write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def _image(value: float = 1.0) -> np.ndarray:
    d = np.zeros(SHAPE, np.float32)
    d[2:14, 2:14, 1:11] = mri_like((12, 12, 10), low=value, high=value + 100)
    return d


def test_good_file(tmp_path):
    read = read_nifti(_write(tmp_path / "a_t1.nii.gz", _image()))
    assert read.ok and read.data.shape == SHAPE and read.warnings == ()


@pytest.mark.parametrize(("strict", "ok"), [(False, True), (True, False)])
def test_strict_refuses_trailing_singleton(tmp_path, strict, ok):
    read = read_nifti(_write(tmp_path / "a_t1.nii.gz", _image()[..., None]), strict=strict)
    assert read.ok is ok
    if ok:
        assert read.data.shape == SHAPE and "squeezed" in read.warnings[0]
    else:
        assert "not a single 3D volume" in read.problems[0]


def test_label_skips_intensity_checks(tmp_path):
    path = _write(tmp_path / "a_seg.nii.gz", np.zeros(SHAPE, np.uint8))
    assert read_nifti(path, label=True).ok
    assert "all zero" in read_nifti(path).problems[0]


def test_header_only(tmp_path):
    read = read_nifti(_write(tmp_path / "a_t1.nii.gz", _image()), read_data=False)
    assert read.ok and read.data is None and read.image is not None


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not a nifti"), "cannot read as NIfTI"),
    ],
)
def test_unusable_file_is_a_problem_not_an_exception(tmp_path, make, expected):
    path = tmp_path / "a_t1.nii.gz"
    make(path)
    read = read_nifti(path)
    assert not read.ok and expected in read.problems[0] and read.data is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.where(_image() > 10, np.nan, _image()), "NaN and 0 Inf"),
        (np.zeros(SHAPE, np.float32), "all zero"),
        (np.where(_image() > 0, np.float32(1e37) * (1 + _image() / 100), 0).astype(np.float32), "overflow"),
    ],
)
def test_intensity_problems(data, expected):
    problems = intensity_problems(data)
    assert len(problems) == 1 and expected in problems[0]
    assert intensity_problems(_image()) == []
