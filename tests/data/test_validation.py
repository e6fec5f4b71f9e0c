"""Case validation: every bad input gives a reason naming its file, and a bad case never raises."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd_med.constants import BRATS_2023, MODALITIES, brats_affine
from lckd_med.data.layouts import BratsCase
from lckd_med.data.validation import (
    CaseCheck,
    check_volume_file,
    normalisation_problem,
    validate_case,
    validate_cases,
)
from tests.testkit import mri_like

SHAPE = (16, 16, 10)
AFFINE = brats_affine()


def image(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return mri_like(shape, seed)


def segmentation(et: int = 4) -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[3:10, 3:10, 2:8] = 2
    lab[5:8, 5:8, 3:6] = 1
    lab[6, 6, 4] = et
    return lab


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# A writer replaces one file of the case: (case folder, default path) -> path actually written.
Writer = Callable[[Path, Path], Path]


def build_case(root: Path, writers: dict[str, Writer] | None = None, drop: tuple[str, ...] = ()) -> BratsCase:
    """A good legacy-named case in ``root/C1``; ``writers`` replace files, ``drop`` removes them."""
    folder = root / "C1"
    folder.mkdir(parents=True, exist_ok=True)
    writers = writers or {}
    paths: dict[str, Path | None] = {}
    for i, key in enumerate((*MODALITIES, "label")):
        default = folder / f"C1_{'seg' if key == 'label' else key}.nii.gz"
        if key in drop:
            paths[key] = None
        elif key in writers:
            paths[key] = writers[key](folder, default)
        elif key == "label":
            paths[key] = save(default, segmentation())
        else:
            paths[key] = save(default, image(i))
    label = paths.pop("label")
    return BratsCase(case_id="C1", dir=folder, grade="HGG", paths=paths, label=label, layout="flat")


def raw(content: bytes, name: str | None = None) -> Writer:
    def write(folder: Path, default: Path) -> Path:
        p = folder / name if name else default
        p.write_bytes(content)
        return p

    return write


def array(data: np.ndarray, affine: np.ndarray = AFFINE, name: str | None = None) -> Writer:
    return lambda folder, default: save(folder / name if name else default, data, affine)


def truncated(name: str) -> Writer:
    def write(folder: Path, default: Path) -> Path:
        p = save(folder / name, image(7))
        p.write_bytes(p.read_bytes()[: int(p.stat().st_size * 0.6)])
        return p

    return write


def corrupt_gzip(folder: Path, default: Path) -> Path:
    good = gzip.compress(b"\x00" * 2000)
    default.write_bytes(good[:10] + bytes(range(256)) * 4)  # valid gzip header, garbage deflate stream
    return default


def with_value(value: float, count: int = 3) -> np.ndarray:
    data = image(3)
    data.reshape(-1)[:count] = value
    return data


SHIFTED = AFFINE.copy()
SHIFTED[0, 3] += 0.5
JITTERED = AFFINE + 1e-5

BAD_CASES = [
    ("corrupt_gzip", "t1", corrupt_gzip, "corrupt gzip data"),
    ("not_gzip", "t1", raw(b"this is text, not a NIfTI"), "cannot read as NIfTI"),
    ("not_nifti_uncompressed", "t2", raw(b"hello" * 100, "C1_t2.nii"), "cannot read as NIfTI"),
    ("empty_file", "flair", raw(b""), "cannot read as NIfTI"),
    ("truncated_gz", "t1ce", truncated("C1_t1ce.nii.gz"), "truncated"),
    ("truncated_nii", "t1ce", truncated("C1_t1ce.nii"), "truncated"),
    ("four_d", "flair", array(image(1, (*SHAPE, 2))), "expected a 3-D volume"),
    ("two_d", "flair", array(image(1, SHAPE[:2])), "expected a 3-D volume"),
    ("shape_mismatch", "t2", array(image(1, (16, 16, 11))), "shape (16, 16, 11) differs"),
    ("affine_mismatch", "t1", array(image(1), SHIFTED), "affine differs"),
    ("label_shape_mismatch", "label", array(np.zeros((16, 16, 9), np.uint8)), "shape (16, 16, 9) differs"),
    ("label_affine_mismatch", "label", array(segmentation(), SHIFTED), "affine differs"),
    ("label_value_3_legacy", "label", array(segmentation(et=3)), "values [3] not allowed"),
    ("label_value_5", "label", array(segmentation(et=5)), "values [5] not allowed"),
    ("label_negative", "label", array(segmentation().astype(np.int16) - 1), "values [-1, 3] not allowed"),
    ("label_non_integer", "label", array(segmentation().astype(np.float32) + 0.5), "non-integer"),
    ("label_nan", "label", array(np.where(segmentation() == 1, np.nan, 0).astype(np.float32)), "non-finite"),
    ("nan", "t1", array(with_value(np.nan, 4)), "4 NaN and 0 Inf"),
    ("inf", "t2", array(with_value(np.inf, 2)), "0 NaN and 2 Inf"),
    ("all_zero", "flair", array(np.zeros(SHAPE, np.float32)), "all zero"),
    ("all_zero_int", "flair", array(np.zeros(SHAPE, np.int16)), "all zero"),
]


@pytest.mark.parametrize("key, writer, expected", [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_file_is_rejected_with_reason_naming_it(tmp_path: Path, key: str, writer: Writer, expected: str) -> None:
    case = build_case(tmp_path, {key: writer})
    check = validate_case(case, "brats2018")
    assert isinstance(check, CaseCheck) and not check.ok
    bad_file = case.label if key == "label" else case.paths[key]
    assert len(check.reasons) == 1, check.reasons
    assert check.reasons[0].file == str(bad_file)
    assert expected in check.reasons[0].reason


def test_good_case_is_ok(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path))
    assert check.ok and check.reasons == () and check.warnings == ()
    assert check.shape == SHAPE and check.missing_modalities == ()


@pytest.mark.parametrize("dtype", [np.int16, np.float64, np.uint8])
def test_other_dtypes_are_fine(tmp_path: Path, dtype: type) -> None:
    data = (image(2) * 100).astype(dtype)
    lab = segmentation().astype(np.float32)  # float-stored integer labels occur in the wild
    check = validate_case(build_case(tmp_path, {"t1": array(data), "label": array(lab)}))
    assert check.ok, check.reasons


def test_affine_within_tolerance_is_fine(tmp_path: Path) -> None:
    assert validate_case(build_case(tmp_path, {"t2": array(image(1), JITTERED)})).ok


def test_affine_tolerance_is_configurable(tmp_path: Path) -> None:
    case = build_case(tmp_path, {"t2": array(image(1), JITTERED)})
    assert not validate_case(case, affine_atol=1e-7).ok


def test_four_d_with_trailing_singleton_is_squeezed(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path, {"t1": array(image(1, (*SHAPE, 1)))}))
    assert check.ok and check.shape == SHAPE
    assert len(check.warnings) == 1 and "squeezed" in check.warnings[0].reason


def test_four_d_singleton_all_zero_is_still_checked(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path, {"t1": array(np.zeros((*SHAPE, 1), np.float32))}))
    assert not check.ok and "all zero" in check.reasons[0].reason


def test_missing_sequence_keeps_case_usable(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path, drop=("t1", "t2")))
    assert check.ok and check.missing_modalities == ("t1", "t2")


def test_no_sequence_is_rejected(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path, drop=MODALITIES))
    assert not check.ok and "no MRI sequence" in check.reasons[0].reason and check.reasons[0].file is None


@pytest.mark.parametrize("require_label, ok", [(True, False), (False, True)])
def test_missing_label(tmp_path: Path, require_label: bool, ok: bool) -> None:
    check = validate_case(build_case(tmp_path, drop=("label",)), require_label=require_label)
    assert check.ok is ok
    if not ok:
        assert "segmentation file missing" in check.reasons[0].reason


def test_empty_segmentation_is_a_warning_only(tmp_path: Path) -> None:
    check = validate_case(build_case(tmp_path, {"label": array(np.zeros(SHAPE, np.uint8))}))
    assert check.ok and "empty" in check.warnings[0].reason


def test_2023_convention_accepts_3_and_rejects_4(tmp_path: Path) -> None:
    ok_case = build_case(tmp_path / "a", {"label": array(segmentation(et=3))})
    assert validate_case(ok_case, BRATS_2023).ok
    bad = validate_case(build_case(tmp_path / "b"), 2023)
    assert not bad.ok and "values [4] not allowed by convention brats2023" in bad.reasons[0].reason


def test_every_bad_file_is_reported(tmp_path: Path) -> None:
    case = build_case(tmp_path, {"t1": raw(b"junk"), "t2": array(image(1), SHIFTED), "label": array(segmentation(5))})
    files = sorted(Path(r.file).name for r in validate_case(case).reasons)
    assert files == ["C1_seg.nii.gz", "C1_t1.nii.gz", "C1_t2.nii.gz"]


def test_file_deleted_after_discovery_is_a_reason(tmp_path: Path) -> None:
    case = build_case(tmp_path)
    case.paths["t1"].unlink()
    check = validate_case(case)
    assert not check.ok and check.reasons[0].file == str(case.paths["t1"])


def test_case_must_be_a_bratscase() -> None:
    with pytest.raises(TypeError, match="BratsCase"):
        validate_case({"flair": "x"})  # type: ignore[arg-type]


def test_unknown_convention_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown BraTS release"):
        validate_case(build_case(tmp_path), "brats1999x")


def test_negative_affine_tolerance_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="affine_atol"):
        validate_case(build_case(tmp_path), affine_atol=-1.0)


def test_validate_cases_pool_matches_serial_and_keeps_order(tmp_path: Path) -> None:
    cases = [
        build_case(tmp_path / "a"),
        build_case(tmp_path / "b", {"t1": raw(b"junk")}),
        build_case(tmp_path / "c", drop=("flair",)),
    ]
    seen: list[CaseCheck] = []
    serial = validate_cases(cases, workers=1, progress=seen.append)
    pooled = validate_cases(cases, workers=2)
    assert [c.ok for c in serial] == [True, False, True] and len(seen) == 3
    assert [(c.case.dir, c.ok, c.reasons, c.missing_modalities) for c in pooled] == [
        (c.case.dir, c.ok, c.reasons, c.missing_modalities) for c in serial
    ]


@pytest.mark.parametrize("workers, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_validate_cases_rejects_bad_workers(workers: object, error: type) -> None:
    with pytest.raises(error, match="workers"):
        validate_cases([], workers=workers)  # type: ignore[arg-type]


# ------------------------------------------------------------------ header plausibility, NaN affine, z-score overflow


def _claiming(path: Path, claimed_shape: tuple[int, int, int], gz: bool) -> Path:
    """A NIfTI whose header claims ``claimed_shape`` but whose data is a tiny volume (hostile or corrupt header)."""
    hdr = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).header.copy()
    hdr.set_data_shape(claimed_shape)
    payload = hdr.binaryblock + b"\0" * 4 + np.ones(64, np.float32).tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [True, False], ids=["nii_gz", "nii"])
def test_header_claiming_more_data_than_the_file_can_hold_is_refused_before_reading(tmp_path: Path, gz: bool) -> None:
    path = _claiming(tmp_path / ("big.nii.gz" if gz else "big.nii"), (2048, 2048, 256), gz)
    with pytest.raises(ValueError, match=r"header claims .*(gzip can compress|truncated)"):
        check_volume_file(path)


def test_gzip_trailer_disagreeing_with_a_large_claim_is_refused(tmp_path: Path) -> None:
    # 1.07 GiB claimed, small enough in ratio terms only if the file were large: pad the gzip with a stored block
    path = tmp_path / "liar.nii.gz"
    hdr = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).header.copy()
    hdr.set_data_shape((1024, 1024, 272))
    raw = hdr.binaryblock + b"\0" * 4 + np.random.default_rng(0).bytes(2_000_000)  # incompressible
    path.write_bytes(gzip.compress(raw))
    with pytest.raises(ValueError, match="gzip stream holds"):
        check_volume_file(path)


def test_nan_affine_names_the_file(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[0, 0] = np.nan
    path = tmp_path / "nan_affine.nii.gz"
    img = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), None)
    img.header.set_sform(affine, 1)
    img.header.set_qform(None, 0)
    nib.save(img, path)
    with pytest.raises(ValueError, match=r"nan_affine\.nii\.gz: the affine .* NaN"):
        check_volume_file(path)


@pytest.mark.parametrize(("scale", "bad"), [(1.0, False), (1e30, False), (1e37, True)], ids=["normal", "1e30", "1e37"])
def test_intensities_overflowing_the_z_score_are_found(scale: float, bad: bool) -> None:
    data = np.zeros((6, 6, 6), np.float32)
    data[1:5, 1:5, 1:5] = np.random.default_rng(0).uniform(1.0, 3.0, (4, 4, 4)) * scale
    assert (normalisation_problem(data) is not None) == bad
