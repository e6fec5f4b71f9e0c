"""Tests for lckd_med.data.transforms (tiny NIfTI cases written on the fly with nibabel)."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from lckd_med.constants import (
    BRATS_2023,
    BRATS_LEGACY,
    MODALITIES,
    REGIONS,
    SUBSET_NAMES,
    label_convention,
    parse_subset,
    subset_to_mask,
)
from lckd_med.data.transforms import (
    CASE_KEY,
    IMAGE_KEY,
    LABEL_KEY,
    MASK_KEY,
    LabelToRegions,
    LabelToRegionsd,
    LoadModalities,
    LoadModalitiesd,
    MaskMissingModalities,
    MaskMissingModalitiesd,
    ModalityDropout,
    code_to_mask,
    drop_modalities_batch,
    mask_to_code,
)
from lckd_med.modalities import ModalitySpec

SHAPE = (24, 24, 16)
AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return str(path)


def make_case(tmp_path: Path, case_id: str = "case0", et: int = 4, shape=SHAPE) -> tuple[dict, dict]:
    """Write a case: channel i is constant ``10 * (i + 1)`` inside an off-centre brain box; labels 1, 2, et."""
    brain = np.zeros(shape, bool)
    brain[3:19, 4:22, 2:13] = True
    arrays = {}
    entry: dict = {CASE_KEY: case_id}
    for i, mod in enumerate(MODALITIES):
        arrays[mod] = np.where(brain, 10.0 * (i + 1), 0.0).astype(np.float32)
        entry[mod] = _save(tmp_path / f"{case_id}_{mod}.nii.gz", arrays[mod])
    label = np.zeros(shape, np.uint8)
    label[6:14, 8:16, 4:10] = 2
    label[7:12, 9:13, 5:9] = 1
    label[8:10, 10:12, 6:8] = et
    arrays[LABEL_KEY] = label
    entry[LABEL_KEY] = _save(tmp_path / f"{case_id}_seg.nii.gz", label)
    return entry, arrays


# ---------------------------------------------------------------------------------------------------- loading


def test_load_modalitiesd_shapes_order_and_meta(tmp_path):
    entry, arrays = make_case(tmp_path)
    out = LoadModalitiesd()(entry)
    image, mask, label = out[IMAGE_KEY], out[MASK_KEY], out[LABEL_KEY]
    assert isinstance(image, MetaTensor) and image.shape == (4, *SHAPE) and image.dtype == torch.float32
    for i, mod in enumerate(MODALITIES):
        np.testing.assert_array_equal(image[i].numpy(), arrays[mod])
    assert mask.dtype == torch.bool and mask.tolist() == [True] * 4
    np.testing.assert_allclose(image.affine.numpy(), AFFINE)
    assert image.meta["filename_or_obj"] == entry[MODALITIES[0]]
    assert image.applied_operations == []
    assert isinstance(label, MetaTensor) and label.shape == (1, *SHAPE)
    np.testing.assert_array_equal(label[0].numpy(), arrays[LABEL_KEY])


@pytest.mark.parametrize("missing_value", [None, "", "absent"])
@pytest.mark.parametrize("missing", ["flair", "t1ce", "t2"])
def test_missing_sequence_is_zero_channel_and_false_mask(tmp_path, missing, missing_value):
    entry, arrays = make_case(tmp_path)
    if missing_value == "absent":
        del entry[missing]
    else:
        entry[missing] = missing_value
    out = LoadModalitiesd()(entry)
    idx = MODALITIES.index(missing)
    assert out[MASK_KEY].tolist() == [m != missing for m in MODALITIES]
    assert torch.count_nonzero(out[IMAGE_KEY][idx]) == 0
    for i, mod in enumerate(MODALITIES):
        if mod != missing:
            np.testing.assert_array_equal(out[IMAGE_KEY][i].numpy(), arrays[mod])
    assert out[missing] == ""  # normalised so that batches collate
    # affine/meta come from the first present sequence
    first = next(m for m in MODALITIES if m != missing)
    assert out[IMAGE_KEY].meta["filename_or_obj"] == entry[first]


def test_load_modalities_array_twin_accepts_sequence(tmp_path):
    entry, arrays = make_case(tmp_path)
    image, mask = LoadModalities()([entry["flair"], None, entry["t1ce"], entry["t2"]])
    assert image.shape == (4, *SHAPE) and mask.tolist() == [True, False, True, True]
    assert torch.count_nonzero(image[1]) == 0
    np.testing.assert_array_equal(image[3].numpy(), arrays["t2"])


@pytest.mark.parametrize("none_to_empty, expected", [(True, ""), (False, None)])
def test_load_none_values_of_other_keys(tmp_path, none_to_empty, expected):
    entry, _ = make_case(tmp_path)
    entry.update(grade=None, t1=None)
    out = LoadModalitiesd(none_to_empty=none_to_empty)(entry)
    assert out["grade"] == expected and out["t1"] == ""


def test_load_without_label_key_leaves_label_untouched(tmp_path):
    entry, _ = make_case(tmp_path)
    out = LoadModalitiesd(label_key=None)(entry)
    assert out[LABEL_KEY] == entry[LABEL_KEY]


@pytest.mark.parametrize(
    "corruption, match",
    [
        ("all_missing", "no sequence present"),
        ("nonexistent", "does not exist"),
        ("unreadable", "cannot read t1"),
        ("shape_mismatch", "shape mismatch"),
        ("label_shape", "label file"),
        ("label_missing", "no label path"),
        ("four_d", "not a single 3D volume"),
        ("unknown_key", "unknown modality"),
    ],
)
def test_load_errors_name_case_and_file(tmp_path, corruption, match):
    entry, _ = make_case(tmp_path, case_id="Brats18_X_1")
    load = LoadModalitiesd()
    if corruption == "all_missing":
        for m in MODALITIES:
            entry[m] = None
    elif corruption == "nonexistent":
        entry["t1"] = str(tmp_path / "nope.nii.gz")
    elif corruption == "unreadable":
        Path(entry["t1"]).write_bytes(b"this is not a nifti file")
    elif corruption == "shape_mismatch":
        _save(Path(entry["t2"]), np.ones((24, 24, 15), np.float32))
    elif corruption == "label_shape":
        _save(Path(entry[LABEL_KEY]), np.zeros((20, 24, 16), np.uint8))
    elif corruption == "label_missing":
        entry[LABEL_KEY] = None
    elif corruption == "four_d":
        _save(Path(entry["t1ce"]), np.ones((*SHAPE, 2), np.float32))
    elif corruption == "unknown_key":
        with pytest.raises(ValueError, match=match):
            LoadModalities()({"flair": entry["flair"], "t3": entry["t2"]}, case_id="Brats18_X_1")
        return
    with pytest.raises(ValueError, match=match) as info:
        load(entry)
    assert "Brats18_X_1" in str(info.value)
    if corruption in ("nonexistent", "unreadable", "shape_mismatch", "label_shape", "four_d"):
        assert str(tmp_path) in str(info.value)


def test_allow_missing_false_raises(tmp_path):
    entry, _ = make_case(tmp_path, case_id="c7")
    entry["t1"] = None
    with pytest.raises(ValueError, match=r"c7.*missing sequence\(s\) \['t1'\]"):
        LoadModalitiesd(allow_missing=False)(entry)
    entry2, _ = make_case(tmp_path, case_id="c8")
    assert LoadModalitiesd(allow_missing=False)(entry2)[MASK_KEY].all()


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"allow_missing": "yes"}, TypeError),
        ({"dtype": torch.int16}, TypeError),
        ({"dtype": "float32"}, TypeError),
        ({"reader": "NoSuchReader"}, ValueError),
        ({"reader": 3}, TypeError),
    ],
)
def test_load_modalities_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        LoadModalities(**kwargs)


def test_load_modalitiesd_rejects_non_modality_keys():
    with pytest.raises(ValueError, match="modality keys"):
        LoadModalitiesd(keys=("flair", "seg"))


# ---------------------------------------------------------------------------------------------------- labels


def _hand_label(et: int) -> np.ndarray:
    """(1, 2, 2, 2) label covering background, NCR, ED, ET."""
    return np.array([0, 1, 2, et, 0, 2, 1, et], dtype=np.uint8).reshape(1, 2, 2, 2)


@pytest.mark.parametrize(
    "convention, et",
    [("brats2018", 4), (2018, 4), (2021, 4), (BRATS_LEGACY, 4), ("brats2023", 3), (2023, 3), (BRATS_2023, 3)],
)
def test_label_to_regions_both_conventions(convention, et):
    label = _hand_label(et)
    out = LabelToRegions(convention)(torch.as_tensor(label))
    assert out.shape == (3, 2, 2, 2) and out.dtype == torch.float32
    conv = label_convention(convention)
    assert conv.et == et
    for c, region in enumerate(REGIONS):
        expected = np.isin(label[0], conv.region_labels[region])
        np.testing.assert_array_equal(out[c].numpy().astype(bool), expected, err_msg=region)
    # hand-written truth for voxel values [0, 1, 2, et]: ET only at et, TC at 1 and et, WT at 1, 2, et
    flat = {region: out[c].flatten()[:4].tolist() for c, region in enumerate(REGIONS)}
    assert flat == {"ET": [0, 0, 0, 1], "TC": [0, 1, 0, 1], "WT": [0, 1, 1, 1]}


@pytest.mark.parametrize("dtype", [torch.float32, torch.uint8, torch.bool, torch.float16])
def test_label_to_regions_dtype(dtype):
    out = LabelToRegions(dtype=dtype)(torch.as_tensor(_hand_label(4)))
    assert out.dtype == dtype and int(out.sum()) == 2 + 4 + 6


def test_label_to_regions_numpy_3d_and_metatensor():
    lab = _hand_label(4)
    out_np = LabelToRegions()(lab[0])
    assert isinstance(out_np, np.ndarray) and out_np.shape == (3, 2, 2, 2) and out_np.dtype == np.float32
    meta = MetaTensor(torch.as_tensor(lab), affine=torch.as_tensor(AFFINE))
    out = LabelToRegions()(meta)
    assert isinstance(out, MetaTensor)
    np.testing.assert_allclose(out.affine.numpy(), AFFINE)
    np.testing.assert_array_equal(out.numpy(), out_np)


@pytest.mark.parametrize("convention, bad_value", [("brats2018", 3), ("brats2023", 4), ("brats2018", 7)])
def test_label_to_regions_rejects_values_of_other_convention(convention, bad_value):
    lab = _hand_label(label_convention(convention).et)
    lab[0, 0, 0, 0] = bad_value
    with pytest.raises(ValueError, match=rf"case 'cX'.*\[{bad_value}\.0\].*{convention}"):
        LabelToRegionsd(convention=convention)({LABEL_KEY: torch.as_tensor(lab), CASE_KEY: "cX"})
    out = LabelToRegions(convention, check_values=False)(torch.as_tensor(lab))
    assert out.shape == (3, 2, 2, 2)


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (2, 2), (1, 1, 2, 2, 2)])
def test_label_to_regions_rejects_bad_shape(shape):
    with pytest.raises(ValueError, match="label must be"):
        LabelToRegions()(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs, exc",
    [({"convention": "brats1999"}, ValueError), ({"convention": "x"}, ValueError), ({"dtype": "f"}, TypeError)],
)
def test_label_to_regions_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        LabelToRegions(**kwargs)


# ---------------------------------------------------------------------------------------------------- dropout


def _masks(available: str, n: int) -> torch.Tensor:
    return torch.as_tensor(subset_to_mask(available)).repeat(n, 1)


def _draw_batch(dropper: ModalityDropout, available: str, n: int) -> list[str]:
    """Kept subsets of ``n`` draws (via the batch helper; equality with single draws is tested separately)."""
    images = torch.ones((n, 4, 1))
    _, masks = drop_modalities_batch(images, _masks(available, n), dropper)
    return ["+".join(m for m, f in zip(MODALITIES, row, strict=True) if f) for row in masks.tolist()]


def _expected(distribution, available: str, max_kept: int | None) -> dict[str, float]:
    """Independent reference: subset -> probability."""
    avail = parse_subset(available)
    cap = len(avail) if max_kept is None else min(max_kept, len(avail))
    subsets = ["+".join(c) for k in range(1, cap + 1) for c in combinations(avail, k)]
    if distribution == "uniform":
        return {s: 1 / len(subsets) for s in subsets}
    if distribution == "uniform_size":
        return {s: 1 / (cap * math.comb(len(avail), len(s.split("+")))) for s in subsets}
    w = {s: distribution.get(s, 0.0) for s in subsets}
    total = sum(w.values())
    return {s: v / total for s, v in w.items() if v > 0}


@pytest.mark.parametrize(
    "distribution, available, max_kept",
    [
        ("uniform", "flair+t1+t1ce+t2", None),
        ("uniform", "flair+t1+t1ce+t2", 3),
        ("uniform", "flair+t1ce+t2", 3),
        ("uniform", "t1", None),
        ("uniform_size", "flair+t1+t1ce+t2", None),
        ("uniform_size", "flair+t1+t1ce+t2", 3),
        ("uniform_size", "t1+t2", 1),
        ({"t1ce": 1.0, "t1ce+t2": 3.0, "flair+t1+t1ce+t2": 0.0}, "flair+t1+t1ce+t2", None),
        ({"t1ce": 1.0, "t1ce+t2": 3.0, "flair": 2.0}, "flair+t1ce", None),
    ],
)
def test_dropout_distribution_statistics(distribution, available, max_kept):
    n = 6000
    dropper = ModalityDropout(prob=1.0, distribution=distribution, max_kept=max_kept)
    dropper.set_random_state(seed=123)
    kept = _draw_batch(dropper, available, n)
    expected = _expected(distribution, available, max_kept)
    assert set(kept) == set(expected), "every feasible subset appears and nothing else"
    avail = set(parse_subset(available))
    for s in set(kept):
        mods = s.split("+")
        assert s and set(mods) <= avail
        assert max_kept is None or len(mods) <= max_kept
    for s, p in expected.items():
        freq = kept.count(s) / n
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (s, freq, p)
    assert dropper.probabilities(subset_to_mask(available)) == pytest.approx(expected)


def test_per_batch_dropout_is_the_reference_k_then_subset_histogram():
    """Reference phase 2: once per batch, k = randint(1, 3) kept, then a random subset of size k."""
    n_batches, batch = 6000, 2
    dropper = ModalityDropout(prob=1.0, distribution="uniform_size", max_kept=3, granularity="batch")
    dropper.set_random_state(seed=9)
    kept_of_batch = []
    for _ in range(n_batches):
        rows = _draw_batch(dropper, "flair+t1+t1ce+t2", batch)
        assert len(set(rows)) == 1, "one subset for the whole batch"
        kept_of_batch.append(rows[0])
    for k in (1, 2, 3):
        freq = sum(len(s.split("+")) == k for s in kept_of_batch) / n_batches
        assert abs(freq - 1 / 3) < 4 * math.sqrt(2 / 9 / n_batches), (k, freq)
    for s, p in _expected("uniform_size", "flair+t1+t1ce+t2", 3).items():
        freq = kept_of_batch.count(s) / n_batches
        assert abs(freq - p) < 4 * math.sqrt(p * (1 - p) / n_batches) + 1e-9, (s, freq, p)


def test_per_sample_uniform_option_differs_from_the_reference_sizes():
    """The per-sample uniform-over-14 option keeps 1/2/3 sequences with probability 4/14, 6/14, 4/14."""
    n = 6000
    dropper = ModalityDropout(prob=1.0, distribution="uniform", max_kept=3, granularity="sample")
    dropper.set_random_state(seed=4)
    kept = _draw_batch(dropper, "flair+t1+t1ce+t2", n)
    freq2 = sum(len(s.split("+")) == 2 for s in kept) / n
    assert abs(freq2 - 6 / 14) < 0.03 and len(set(kept[:20])) > 1


def test_per_batch_dropout_draws_from_the_shared_sequences_and_falls_back_per_sample():
    dropper = ModalityDropout(prob=1.0, distribution="uniform_size", max_kept=3, granularity="batch")
    dropper.set_random_state(seed=2)
    masks = torch.stack([torch.as_tensor(subset_to_mask(s)) for s in ("flair+t1ce+t2", "t1+t1ce+t2")])
    for _ in range(50):
        _, kept = drop_modalities_batch(torch.ones(2, 4, 1), masks, dropper)
        assert torch.equal(kept[0], kept[1]) and bool(kept.any(dim=1).all())
        assert not bool(kept[:, [0, 1]].any()), "only t1ce/t2 are shared"
    disjoint = torch.stack([torch.as_tensor(subset_to_mask(s)) for s in ("flair+t1", "t1ce+t2")])
    for _ in range(20):
        _, kept = drop_modalities_batch(torch.ones(2, 4, 1), disjoint, dropper)
        assert bool((kept <= disjoint).all()) and bool(kept.any(dim=1).all())


@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_dropout_prob_fraction(prob):
    n = 4000
    dropper = ModalityDropout(prob=prob, max_kept=3)  # with 4 available every firing drops something
    dropper.set_random_state(seed=5)
    kept = _draw_batch(dropper, "flair+t1+t1ce+t2", n)
    fired = sum(k != "flair+t1+t1ce+t2" for k in kept) / n
    assert abs(fired - prob) < 0.03


def test_dropout_single_sample_zeroes_and_ands_mask():
    dropper = ModalityDropout(prob=1.0, distribution={"t1ce": 1.0})
    img = torch.arange(1, 5, dtype=torch.float32).reshape(4, 1, 1, 1).repeat(1, 2, 2, 2)
    img[3] = float("nan")  # a dropped channel is zeroed even when it holds NaN
    out, mask = dropper(img, torch.tensor([True, False, True, True]))
    assert mask.tolist() == [False, False, True, False] and mask.dtype == torch.bool
    assert torch.equal(out[2], img[2]) and torch.count_nonzero(out[[0, 1, 3]]) == 0
    out_np, _ = dropper(img.numpy(), [1, 1, 1, 1])
    assert isinstance(out_np, np.ndarray) and np.count_nonzero(out_np[[0, 1, 3]]) == 0


def test_dropout_derives_mask_from_nonzero_channels():
    dropper = ModalityDropout(prob=1.0)
    dropper.set_random_state(seed=0)
    img = torch.ones(4, 2, 2, 2)
    img[1] = 0
    for _ in range(50):
        _, mask = dropper(img)
        assert not mask[1] and mask.any()


def test_dropout_determinism_and_batch_equals_single():
    n = 64
    single = ModalityDropout(prob=0.7, distribution="uniform_size", max_kept=3).set_random_state(seed=11)
    masks = torch.as_tensor(np.random.default_rng(0).random((n, 4)) < 0.7)
    masks[~masks.any(1), 2] = True
    images = torch.randn(n, 4, 3, 3, 3)
    seq = [single(images[b], masks[b]) for b in range(n)]
    batch = ModalityDropout(prob=0.7, distribution="uniform_size", max_kept=3).set_random_state(seed=11)
    out_img, out_mask = drop_modalities_batch(images, masks, batch)
    assert out_mask.dtype == torch.bool and out_mask.shape == (n, 4)
    assert torch.equal(out_mask, torch.stack([m for _, m in seq]))
    assert torch.equal(out_img, torch.stack([im for im, _ in seq]))
    assert not (out_mask & ~masks).any()
    kept = out_mask[:, :, None, None, None].expand_as(images)
    dropped = (masks & ~out_mask)[:, :, None, None, None].expand_as(images)
    assert torch.equal(out_img[kept], images[kept]) and torch.count_nonzero(out_img[dropped]) == 0
    assert dropped.any() and (out_mask != masks).any(1).float().mean() > 0.3
    # reseeding reproduces, another seed differs
    batch.set_random_state(seed=11)
    assert torch.equal(drop_modalities_batch(images, masks, batch)[1], out_mask)
    batch.set_random_state(seed=12)
    assert not torch.equal(drop_modalities_batch(images, masks, batch)[1], out_mask)


def test_batch_helper_infeasible_rows():
    dropper = ModalityDropout(prob=1.0, distribution={"t2": 1.0})
    masks = torch.tensor([[True, True, True, True], [True, True, True, False]])
    images = torch.ones(2, 4, 2)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        drop_modalities_batch(images, masks, dropper)
    out_img, out_mask = drop_modalities_batch(images, masks, dropper, check=False)
    assert out_mask.tolist() == [[False, False, False, True], [True, True, True, False]]
    assert torch.equal(out_img[1], images[1])


@pytest.mark.parametrize(
    "images, masks, transform, exc",
    [
        (torch.ones(2, 3, 2), torch.ones(2, 3, dtype=torch.bool), ModalityDropout(), ValueError),
        (torch.ones(2, 4, 2), torch.ones(3, 4, dtype=torch.bool), ModalityDropout(), ValueError),
        (torch.ones(2, 4, 2), torch.ones(2, 4, dtype=torch.bool), MaskMissingModalities(), TypeError),
    ],
)
def test_batch_helper_bad_arguments(images, masks, transform, exc):
    with pytest.raises(exc):
        drop_modalities_batch(images, masks, transform)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"prob": -0.1}, ValueError, "prob"),
        ({"prob": 1.5}, ValueError, "prob"),
        ({"prob": "0.5"}, ValueError, "prob"),
        ({"distribution": "gaussian"}, ValueError, "unknown dropout distribution"),
        ({"distribution": ["t1"]}, TypeError, "mapping"),
        ({"distribution": {}}, ValueError, "empty"),
        ({"distribution": {"t3": 1.0}}, ValueError, "unknown subset name"),
        ({"distribution": {"t1+t1": 1.0}}, ValueError, "unknown subset name"),
        ({"distribution": {"t2+flair": 1.0, "flair+t2": 2.0}}, ValueError, "twice"),
        ({"distribution": {"t1": -1.0}}, ValueError, ">= 0"),
        ({"distribution": {"t1": float("nan")}}, ValueError, "finite"),
        ({"distribution": {"t1": "1"}}, ValueError, "finite"),
        ({"distribution": {"t1": 0.0, "t2": 0.0}}, ValueError, "positive weight"),
        ({"distribution": {"flair+t1+t1ce+t2": 1.0}, "max_kept": 3}, ValueError, "max_kept=3"),
        ({"max_kept": 0}, ValueError, "max_kept"),
        ({"max_kept": 5}, ValueError, "max_kept"),
        ({"max_kept": 2.5}, ValueError, "max_kept"),
        ({"max_kept": True}, ValueError, "max_kept"),
        ({"granularity": "case"}, ValueError, "granularity"),
    ],
)
def test_dropout_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ModalityDropout(**kwargs)


def test_dropout_rejects_wrong_channel_count_and_empty_availability():
    with pytest.raises(ValueError, match="4 channels"):
        ModalityDropout()(torch.ones(3, 2, 2))
    with pytest.raises(ValueError, match="no sequence available"):
        ModalityDropout(prob=1.0)(torch.zeros(4, 2, 2))


def test_mask_code_round_trip():
    for name in SUBSET_NAMES:
        mask = subset_to_mask(name)
        assert np.array_equal(code_to_mask(mask_to_code(mask)), mask)
    with pytest.raises(ValueError):
        code_to_mask(16)
    with pytest.raises(ValueError):
        mask_to_code([True, False])


# ---------------------------------------------------------------------------------------------------- masking


def test_mask_missing_modalities_array_and_dict():
    img = torch.full((4, 2, 2, 2), 0.5)
    mask = torch.tensor([True, False, True, False])
    out = MaskMissingModalities()(img, mask)
    assert torch.equal(out[[0, 2]], img[[0, 2]]) and torch.count_nonzero(out[[1, 3]]) == 0
    out_np = MaskMissingModalities()(img.numpy(), mask.numpy())
    assert isinstance(out_np, np.ndarray) and np.count_nonzero(out_np[[1, 3]]) == 0
    meta = MetaTensor(img, affine=torch.as_tensor(AFFINE))
    d = MaskMissingModalitiesd()({IMAGE_KEY: meta, MASK_KEY: mask})
    assert isinstance(d[IMAGE_KEY], MetaTensor) and torch.count_nonzero(d[IMAGE_KEY][[1, 3]]) == 0
    assert torch.equal(MaskMissingModalitiesd()({IMAGE_KEY: img})[IMAGE_KEY], img)  # no mask: unchanged


@pytest.mark.parametrize("img, mask", [(torch.ones(3, 2), torch.ones(4, dtype=torch.bool)), (torch.ones(4, 2), [1, 0])])
def test_mask_missing_modalities_bad_input(img, mask):
    with pytest.raises(ValueError):
        MaskMissingModalities()(img, mask)


# ---------------------------------------------------------------- another modality spec (several channels each)
RGBD = ModalitySpec(["rgb", "depth", "ir"], [3, 1, 1], spatial_dims=2)


def test_dropout_of_a_multichannel_spec_zeroes_whole_modalities():
    dropper = ModalityDropout(prob=1.0, distribution={"rgb+ir": 1.0}, modalities=RGBD)
    img = torch.arange(1, 6, dtype=torch.float32).view(5, 1, 1).expand(5, 4, 4).clone()
    out, mask = dropper(img)  # mask derived from the non-zero channels: all three present
    assert mask.tolist() == [True, False, True]
    assert out[:3].equal(img[:3]) and not out[3].any() and out[4].equal(img[4])
    assert set(dropper.probabilities([True, True, True])) == {"rgb+ir"}
    masker = MaskMissingModalities(RGBD)
    assert masker(img, torch.tensor([False, True, True]))[:3].abs().sum() == 0


def test_dropout_of_a_spec_draws_its_own_subsets():
    dropper = ModalityDropout(prob=1.0, distribution="uniform", modalities=RGBD)
    assert set(dropper.probabilities([True, True, True])) == set(RGBD.subset_names)
    assert mask_to_code([True, False, True], RGBD) == 5 and code_to_mask(5, RGBD).tolist() == [True, False, True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_kept": 4}, r"\[1, 3\]"),
        ({"distribution": {"flair": 1.0}}, "unknown subset name"),
    ],
)
def test_dropout_checks_arguments_against_the_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModalityDropout(modalities=RGBD, **kwargs)


def test_batch_dropout_of_a_spec_checks_channels_and_mask_width():
    dropper = ModalityDropout(prob=1.0, modalities=RGBD)
    with pytest.raises(ValueError, match=r"images must be \(B, 5, ...\)"):
        drop_modalities_batch(torch.ones(2, 4, 4, 4), torch.ones(2, 3, dtype=torch.bool), dropper)
    with pytest.raises(ValueError, match=r"masks must be \(B, 3\)"):
        drop_modalities_batch(torch.ones(2, 5, 4, 4), torch.ones(2, 4, dtype=torch.bool), dropper)
    with pytest.raises(ValueError, match="5 channels"):
        dropper(torch.ones(4, 4, 4))
