"""Tests of lckd_med.data.synthetic: layout, file format, labels, determinism and MRI-like contrasts."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from lckd_med.constants import MODALITIES, REGIONS, SEGMENTATION_SUFFIX, brats_affine, file_suffixes, label_convention
from lckd_med.data.synthetic import (
    TISSUES,
    case_id_for,
    generate_case,
    release_layout,
    synthetic_shape,
    write_case,
    write_dataset,
)


@functools.cache
def _case(seed: int, grade: str = "HGG", release: int = 2018, enhancing: bool | None = None) -> dict:
    # cached: tests only read the arrays
    return generate_case(seed, spacing=2.0, grade=grade, release=release, enhancing=enhancing)


def _file_names(release: int, case_id: str) -> set[str]:
    sep = "-" if release >= 2023 else "_"
    suffixes = [*file_suffixes(release).values(), SEGMENTATION_SUFFIX]
    return {f"{case_id}{sep}{s}.nii.gz" for s in suffixes}


# ---------------------------------------------------------------------------------------------- naming helpers


@pytest.mark.parametrize(
    "release, index, case_id, layout",
    [
        (2018, 0, "Brats18_SYN_001_1", "brats2018"),
        (2019, 4, "Brats19_SYN_005_1", "brats2018"),
        (2020, 0, "BraTS20_Training_001", "flat"),
        (2021, 9, "BraTS2021_00010", "flat"),
        (2022, 0, "BraTS2021_00001", "flat"),
        (2023, 0, "BraTS-GLI-00000-000", "brats2023"),
        ("2024", 12, "BraTS-GLI-00012-000", "brats2023"),
    ],
)
def test_case_id_and_layout(release, index, case_id, layout):
    assert case_id_for(release, index) == case_id
    assert release_layout(release) == layout


@pytest.mark.parametrize("spacing, shape", [(1.0, (240, 240, 155)), (2.0, (120, 120, 78)), (4, (60, 60, 39))])
def test_synthetic_shape(spacing, shape):
    assert synthetic_shape(spacing) == shape


# ---------------------------------------------------------------------------------------------- files on disk


@pytest.mark.parametrize(
    "release, spacing",
    [
        (2018, 2.0),
        (2023, 2.0),
        pytest.param(2018, 1.0, marks=pytest.mark.slow, id="2018-1mm"),
    ],
)
def test_written_files_naming_dtype_affine(tmp_path, release, spacing):
    records = write_dataset(tmp_path, 1, seed=5, spacing=spacing, release=release, lgg_fraction=0.0)
    (rec,) = records
    case_id = case_id_for(release, 0)
    assert rec["case_id"] == case_id
    expected_dir = tmp_path / "HGG" / case_id if release < 2020 else tmp_path / case_id
    assert rec["case_dir"] == expected_dir
    # exactly the case's files: no temporary leftovers, nothing else in the root
    assert {p.name for p in expected_dir.iterdir()} == _file_names(release, case_id)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        p.relative_to(tmp_path) for p in rec["paths"].values()
    )
    shape = synthetic_shape(spacing)
    affine = brats_affine(spacing)
    for key, path in rec["paths"].items():
        img = nib.load(path)
        assert img.shape == shape, key
        assert img.get_data_dtype() == (np.uint8 if key == "seg" else np.int16), key
        np.testing.assert_allclose(img.affine, affine, atol=1e-5)
        qform, qcode = img.get_qform(coded=True)
        sform, scode = img.get_sform(coded=True)
        assert (int(qcode), int(scode)) == (1, 1), key
        np.testing.assert_allclose(qform, affine, atol=1e-5)
        np.testing.assert_allclose(sform, affine, atol=1e-5)
    seg = np.asarray(nib.load(rec["paths"]["seg"]).dataobj)
    assert set(np.unique(seg).tolist()) == set(label_convention(release).labels)


def test_fixture_brats2018_layout(synthetic_brats2018):
    root = synthetic_brats2018
    assert sorted(p.name for p in root.iterdir()) == ["HGG", "LGG"]
    cases = sorted(root.glob("*/*"))
    assert len(cases) == 6
    assert len(list((root / "LGG").iterdir())) == 2
    lgg_without_et = 0
    for case_dir in cases:
        assert re.fullmatch(r"Brats18_SYN_\d{3}_1", case_dir.name)
        assert {p.name for p in case_dir.iterdir()} == _file_names(2018, case_dir.name)
        seg = np.asarray(nib.load(case_dir / f"{case_dir.name}_seg.nii.gz").dataobj)
        labels = set(np.unique(seg).tolist())
        assert labels <= {0, 1, 2, 4}
        if case_dir.parent.name == "HGG":
            assert labels == {0, 1, 2, 4}, case_dir.name
        elif 4 not in labels:
            lgg_without_et += 1
            assert 1 in labels, "a case without ET still has a tumour core"
    assert lgg_without_et >= 1


def test_fixture_brats2023_layout(synthetic_brats2023):
    root = synthetic_brats2023
    cases = sorted(root.iterdir())
    assert [c.name for c in cases] == [f"BraTS-GLI-{i:05d}-000" for i in range(3)]
    label_sets = []
    for case_dir in cases:
        assert {p.name for p in case_dir.iterdir()} == _file_names(2023, case_dir.name)
        seg = np.asarray(nib.load(case_dir / f"{case_dir.name}-seg.nii.gz").dataobj)
        label_sets.append(set(np.unique(seg).tolist()))
    assert all(s <= {0, 1, 2, 3} for s in label_sets)
    assert sum(3 in s for s in label_sets) == 2


def test_fixture_missing_sequences(synthetic_brats2018_missing):
    cases = sorted(synthetic_brats2018_missing.glob("*/*"))
    n_files = sorted(len(list(c.glob("*.nii.gz"))) for c in cases)
    assert len(cases) == 4
    assert n_files[2:] == [5, 5]
    assert all(3 <= n <= 4 for n in n_files[:2])
    assert all((c / f"{c.name}_seg.nii.gz").is_file() for c in cases)


def test_nonzero_mask_is_brain_in_every_file(synthetic_brats2018):
    case_dir = sorted(synthetic_brats2018.glob("HGG/*"))[0]
    masks = [np.asarray(nib.load(case_dir / f"{case_dir.name}_{m}.nii.gz").dataobj) != 0 for m in MODALITIES]
    for m, mask in zip(MODALITIES, masks, strict=True):
        np.testing.assert_array_equal(mask, masks[0], err_msg=m)
    seg = np.asarray(nib.load(case_dir / f"{case_dir.name}_seg.nii.gz").dataobj)
    assert not (seg[~masks[0]]).any()
    assert 0.08 < masks[0].mean() < 0.3  # ~1.1-1.6 L of brain in the 8.9 L BraTS field, not a box or a speck


# ---------------------------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("modality", MODALITIES)
def test_background_is_zero_outside_brain(modality):
    case = _case(1)
    img, brain = case[modality], case["brain"]
    assert img.dtype == np.int16
    assert not img[~brain].any()
    assert img[brain].min() >= 1
    assert not case["seg"][~brain].any()
    # skull-stripped: the brain does not touch the field-of-view border
    assert not brain[[0, -1]].any() and not brain[:, [0, -1]].any() and not brain[:, :, [0, -1]].any()


@pytest.mark.parametrize(
    "release, grade, labels",
    [
        (2018, "HGG", {0, 1, 2, 4}),
        (2021, "HGG", {0, 1, 2, 4}),
        (2023, "HGG", {0, 1, 2, 3}),
        (2024, "HGG", {0, 1, 2, 3}),
        (2023, "LGG", {0, 1, 2}),
    ],
)
def test_labels_follow_release_convention(release, grade, labels):
    case = _case(2, grade=grade, release=release, enhancing=grade == "HGG")
    assert case["seg"].dtype == np.uint8
    assert set(np.unique(case["seg"]).tolist()) == labels


@pytest.mark.parametrize("seed", [3, 4])
def test_lgg_can_lack_enhancing_tumour(seed):
    case = _case(seed, grade="LGG", enhancing=False)
    seg = case["seg"]
    assert not (seg == 4).any()
    assert not case["enhancing"]
    core = (seg == 1).sum()
    assert core > 50 and (seg == 2).sum() > 0


def test_lgg_enhancement_when_asked():
    case = _case(3, grade="LGG", enhancing=True)
    assert case["enhancing"] and (case["seg"] == 4).any()


def test_tumour_regions_are_nested_and_inside_brain():
    case = _case(6)
    seg, brain = case["seg"], case["brain"]
    et, tc, wt = (np.isin(seg, label_convention(2018).region_labels[r]) for r in REGIONS)
    assert et.sum() < tc.sum() < wt.sum()
    assert not (wt & ~brain).any()
    assert 0.002 < wt.sum() / brain.sum() < 0.3


@pytest.mark.parametrize(
    "modality, brighter, darker",
    [
        ("flair", "oedema", "white_matter"),
        ("flair", "grey_matter", "white_matter"),
        ("flair", "white_matter", "csf"),
        ("t1", "white_matter", "grey_matter"),
        ("t1", "grey_matter", "csf"),
        ("t1", "white_matter", "necrosis"),
        ("t1ce", "enhancing", "white_matter"),
        ("t1ce", "enhancing", "oedema"),
        ("t1ce", "white_matter", "necrosis"),
        ("t2", "csf", "oedema"),
        ("t2", "oedema", "grey_matter"),
        ("t2", "necrosis", "white_matter"),
        ("t2", "grey_matter", "white_matter"),
    ],
)
def test_tissue_contrasts(modality, brighter, darker):
    case = _case(8)
    img, tissue = case[modality], case["tissue"]

    def pure(name: str) -> np.ndarray:
        # interior voxels, away from partial volume with neighbours (thin tissues keep their whole mask)
        mask = tissue == TISSUES[name]
        inner = ndimage.binary_erosion(mask)
        return img[inner if inner.sum() >= 50 else mask]

    hi, lo = np.median(pure(brighter)), np.median(pure(darker))
    assert hi > 1.1 * lo, (modality, brighter, hi, darker, lo)


def test_determinism_for_a_seed():
    a, b, c = generate_case(11), generate_case(np.random.default_rng(11)), _case(12)
    for key in (*MODALITIES, "seg"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not np.array_equal(a["seg"], c["seg"])
    assert not np.array_equal(a["t1ce"], c["t1ce"])


def test_write_dataset_is_deterministic(tmp_path):
    # bookkeeping tests run on the coarse 4 mm grid to stay fast
    runs = [write_dataset(tmp_path / name, 2, seed=4, spacing=4.0, missing_fraction=0.5) for name in ("a", "b")]
    for ra, rb in zip(*runs, strict=True):
        assert ra["missing"] == rb["missing"] and ra["grade"] == rb["grade"]
        for key, path in ra["paths"].items():
            if path is None:
                assert rb["paths"][key] is None
                continue
            np.testing.assert_array_equal(
                np.asarray(nib.load(path).dataobj), np.asarray(nib.load(rb["paths"][key]).dataobj)
            )


@pytest.mark.parametrize("n_cases, missing_fraction, n_missing", [(4, 0.5, 2), (2, 1.0, 2), (2, 0.0, 0)])
def test_missing_fraction(tmp_path, n_cases, missing_fraction, n_missing):
    records = write_dataset(tmp_path, n_cases, seed=1, spacing=4.0, missing_fraction=missing_fraction)
    assert sum(bool(r["missing"]) for r in records) == n_missing
    for rec in records:
        assert 0 <= len(rec["missing"]) <= 2
        assert rec["paths"]["seg"].is_file()
        for m in MODALITIES:
            path = rec["paths"][m]
            assert (path is None) == (m in rec["missing"])
            assert path is None or path.is_file()
        assert len(list(rec["case_dir"].iterdir())) == 5 - len(rec["missing"])


def test_rewrite_removes_stale_sequence(tmp_path):
    case = _case(1)
    first = write_case(case, tmp_path, "Brats18_SYN_001_1")
    again = write_case(case, tmp_path, "Brats18_SYN_001_1", missing=("t2",))
    assert first["paths"]["t2"] is not None and again["paths"]["t2"] is None
    assert not (tmp_path / "HGG" / "Brats18_SYN_001_1" / "Brats18_SYN_001_1_t2.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"grade": "GBM"}, ValueError, "grade"),
        ({"spacing": 0}, ValueError, "spacing"),
        ({"spacing": 8.0}, ValueError, "spacing"),
        ({"spacing": "fine"}, TypeError, "spacing"),
        ({"release": 2017}, ValueError, "release"),
        ({"release": "latest"}, ValueError, "release"),
        ({"enhancing": "yes"}, TypeError, "enhancing"),
        ({"rng_or_seed": -1}, ValueError, "seed"),
        ({"rng_or_seed": 1.5}, TypeError, "rng_or_seed"),
    ],
)
def test_generate_case_rejects(kwargs, error, match):
    kwargs = {"rng_or_seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        generate_case(**kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_cases": 0}, ValueError, "n_cases"),
        ({"n_cases": 2.0}, TypeError, "n_cases"),
        ({"seed": -1}, ValueError, "seed"),
        ({"spacing": 0.5}, ValueError, "spacing"),
        ({"release": 2017}, ValueError, "release"),
        ({"lgg_fraction": 1.5}, ValueError, "lgg_fraction"),
        ({"missing_fraction": -0.1}, ValueError, "missing_fraction"),
        ({"missing_fraction": "half"}, TypeError, "missing_fraction"),
    ],
)
def test_write_dataset_rejects(tmp_path, kwargs, error, match):
    kwargs = {"n_cases": 1, **kwargs}
    with pytest.raises(error, match=match):
        write_dataset(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "missing, match",
    [(("flair", "t1", "t1ce", "t2"), "at least one sequence"), (("pd",), "unknown missing modality")],
)
def test_write_case_rejects(tmp_path, missing, match):
    with pytest.raises(ValueError, match=match):
        write_case(_case(1), tmp_path, "Brats18_SYN_001_1", missing=missing)
    assert not any(Path(tmp_path).iterdir())


# ---------------------------------------------------------------------------------------------- modality ordering


def _best_threshold_dice(sorted_target: np.ndarray) -> float:
    """Best Dice of ``values > t`` or ``values < t`` over every threshold t, given the target sorted by value."""
    hits = sorted_target.astype(np.int64)
    n_pos = int(hits.sum())
    k = np.arange(1, hits.size + 1)
    best = 0.0
    for ranked in (hits[::-1], hits):  # descending (values > t), ascending (values < t)
        best = max(best, float(np.max(2.0 * np.cumsum(ranked) / (k + n_pos))))
    return best


def test_single_modality_threshold_ranks_modalities_like_brats():
    """T1ce separates ET and TC best, FLAIR separates WT best, T1 is the least informative sequence."""
    conv = label_convention(2018)
    values: dict[str, list[np.ndarray]] = {m: [] for m in MODALITIES}
    targets: dict[str, list[np.ndarray]] = {r: [] for r in REGIONS}
    for seed in (20, 21, 22, 23):
        case = _case(seed)
        brain = case["brain"]
        for m in MODALITIES:
            v = case[m][brain].astype(np.float64)
            values[m].append((v - v.mean()) / v.std())  # per-case z-score inside the brain
        for r in REGIONS:
            targets[r].append(np.isin(case["seg"][brain], conv.region_labels[r]))
    y = {r: np.concatenate(t) for r, t in targets.items()}
    dice: dict[str, dict[str, float]] = {r: {} for r in REGIONS}
    for m in MODALITIES:
        order = np.argsort(np.concatenate(values[m]), kind="stable")
        for r in REGIONS:
            dice[r][m] = _best_threshold_dice(y[r][order])

    best = {r: max(dice[r], key=dice[r].get) for r in REGIONS}
    assert best == {"ET": "t1ce", "TC": "t1ce", "WT": "flair"}, dice
    assert dice["ET"]["t1ce"] > 0.7 and dice["WT"]["flair"] > 0.7, dice
    for r in REGIONS:
        assert sorted(dice[r], key=dice[r].get).index("t1") <= 1, (r, dice[r])  # worst or second worst
    mean = {m: np.mean([dice[r][m] for r in REGIONS]) for m in MODALITIES}
    assert min(mean, key=mean.get) == "t1", mean
