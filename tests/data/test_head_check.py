"""Garbage in is refused with the file named (lckd_med.data.validation): what cannot be an MRI of a head, one scan given
as two sequences, two patients' files, broken headers (singular affine, complex data, sizes beyond memory), a folder
given as a file; while real-looking heads (the synthetic generator's) pass."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest

from lckd_med.constants import MODALITIES, brats_affine
from lckd_med.data import validation
from lckd_med.data.layouts import BratsCase
from lckd_med.data.synthetic import generate_case
from lckd_med.data.validation import (
    MIN_AXIS_VOXELS,
    MIN_DISTINCT_INTENSITIES,
    MIN_NEIGHBOUR_CORRELATION,
    MIN_NONZERO_VOXELS,
    case_file_problems,
    head_mri_problem,
    validate_case,
    validate_cases,
)
from lckd_med.data.volume import read_nifti
from tests.testkit import mri_like


@pytest.mark.parametrize("spacing", [2.0, 4.0])
def test_synthetic_heads_pass_with_a_wide_margin(spacing):
    case = generate_case(3, spacing=spacing)
    for m in MODALITIES:
        data = case[m]
        assert head_mri_problem(data) is None
        assert np.count_nonzero(data) > 10 * MIN_NONZERO_VOXELS
        assert np.unique(data[data != 0]).size > 10 * MIN_DISTINCT_INTENSITIES
        assert validation._neighbour_correlation(data) > 2.5 * MIN_NEIGHBOUR_CORRELATION


def _head() -> np.ndarray:
    return generate_case(3, spacing=4.0)["t1ce"].astype(np.float32)


GARBAGE = {
    "binary_mask": (lambda: (_head() > 0).astype(np.float32), "1 distinct non-zero intensity"),
    "label_map": (lambda: generate_case(3, spacing=4.0)["seg"].astype(np.float32), "distinct non-zero intensities"),
    "constant": (lambda: np.full((60, 60, 39), 100.0, np.float32), "1 distinct non-zero intensity"),
    "noise": (lambda: np.random.default_rng(0).random((60, 60, 39), dtype=np.float32) + 1, "pure noise"),
    "one_voxel": (lambda: np.pad(np.ones((1, 1, 1), np.float32), ((5, 54), (5, 54), (5, 33))), "only 1 non-zero"),
    "1x1x1": (lambda: np.ones((1, 1, 1), np.float32), f"fewer than {MIN_AXIS_VOXELS} voxels along an axis"),
    "single_slice": (lambda: _head()[:, :, 20:21], "fewer than"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_what_cannot_be_a_head_mri_is_refused_naming_the_file(tmp_path, kind):
    make, expected = GARBAGE[kind]
    path = tmp_path / "x_t1.nii.gz"
    nib.save(nib.Nifti1Image(make(), brats_affine(4.0)), str(path))
    read = read_nifti(path)
    assert not read.ok and "does not look like an MRI of a head" in read.problems[0] and expected in read.problems[0]


def _case(root, names: dict[str, str], data=None) -> BratsCase:
    folder = root / "case"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for i, m in enumerate(MODALITIES):
        if m in names:
            p = folder / names[m]
            if not p.exists():
                nib.save(nib.Nifti1Image(mri_like((16, 16, 10), i), brats_affine()), str(p))
            paths[m] = p
        else:
            paths[m] = None
    return BratsCase(case_id="case", dir=folder, grade=None, paths=paths, label=None, layout="flat")


@pytest.mark.parametrize("how", ["symlink", "copy", "hard_link"])
def test_one_scan_given_as_two_sequences_is_refused(tmp_path, how):
    case = _case(tmp_path, {"t1": "P_t1.nii.gz"})
    t2 = case.dir / "P_t2.nii.gz"
    if how == "symlink":
        t2.symlink_to(case.paths["t1"])
    elif how == "copy":
        shutil.copy(case.paths["t1"], t2)
    else:
        t2.hardlink_to(case.paths["t1"])
    problems = case_file_problems({**case.paths, "t2": t2})
    assert len(problems) == 1 and problems[0][0] == str(t2)
    assert ("same content" if how == "copy" else "is the t1 file") in problems[0][1]
    check = validate_case(
        BratsCase("case", case.dir, None, {**case.paths, "t2": t2}, None, "flat"), require_label=False
    )
    assert not check.ok and any(str(t2) == r.file for r in check.reasons)


def test_files_of_two_patients_in_one_case_are_refused(tmp_path):
    case = _case(tmp_path, {"t1": "P1_t1.nii.gz", "t2": "P2_t2.nii.gz", "flair": "notes.nii.gz"})
    (problem,) = case_file_problems(case.paths)
    assert "name different cases" in problem[1] and "P1_t1" in problem[1] and "P2_t2" in problem[1]
    same = _case(tmp_path / "b", {"t1": "P1_t1.nii.gz", "t2": "p1-t2w.nii.gz"})  # case and separator ignored
    assert case_file_problems(same.paths) == []


def _save(path, data, affine=None):
    img = nib.Nifti1Image(data, None)
    img.header.set_sform(np.eye(4) if affine is None else affine, code=1)  # as written: no qform to decompose it
    nib.save(img, str(path))
    return path


def test_singular_affine_complex_voxels_and_folders_are_refused_naming_the_file(tmp_path):
    flat = np.diag([1.0, 0.0, 1.0, 1.0])  # a zero voxel size
    p = _save(tmp_path / "zero_t1.nii.gz", mri_like((16, 16, 10)), flat)
    assert "the affine (voxel-to-world matrix in the header) is singular" in read_nifti(p).problems[0]
    collapsed = np.eye(4)
    collapsed[:3, 1] = collapsed[:3, 0]  # two axes mapped onto one
    p = _save(tmp_path / "axes_t1.nii.gz", mri_like((16, 16, 10)), collapsed)
    assert "singular" in read_nifti(p).problems[0]
    p = _save(tmp_path / "cplx_t1.nii.gz", mri_like((16, 16, 10)).astype(np.complex64))
    assert "complex-valued voxels" in read_nifti(p).problems[0]
    (tmp_path / "dir_t1.nii.gz").mkdir()
    assert read_nifti(tmp_path / "dir_t1.nii.gz").problems == ("is a folder, expected a NIfTI file (.nii.gz or .nii)",)


def test_a_volume_beyond_the_available_memory_is_refused_before_reading(tmp_path, monkeypatch):
    """A gzip bomb within the compression-ratio guard: the header's size is checked against the memory at hand."""
    p = _save(tmp_path / "bomb_t1.nii.gz", np.zeros((128, 128, 128), np.float32))
    assert p.stat().st_size * validation.GZIP_MAX_RATIO > 128**3 * 4  # within the ratio guard
    monkeypatch.setattr("lckd_med.utils.memory.available_memory", lambda device="cpu": 16 * 2**20)
    problem = read_nifti(p).problems[0]
    assert "reading its (128, 128, 128) voxels needs about" in problem and "only 16.0 MiB are available" in problem


