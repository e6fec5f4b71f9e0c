"""Tests for lckd_med.data.pipelines (tiny BraTS-like NIfTI cases written on the fly with nibabel)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Invertd, RandCropByPosNegLabeld, Randomizable

from lckd_med.constants import MODALITIES, REGIONS, label_convention
from lckd_med.data.pipelines import (
    eval_transforms,
    normalize_roi_size,
    recipe_intensity,
    train_transforms,
    train_transforms_split,
)
from lckd_med.data.transforms import CASE_KEY, IMAGE_KEY, LABEL_KEY, MASK_KEY

SHAPE = (24, 24, 16)
# BraTS affine (LPS: x and y flipped, y origin on the last voxel), scaled to the tiny grid
LPS_AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]])
BRAIN = (slice(3, 19), slice(4, 22), slice(2, 13))
ROI = (16, 16, 8)


def make_case(tmp_path: Path, case_id: str = "case0", et: int = 4, missing: tuple[str, ...] = (), seed: int = 0):
    """Write one case: random positive intensities in an off-centre brain box, labels 2 > 1 > et nested."""
    rng = np.random.default_rng(seed)
    entry: dict = {CASE_KEY: case_id}
    brain = np.zeros(SHAPE, bool)
    brain[BRAIN] = True
    for i, mod in enumerate(MODALITIES):
        if mod in missing:
            entry[mod] = None
            continue
        vol = np.where(brain, rng.uniform(20, 100, SHAPE) + 50 * i, 0).astype(np.float32)
        path = tmp_path / f"{case_id}_{mod}.nii.gz"
        nib.save(nib.Nifti1Image(vol, LPS_AFFINE), str(path))
        entry[mod] = str(path)
    label = np.zeros(SHAPE, np.uint8)
    label[5:13, 6:15, 4:10] = 2
    label[6:11, 7:12, 5:9] = 1
    label[7:9, 8:10, 6:8] = et
    path = tmp_path / f"{case_id}_seg.nii.gz"
    nib.save(nib.Nifti1Image(label, LPS_AFFINE), str(path))
    entry[LABEL_KEY] = str(path)
    return entry, label


def _regions(label: np.ndarray, et: int = 4) -> np.ndarray:
    conv = label_convention("brats2023" if et == 3 else "brats2018")
    return np.stack([np.isin(label, conv.region_labels[r]) for r in REGIONS]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("num_samples", [1, 3])
def test_train_output_shapes_and_types(tmp_path, num_samples):
    entry, _ = make_case(tmp_path)
    chain = train_transforms(ROI, num_samples=num_samples)
    chain.set_random_state(seed=0)
    out = chain(entry)
    assert isinstance(out, list) and len(out) == num_samples
    for sample in out:
        assert sample[IMAGE_KEY].shape == (4, *ROI) and sample[IMAGE_KEY].dtype == torch.float32
        assert sample[LABEL_KEY].shape == (3, *ROI) and sample[LABEL_KEY].dtype == torch.float32
        assert set(torch.unique(sample[LABEL_KEY]).tolist()) <= {0.0, 1.0}
        assert not isinstance(sample[IMAGE_KEY], MetaTensor)  # track_meta=False by default
        assert sample[MASK_KEY].dtype == torch.bool and sample[MASK_KEY].tolist() == [True] * 4
        assert sample[CASE_KEY] == "case0"
        # nested regions: ET within TC within WT
        et, tc, wt = (sample[LABEL_KEY][REGIONS.index(r)].bool() for r in ("ET", "TC", "WT"))
        assert not (et & ~tc).any() and not (tc & ~wt).any()


def test_train_missing_channel_stays_zero_after_intensity_augmentation(tmp_path):
    entry, _ = make_case(tmp_path, missing=("t1",))
    chain = train_transforms(ROI, num_samples=4, augment=True)
    chain.set_random_state(seed=1)
    for sample in chain(entry):
        assert sample[MASK_KEY].tolist() == [True, False, True, True]
        assert torch.count_nonzero(sample[IMAGE_KEY][MODALITIES.index("t1")]) == 0
        assert torch.count_nonzero(sample[IMAGE_KEY][MODALITIES.index("t2")]) > 0


def test_train_normalisation_is_brain_zscore(tmp_path):
    entry, _ = make_case(tmp_path)
    prefix, _ = train_transforms_split(ROI)
    image = prefix(entry)[IMAGE_KEY]
    brain = image[0] != 0
    for c in range(4):
        vals = image[c][brain]
        assert abs(float(vals.mean())) < 1e-4 and abs(float(vals.std(unbiased=False)) - 1) < 1e-3


def test_train_foreground_bias(tmp_path):
    entry, _ = make_case(tmp_path)
    chain = train_transforms(ROI, num_samples=8, pos=1.0, neg=0.0, augment=False)
    chain.set_random_state(seed=2)
    wt = REGIONS.index("WT")
    for sample in chain(entry):
        centre = tuple(s // 2 for s in ROI)
        assert sample[LABEL_KEY][(wt, *centre)] == 1  # patch centred on a foreground voxel


def test_train_determinism(tmp_path):
    entry, _ = make_case(tmp_path)
    chain = train_transforms(ROI, num_samples=2)
    chain.set_random_state(seed=7)
    a = chain(dict(entry))
    chain.set_random_state(seed=7)
    b = chain(dict(entry))
    chain.set_random_state(seed=8)
    c = chain(dict(entry))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x[IMAGE_KEY], y[IMAGE_KEY]) and torch.equal(x[MASK_KEY], y[MASK_KEY])
    assert not all(torch.equal(x[IMAGE_KEY], z[IMAGE_KEY]) for x, z in zip(a, c, strict=True))


def test_split_prefix_is_deterministic_and_cached(tmp_path):
    entry, _ = make_case(tmp_path)
    prefix, suffix = train_transforms_split(ROI)
    assert not any(isinstance(t, Randomizable) for t in prefix.transforms)
    assert isinstance(suffix.transforms[0], RandCropByPosNegLabeld)
    full = train_transforms(ROI)
    first_random = full.get_index_of_first(lambda t: isinstance(t, Randomizable))
    assert first_random == len(prefix.transforms)
    ds = CacheDataset([entry], transform=full, progress=False, num_workers=0)
    cached = ds._cache[0]
    assert cached[IMAGE_KEY].shape[0] == 4 and cached[IMAGE_KEY].shape[1:] != ROI  # brain box, not a patch
    assert cached[LABEL_KEY].dtype == torch.uint8  # compact cache
    assert ds[0][0][IMAGE_KEY].shape == (4, *ROI)


def test_collate_modality_mask_to_batch(tmp_path):
    entries = [
        make_case(tmp_path, "a", seed=1)[0],
        make_case(tmp_path, "b", missing=("t1", "t2"), seed=2)[0],
        make_case(tmp_path, "c", missing=("flair",), seed=3)[0],
    ]
    for e in entries:
        e.update(grade=None, fold=2)  # datalist entries of 2020+ releases carry "grade": null
    ds = CacheDataset(entries, transform=train_transforms(ROI, num_samples=2), progress=False, num_workers=0)
    batch = next(iter(DataLoader(ds, batch_size=3, shuffle=False, num_workers=0)))
    assert batch[MASK_KEY].shape == (6, 4) and batch[MASK_KEY].dtype == torch.bool
    expected = [[True] * 4] * 2 + [[True, False, True, False]] * 2 + [[False, True, True, True]] * 2
    assert batch[MASK_KEY].tolist() == expected
    assert batch[IMAGE_KEY].shape == (6, 4, *ROI) and batch[LABEL_KEY].shape == (6, 3, *ROI)
    assert batch[CASE_KEY] == ["a", "a", "b", "b", "c", "c"]
    assert batch["t1"][2] == "" and batch["grade"] == [""] * 6  # None values collate as empty strings
    assert batch["fold"].tolist() == [2] * 6


# ---------------------------------------------------------------------------------------------------- evaluation


def test_eval_outputs(tmp_path):
    entry, label = make_case(tmp_path, missing=("t1ce",))
    out = eval_transforms()(entry)
    box = tuple(s.stop - s.start for s in BRAIN)
    assert out[IMAGE_KEY].shape == (4, *box) and isinstance(out[IMAGE_KEY], MetaTensor)
    assert out[LABEL_KEY].shape == (3, *box) and out[LABEL_KEY].dtype == torch.float32
    assert out[MASK_KEY].tolist() == [True, True, False, True]
    assert torch.count_nonzero(out[IMAGE_KEY][2]) == 0
    # RAS working orientation: positive diagonal
    assert (torch.diagonal(out[IMAGE_KEY].affine)[:3] > 0).all()
    assert out[LABEL_KEY].sum(dim=(1, 2, 3)).tolist() == _regions(label).sum(axis=(1, 2, 3)).tolist()


def test_eval_without_label(tmp_path):
    entry, _ = make_case(tmp_path)
    out = eval_transforms(with_label=False)(entry)
    assert out[LABEL_KEY] == entry[LABEL_KEY]  # path untouched, nothing loaded
    assert out[IMAGE_KEY].shape[0] == 4


@pytest.mark.parametrize("convention, et", [("brats2018", 4), ("brats2023", 3)])
def test_eval_inversion_round_trip(tmp_path, convention, et):
    entry, label = make_case(tmp_path, et=et)
    chain = eval_transforms(convention=convention)
    out = chain(entry)
    # the working grid differs from the file grid (cropped and flipped): inversion has work to do
    assert out[LABEL_KEY].shape[1:] != SHAPE
    cropped = _regions(label, et)[(slice(None), *BRAIN)]
    assert out[LABEL_KEY].shape == cropped.shape and not np.array_equal(out[LABEL_KEY].numpy(), cropped)
    np.testing.assert_array_equal(out[LABEL_KEY].numpy(), cropped[:, ::-1, ::-1, :])
    out["pred"] = out[LABEL_KEY].clone()
    inv = Invertd(keys="pred", transform=chain, orig_keys=IMAGE_KEY, nearest_interp=True)(out)
    pred = inv["pred"]
    assert pred.shape == (3, *SHAPE)
    np.testing.assert_array_equal(pred.numpy(), _regions(label, et))
    np.testing.assert_allclose(pred.affine.numpy(), LPS_AFFINE)
    back = label_convention(convention).regions_to_labels(*(pred[REGIONS.index(r)].numpy() > 0.5 for r in REGIONS))
    np.testing.assert_array_equal(back, label)


def test_reference_intensity_keeps_the_whole_volume_and_inverts(tmp_path):
    entry, label = make_case(tmp_path, missing=("t1",))
    chain = eval_transforms(intensity="reference")
    out = chain(entry)
    assert out[IMAGE_KEY].shape == (4, *SHAPE)  # no brain-box crop
    assert torch.count_nonzero(out[IMAGE_KEY][1]) == 0  # the missing sequence stays zero
    brain = out[IMAGE_KEY][0] != 0
    assert abs(float(out[IMAGE_KEY][0][brain].mean())) < 1e-4 and float(out[IMAGE_KEY][0][brain].std()) == (
        pytest.approx(1, abs=1e-2)
    )
    out["pred"] = out[LABEL_KEY].clone()
    pred = Invertd(keys="pred", transform=chain, orig_keys=IMAGE_KEY, nearest_interp=True)(out)["pred"]
    np.testing.assert_array_equal(pred.numpy(), _regions(label))


def test_reference_training_chain(tmp_path):
    entry, _ = make_case(tmp_path, missing=("t2",))
    chain = train_transforms(ROI, num_samples=3, intensity="reference", crop="reference", augmentation="reference")
    chain.set_random_state(seed=0)
    for _ in range(3):
        for sample in chain(entry):
            assert sample[IMAGE_KEY].shape == (4, *ROI) and sample[LABEL_KEY].shape == (3, *ROI)
            assert sample[IMAGE_KEY].dtype == torch.float32 and sample[LABEL_KEY].dtype == torch.float32
            assert set(torch.unique(sample[LABEL_KEY]).tolist()) <= {0.0, 1.0}
            assert torch.count_nonzero(sample[IMAGE_KEY][3]) == 0  # re-zeroed after the intensity augmentation


def test_published_intensity_is_rfnet_mmformer_preprocess_and_inverts(tmp_path):
    """intensity="published": the file's LPS voxel order kept, the brain box widened to 128 (the whole of this small
    volume), z-score over the brain mask (sum of the sequences > 0) applied to every voxel -- by hand from the files;
    a copy of the case stored RAS gives the same network input; the prediction inverts onto the input grid."""
    entry, label = make_case(tmp_path, missing=("t1",))
    chain = eval_transforms(intensity="published")
    out = chain(entry)
    raw = np.stack(
        [
            np.zeros(SHAPE, np.float32) if entry[m] is None else nib.load(entry[m]).get_fdata(dtype=np.float32)
            for m in MODALITIES
        ]
    )
    mask = raw.sum(0) > 0
    want = np.stack([(x - x[mask].mean()) / x[mask].std() if x[mask].std() > 0 else 0 * x for x in raw])
    assert out[IMAGE_KEY].shape == (4, *SHAPE)
    np.testing.assert_allclose(out[IMAGE_KEY].numpy(), want, rtol=1e-6, atol=1e-6)
    assert torch.count_nonzero(out[IMAGE_KEY][1]) == 0  # the missing sequence stays zero
    ras = {**entry}
    for m in MODALITIES:
        if entry[m] is not None:
            img = nib.load(entry[m])
            flipped = nib.Nifti1Image(
                img.get_fdata(dtype=np.float32)[::-1, ::-1].copy(),
                img.affine @ np.array([[-1, 0, 0, SHAPE[0] - 1], [0, -1, 0, SHAPE[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]]),
            )
            ras[m] = str(tmp_path / f"ras_{m}.nii.gz")
            nib.save(flipped, ras[m])
    assert nib.aff2axcodes(nib.load(ras["flair"]).affine) == ("R", "A", "S")
    np.testing.assert_allclose(chain(ras)[IMAGE_KEY].numpy(), out[IMAGE_KEY].numpy(), rtol=1e-6, atol=1e-6)
    out["pred"] = out[LABEL_KEY].clone()
    pred = Invertd(keys="pred", transform=chain, orig_keys=IMAGE_KEY, nearest_interp=True)(out)["pred"]
    np.testing.assert_array_equal(pred.numpy(), _regions(label))


def test_recipe_intensity_defaults_to_the_former_normalisation():
    assert recipe_intensity(None) == recipe_intensity({}) == "brainbox"
    assert recipe_intensity({"intensity": "reference"}) == "reference"
    assert recipe_intensity({"intensity": "published"}) == "published"
    with pytest.raises(ValueError, match="intensity"):
        recipe_intensity({"intensity": "zscore"})


# ---------------------------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"roi_size": 0}, ValueError),
        ({"roi_size": -4}, ValueError),
        ({"roi_size": (16, 16)}, ValueError),
        ({"roi_size": (16, 16, 0)}, ValueError),
        ({"roi_size": (16.0, 16, 8)}, ValueError),
        ({"roi_size": "abc"}, ValueError),
        ({"roi_size": None}, TypeError),
        ({"roi_size": True}, TypeError),
        ({"convention": "brats1999"}, ValueError),
        ({"convention": "nonsense"}, ValueError),
        ({"num_samples": 0}, ValueError),
        ({"num_samples": 1.5}, ValueError),
        ({"pos": -1.0}, ValueError),
        ({"neg": -0.5}, ValueError),
        ({"pos": 0.0, "neg": 0.0}, ValueError),
        ({"pos": "1"}, TypeError),
        ({"augment": "yes"}, TypeError),
        ({"flip_prob": 2.0}, ValueError),
        ({"intensity_scale": -0.1}, ValueError),
        ({"intensity_shift": -0.1}, ValueError),
        ({"augmentation": "heavy"}, ValueError),
        ({"crop": "random"}, ValueError),
        ({"intensity": "zscore"}, ValueError),
    ],
)
def test_train_bad_arguments(kwargs, exc):
    kwargs = {"roi_size": ROI, **kwargs}
    with pytest.raises(exc):
        train_transforms(**kwargs)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"convention": "brats1999"}, ValueError),
        ({"with_label": "yes"}, TypeError),
        ({"convention": 2.5}, ValueError),
        ({"intensity": "zscore"}, ValueError),
    ],
)
def test_eval_bad_arguments(kwargs, exc):
    with pytest.raises(exc):
        eval_transforms(**kwargs)


@pytest.mark.parametrize("roi, expected", [(8, (8, 8, 8)), ((4, 5, 6), (4, 5, 6)), ([2, 2, 2], (2, 2, 2))])
def test_normalize_roi_size(roi, expected):
    assert normalize_roi_size(roi) == expected


def test_reference_augmentation_is_3d_only():
    from lckd_med.modalities import ModalitySpec

    rgbd = ModalitySpec(["rgb", "depth", "ir"], [3, 1, 1], spatial_dims=2)
    with pytest.raises(ValueError, match="3-D"):
        train_transforms((16, 16), modalities=rgbd, augmentation="reference")
    assert train_transforms((16, 16), modalities=rgbd, augmentation="reference", augment=False)  # nothing to refuse
