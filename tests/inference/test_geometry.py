"""Tests of lckd_med.inference.geometry: file checks and alignment of the sequences of one case."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd_med.inference.geometry import (
    REFERENCE_PRIORITY,
    GeometryError,
    VolumeGeometry,
    check_and_align,
    compare_geometry,
    read_volume,
    reference_modality,
)

SHAPE = (20, 18, 12)


def lps_affine(spacing=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0)) -> np.ndarray:
    """BraTS-like LPS affine: x and y flipped, origin on the last voxel of the flipped axes."""
    sx, sy, sz = spacing
    aff = np.diag([-sx, -sy, sz, 1.0])
    aff[:3, 3] = [sx * (SHAPE[0] - 1), sy * (SHAPE[1] - 1), 0.0]
    aff[:3, 3] += offset
    return aff


def volume(shape=SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = np.zeros(shape, np.float32)
    data[3:15, 4:12, 2:9] = rng.uniform(1.0, 2.0, size=(12, 8, 7))
    return data


def write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = lps_affine() if affine is None else affine
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, 1)
    img.header.set_sform(affine, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


# ---------------------------------------------------------------------------------------------- read_volume


def test_read_volume_ok_and_trailing_singleton(tmp_path):
    p3 = write(tmp_path / "a_t1.nii.gz", volume())
    p4 = write(tmp_path / "a_t2.nii.gz", volume()[..., None])
    for p in (p3, p4):
        img, data = read_volume(p, "t1")
        assert data.shape == SHAPE and data.dtype == np.float32
        np.testing.assert_allclose(data, volume())


def _corrupt_gzip(p: Path) -> None:
    write(p, np.random.default_rng(1).uniform(1, 2, (40, 40, 30)).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _text(p: Path) -> None:
    p.write_text("this is not an image\n" * 50)


def _gzip_text(p: Path) -> None:
    p.write_bytes(gzip.compress(b"not a nifti header at all" * 40))


def _four_d(p: Path) -> None:
    write(p, np.stack([volume(), volume()], axis=-1))


def _two_d(p: Path) -> None:
    write(p, volume()[:, :, 0])


def _nan(p: Path) -> None:
    d = volume()
    d[5, 5, 5] = np.nan
    d[6, 6, 6] = np.nan
    write(p, d)


def _inf(p: Path) -> None:
    d = volume()
    d[5, 5, 5] = np.inf
    write(p, d)


def _zeros(p: Path) -> None:
    write(p, np.zeros(SHAPE, np.float32))


@pytest.mark.parametrize(
    "maker, name, expected",
    [
        (_corrupt_gzip, "c_t1.nii.gz", "cannot be read|corrupt"),
        (_text, "c_t1.nii", "cannot be read as NIfTI"),
        (_gzip_text, "c_t1.nii.gz", "cannot be read|corrupt"),
        (_four_d, "c_t1.nii.gz", "not a single 3D volume"),
        (_two_d, "c_t1.nii.gz", "not a single 3D volume"),
        (_nan, "c_t1.nii.gz", "2 NaN and 0 infinite"),
        (_inf, "c_t1.nii.gz", "0 NaN and 1 infinite"),
        (_zeros, "c_t1.nii.gz", "only zeros"),
        (None, "absent_t1.nii.gz", "does not exist"),
    ],
)
def test_read_volume_bad_files(tmp_path, maker, name, expected):
    p = tmp_path / name
    if maker is not None:
        maker(p)
    with pytest.raises(GeometryError, match=expected) as e:
        read_volume(p, "t1")
    assert str(p) in str(e.value) and "t1 file" in str(e.value)


def test_read_volume_refuses_non_nifti_image(tmp_path):
    p = tmp_path / "x.mgz"
    nib.save(nib.MGHImage(volume(), np.eye(4)), p)
    with pytest.raises(GeometryError, match="not a NIfTI image"):
        read_volume(p)


# ---------------------------------------------------------------------------------------------- reference / compare


@pytest.mark.parametrize(
    "present, expected",
    [
        (("flair", "t1", "t1ce", "t2"), "t1ce"),
        (("flair", "t1", "t2"), "flair"),
        (("t1", "t2"), "t2"),
        (("t1",), "t1"),
        (("t1ce", "t1"), "t1ce"),
    ],
)
def test_reference_modality(present, expected):
    assert reference_modality(present) == expected
    assert reference_modality({m: ("x" if m in present else None) for m in REFERENCE_PRIORITY}) == expected


def test_reference_modality_none_present():
    with pytest.raises(GeometryError, match="no sequences"):
        reference_modality({"t1": None})


REF = VolumeGeometry(Path("ref.nii.gz"), SHAPE, lps_affine())


@pytest.mark.parametrize(
    "shape, affine, verdict, reason",
    [
        (SHAPE, lps_affine(), "same", ""),
        (SHAPE, lps_affine(offset=(5e-4, 0, 0)), "same", ""),
        (SHAPE, lps_affine(offset=(1.0, 0, 0)), "close", "affines differ"),
        ((22, 18, 12), lps_affine(), "close", "shape"),  # same origin, larger field of view
        (SHAPE, lps_affine(spacing=(1.04, 1.0, 1.0)), "close", "affines differ"),
        (SHAPE, lps_affine(offset=(0, 0, 2.9)), "close", "affines differ"),
        (SHAPE, lps_affine(offset=(0, 0, 3.5)), "far", "more than 3 mm"),
        (SHAPE, lps_affine(offset=(50.0, 0, 0)), "far", "more than 3 mm"),
        (SHAPE, lps_affine(spacing=(1.1, 1.0, 1.0)), "far", "more than 5%"),
        (SHAPE, np.diag([1.0, -1.0, 1.0, 1.0]), "far", "orientation RPS vs LPS"),
    ],
)
def test_compare_geometry(shape, affine, verdict, reason):
    got, why = compare_geometry(VolumeGeometry(Path("m.nii.gz"), shape, affine), REF)
    assert got == verdict
    assert reason in why


def test_compare_geometry_tolerance_is_configurable():
    moving = VolumeGeometry(Path("m.nii.gz"), SHAPE, lps_affine(offset=(0, 0, 5.0)))
    assert compare_geometry(moving, REF)[0] == "far"
    assert compare_geometry(moving, REF, tolerance_mm=6.0)[0] == "close"


# ---------------------------------------------------------------------------------------------- check_and_align


def test_check_and_align_same_grid_unchanged(tmp_path):
    paths = {
        "flair": write(tmp_path / "a_flair.nii.gz", volume(seed=1)),
        "t1": None,
        "t1ce": write(tmp_path / "a_t1ce.nii.gz", volume(seed=2)),
        "t2": write(tmp_path / "a_t2.nii.gz", volume(seed=3), lps_affine(offset=(1e-4, 0, 0))),
    }
    work = tmp_path / "work"
    aligned, notes = check_and_align(paths, work_dir=work)
    assert aligned == {k: (Path(v) if v else None) for k, v in paths.items()}
    assert notes == []
    assert not work.exists()


def test_check_and_align_resamples_close_grid(tmp_path):
    ref_data = volume(seed=1)
    # t2 is the same image on a grid shifted by one voxel along x (LPS: world x = -i + offset)
    shifted = np.zeros((SHAPE[0] + 2, *SHAPE[1:]), np.float32)
    shifted[1:-1] = ref_data
    t2_affine = lps_affine(offset=(1.0, 0.0, 0.0))
    paths = {
        "t1ce": write(tmp_path / "a_t1ce.nii.gz", ref_data),
        "t2": write(tmp_path / "a_t2.nii.gz", shifted, t2_affine),
    }
    work = tmp_path / "work"
    aligned, notes = check_and_align(paths, work_dir=work)
    assert aligned["t1ce"] == paths["t1ce"]
    assert aligned["t2"].parent == work and aligned["t2"].exists()
    assert len(notes) == 1 and notes[0].startswith("resampled t2 onto t1ce grid")
    out = nib.load(aligned["t2"])
    ref = nib.load(paths["t1ce"])
    assert out.shape == ref.shape
    np.testing.assert_array_equal(out.affine, ref.affine)
    assert int(out.header["sform_code"]) == int(ref.header["sform_code"]) == 1
    np.testing.assert_allclose(out.get_fdata(), ref_data, atol=1e-5)
    assert (out.get_fdata()[ref_data == 0] == 0).all()  # no interpolation bleed into the background


def test_check_and_align_default_work_dir_is_created(tmp_path):
    paths = {
        "flair": write(tmp_path / "a_flair.nii.gz", volume()),
        "t1": write(tmp_path / "a_t1.nii.gz", volume(), lps_affine(offset=(0, 0, 1.0))),
    }
    aligned, notes = check_and_align(paths)
    assert aligned["flair"] == paths["flair"]
    assert aligned["t1"].exists() and str(aligned["t1"].parent) in notes[0]
    for f in aligned["t1"].parent.iterdir():
        f.unlink()
    aligned["t1"].parent.rmdir()


@pytest.mark.parametrize(
    "t2_shape, t2_affine, expected",
    [
        ((30, 30, 20), lps_affine(offset=(40.0, 0, 0)), "shape"),
        (SHAPE, lps_affine(offset=(0, 0, 30.0)), "affines differ"),
        (SHAPE, np.diag([1.0, 1.0, 1.0, 1.0]), "orientation"),
    ],
)
def test_check_and_align_refuses_far_grids(tmp_path, t2_shape, t2_affine, expected):
    paths = {
        "t1ce": write(tmp_path / "a_t1ce.nii.gz", volume()),
        "t2": write(tmp_path / "a_t2.nii.gz", volume(t2_shape), t2_affine),
    }
    with pytest.raises(GeometryError, match=expected) as e:
        check_and_align(paths, work_dir=tmp_path / "work")
    msg = str(e.value)
    assert str(paths["t2"]) in msg and str(paths["t1ce"]) in msg and "too far apart" in msg
    assert not (tmp_path / "work").exists()


def test_check_and_align_bad_file_names_it(tmp_path):
    bad = tmp_path / "a_t1.nii.gz"
    _nan(bad)
    paths = {"t1": bad, "t1ce": write(tmp_path / "a_t1ce.nii.gz", volume())}
    with pytest.raises(GeometryError, match="NaN") as e:
        check_and_align(paths)
    assert str(bad) in str(e.value)


@pytest.mark.parametrize(
    "paths, expected",
    [
        ({"t1": None, "t2": None}, "no sequences"),
        ({}, "no sequences"),
        ({"dwi": "x.nii.gz"}, "unknown modality"),
    ],
)
def test_check_and_align_bad_arguments(paths, expected):
    with pytest.raises(GeometryError, match=expected):
        check_and_align(paths)