def test_memory_error_while_reading_is_a_problem_not_a_crash(tmp_path, monkeypatch):
    p = _save(tmp_path / "a_t1.nii.gz", mri_like((16, 16, 10)))

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("lckd_med.data.volume.intensity_problems", no_memory)
    assert "not enough memory to read and check its (16, 16, 10) voxels" in read_nifti(p).problems[0]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_case_whose_check_crashes_is_rejected_alone_whatever_the_workers(tmp_path, monkeypatch, workers):
    good = _case(tmp_path, {"t1": "G_t1.nii.gz"})
    bad = BratsCase("bad", good.dir, None, dict(good.paths), None, "flat")
    real = validation.validate_case

    def crash_on_bad(case, *args, **kwargs):
        if case.case_id == "bad":
            raise MemoryError("Unable to allocate 23.5 GiB")
        return real(case, *args, **kwargs)

    if workers == 2:
        pytest.importorskip("multiprocessing")
    monkeypatch.setattr(validation, "validate_case", crash_on_bad)
    if workers == 2:  # pool workers run the module's own function: make the crash real there
        monkeypatch.setattr(validation, "ProcessPoolExecutor", _InlinePool)
    checks = validate_cases([good, bad], "brats2018", require_label=False, workers=workers)
    assert checks[0].ok and not checks[1].ok and "MemoryError" in checks[1].reasons[0].reason


class _InlinePool:
    """A ``ProcessPoolExecutor`` stand-in running tasks at submit time (the pool's error path, without processes)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except Exception as e:
            fut.set_exception(e)
        return fut

    def shutdown(self, *args, **kwargs) -> None:
        pass
