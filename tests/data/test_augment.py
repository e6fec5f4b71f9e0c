"""The LCKD reference's augmentation chain (BraTSDataSet.get_train_transform of billhhh/LCKD@5ba51b5, batchgenerators
0.21): the LCKD bundle's default chain holds its parameters in its order; the conversions to MONAI's
parameterisation and the own transforms reproduce batchgenerators, deterministically where a parameter can be fixed
and statistically (seeded two-sample tests) where it cannot. The batchgenerators comparisons are skipped when it is
not installed (``pip install batchgenerators``, in the ``dev`` extra)."""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandFlipd, RandGaussianNoised, RandScaleIntensityd
from scipy import ndimage, stats

from lckd_med.data.augment import (
    REFERENCE_AUGMENTATION,
    RandChannelGaussianBlurd,
    RandChannelGaussianShiftd,
    RandChannelLowResolutiond,
    RandContrastd,
    RandGammad,
    RandReferenceSpatiald,
    two_sided_uniform,
)
from lckd_med.data.crop import ReferenceCropd
from lckd_med.data.transforms import MaskMissingModalitiesd
from lckd_med.engines.workflow import bundle_dir

N = 2000  # draws per statistical comparison


@pytest.fixture
def numpy_global_seed():
    """batchgenerators draws from numpy's global generator: seed it, and give the previous state back."""
    state = np.random.get_state()
    np.random.seed(0)
    yield
    np.random.set_state(state)


def _same_law(a, b) -> None:
    assert stats.ks_2samp(np.ravel(a), np.ravel(b)).pvalue > 1e-3


def _draws(transform, data: np.ndarray, n: int = N, key: str = "image") -> np.ndarray:
    transform.set_random_state(seed=1)
    return np.stack([np.asarray(transform({key: torch.as_tensor(data.copy())})[key]) for _ in range(n)])


def _chain() -> list:
    parser = ConfigParser()
    parser.read_config(f"{bundle_dir('lckd')}/train.json")
    parser["label_convention"] = "brats2018"
    chain = parser.get_parsed_content("train#preprocessing").transforms
    start = next(i for i, t in enumerate(chain) if isinstance(t, ReferenceCropd))
    return list(chain[start + 1 :])


def test_train_json_chain_is_the_reference_in_its_order():
    chain = _chain()
    kinds = [type(t) for t in chain[:12]]
    assert kinds == [
        RandReferenceSpatiald,  # SpatialTransform
        RandGaussianNoised,  # GaussianNoiseTransform
        RandChannelGaussianBlurd,  # GaussianBlurTransform
        RandScaleIntensityd,  # BrightnessMultiplicativeTransform
        RandChannelGaussianShiftd,  # BrightnessTransform
        RandContrastd,  # ContrastAugmentationTransform
        RandChannelLowResolutiond,  # SimulateLowResolutionTransform
        RandGammad,  # GammaTransform
        RandFlipd,
        RandFlipd,
        RandFlipd,  # MirrorTransform (with the dataset-level mirror)
        MaskMissingModalitiesd,
    ]
    spatial, noise, blur, mult, add, contrast, lowres, gamma, *flips = chain[:11]
    deg = 15.0  # the reference's angle_x/y/z = +-15 / 360 * 2 pi
    assert (spatial.elastic_prob, spatial.alpha_range, spatial.sigma_range) == (0.2, (0.0, 900.0), (9.0, 13.0))
    assert (spatial.rotate_prob, spatial.degrees) == (0.2, (-deg, deg))
    assert (spatial.scale_prob, spatial.scale_range, spatial.label_key) == (0.2, (0.85, 1.25), "label")
    n = noise.rand_gaussian_noise
    assert (noise.prob, n.mean, n.std, n.sample_std) == (0.1, 0.0, 0.1, True)  # noise_variance (0, 0.1) = its std
    assert (blur.prob, blur.sigma_range, blur.channel_prob) == (0.2, (0.5, 1.0), 0.5)
    s = mult.scaler
    assert (mult.prob, s.factors, s.channel_wise) == (0.15, (-0.25, 0.25), True)  # multiplier U(0.75, 1.25)
    assert (add.prob, add.mean, add.std, add.channel_prob) == (0.15, 0.0, 0.1, 0.5)
    assert (contrast.prob, contrast.contrast_range, contrast.preserve_range, contrast.channel_prob) == (
        0.15,
        (0.75, 1.25),
        True,
        1.0,
    )
    assert (lowres.prob, lowres.zoom_range, lowres.channel_prob) == (0.25, (0.5, 1.0), 0.5)
    assert (gamma.prob, gamma.gamma_range, gamma.retain_stats) == (0.15, (0.7, 1.5), True)
    assert [(f.prob, f.flipper.spatial_axis) for f in flips] == [(0.5, 0), (0.5, 1), (0.5, 2)]
    assert REFERENCE_AUGMENTATION["mirror"]["prob"] == 0.5


def test_reference_mirror_law_is_a_fair_flip_per_axis():
    """The reference flips in its dataset (none 0.3, each other axis combination 0.1), then batchgenerators flips
    each axis with p 0.5: the XOR is a fair, independent flip per axis -- RandFlipd(prob=0.5) per axis."""
    combos = list(product([0, 1], repeat=3))
    dataset = {c: (0.3 if c == (0, 0, 0) else 0.1) for c in combos}
    law = {c: 0.0 for c in combos}
    for first, p in dataset.items():
        for second in combos:
            law[tuple(a ^ b for a, b in zip(first, second, strict=True))] += p / 8
    assert all(math.isclose(v, 1 / 8) for v in law.values())


def test_two_sided_law():
    rng = np.random.RandomState(0)
    draws = [two_sided_uniform(rng, 0.85, 1.25) for _ in range(N)]
    mixture = lambda x: 0.5 * stats.uniform(0.85, 0.15).cdf(x) + 0.5 * stats.uniform(1.0, 0.25).cdf(x)  # noqa: E731
    assert stats.kstest(draws, mixture).pvalue > 1e-3
    assert all(two_sided_uniform(rng, 1.2, 1.5) >= 1.2 for _ in range(100))  # low >= 1: one side only


def test_spatial_components_are_independent_with_p_02():
    t = RandReferenceSpatiald("image", label_key="label")
    t.set_random_state(seed=3)
    seen = {"displacement": 0, "angles": 0, "scale": 0}
    none = 0
    angles, alphas = [], []
    for _ in range(N):
        params = t.draw((4, 4, 4))
        if params is None:
            none += 1
            continue
        for key in seen:
            seen[key] += params[key] is not None
        if params["angles"] is not None:
            angles += params["angles"]
        if params["displacement"] is not None:
            alphas.append(params["alpha"])
            assert 9.0 <= params["sigma"] <= 13.0
    assert abs(none / N - 0.8**3) < 4 * math.sqrt(0.512 * 0.488 / N)
    assert all(abs(v / N - 0.2) < 4 * math.sqrt(0.16 / N) for v in seen.values()), seen
    assert stats.kstest(np.degrees(angles), stats.uniform(-15, 30).cdf).pvalue > 1e-3
    assert stats.kstest(alphas, stats.uniform(0, 900).cdf).pvalue > 1e-3


def test_gamma_keeps_statistics_as_batchgenerators_021():
    """0.21 moves the result to the former mean, then rescales it: the kept mean is mean x sd / sd' (0.25 fixed
    that); the standard deviation is kept either way."""
    x = np.linspace(1.0, 3.0, 64, dtype=np.float32).reshape(4, 4, 4)
    gamma = 1.3
    out = RandGammad("image")._apply(x, gamma)
    low, span = x.min(), x.max() - x.min() + 1e-7
    powered = ((x - low) / span) ** gamma * span + low
    assert out.std() == pytest.approx(x.std(), rel=1e-5)
    assert out.mean() == pytest.approx(x.mean() * x.std() / (powered.std() + 1e-8), rel=1e-5)


def test_label_follows_the_spatial_transform_and_stays_binary():
    t = RandReferenceSpatiald(
        "image", label_key="label", elastic_prob=1.0, rotate_prob=1.0, scale_prob=1.0, alpha_range=(0, 100)
    )
    t.set_random_state(seed=4)
    label = torch.zeros(3, 16, 16, 8, dtype=torch.uint8)
    label[:, 4:12, 4:12, 2:6] = 1
    d = t({"image": label.float()[:1] * 2.0, "label": label})
    assert d["label"].dtype == torch.uint8 and set(torch.unique(d["label"]).tolist()) <= {0, 1}
    # the image moved with the label: its bright voxels are where the moved label is
    bright = d["image"][0] > 1.0
    assert (bright == d["label"][0].bool()).float().mean() > 0.95


# ----------------------------------------------------------------------------------------------- batchgenerators


@pytest.fixture(scope="module")
def bg():
    return pytest.importorskip("batchgenerators")


def test_spatial_resampling_equals_batchgenerators(bg):
    from batchgenerators.augmentations.utils import (
        create_zero_centered_coordinate_mesh,
        interpolate_img,
        rotate_coords_3d,
        scale_coords,
    )

    rng = np.random.default_rng(0)
    shape = (8, 12, 10)  # the reference's (D, H, W)
    image = rng.normal(size=(2, *shape)).astype(np.float32)
    label = (rng.random((3, *shape)) > 0.6).astype(np.float32)
    angles, scale = [0.2, -0.1, 0.15], 1.1
    coords = scale_coords(rotate_coords_3d(create_zero_centered_coordinate_mesh(shape), *angles), scale)
    for axis, n in enumerate(shape):
        coords[axis] += n / 2  # random_crop with patch = data: the centre is n / 2
    want_image = np.stack([interpolate_img(c, coords, 3, "constant", cval=0) for c in image])
    # 0.21's label rule: each channel linearly interpolated with -1 outside, >= 0.5 (0.25 changed it)
    want_label = np.stack([ndimage.map_coordinates(c, coords, order=1, mode="constant", cval=-1) >= 0.5 for c in label])

    t = RandReferenceSpatiald("image", label_key="label")
    params = {"displacement": None, "angles": angles, "scale": scale, "centre": [n / 2 for n in shape]}
    grid = torch.as_tensor(t.grid(shape, params))
    ours = torch.as_tensor(image).permute(0, 2, 3, 1)  # lckd_med's (C, H, W, D)
    got = t._resample(ours, grid, t.image_resampler).permute(0, 3, 1, 2)
    np.testing.assert_allclose(got.numpy(), want_image, atol=1e-5)
    moved = t._resample(torch.as_tensor(label).permute(0, 2, 3, 1) + 1, grid, t.label_resampler) - 1
    np.testing.assert_array_equal(moved.permute(0, 3, 1, 2).numpy() >= 0.5, want_label)


def test_blur_lowres_contrast_gamma_equal_batchgenerators_at_fixed_parameters(bg):
    from batchgenerators.augmentations.color_augmentations import augment_contrast, augment_gamma
    from batchgenerators.augmentations.noise_augmentations import augment_gaussian_blur
    from batchgenerators.augmentations.resample_augmentations import augment_linear_downsampling_scipy

    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 10, 12, 9)).astype(np.float32)
    blur = augment_gaussian_blur(x.copy(), (0.7, 0.7), per_channel=True, p_per_channel=1)
    np.testing.assert_allclose(RandChannelGaussianBlurd("image")._apply(x[0], 0.7), blur[0], atol=1e-6)
    low = augment_linear_downsampling_scipy(
        x.copy(), zoom_range=(0.6, 0.6), per_channel=True, p_per_channel=1, order_downsample=0, order_upsample=3
    )
    np.testing.assert_allclose(RandChannelLowResolutiond("image")._apply(x[0], 0.6), low[0], atol=1e-5)
    contrast = augment_contrast(x.copy(), contrast_range=lambda: 1.2, preserve_range=True, per_channel=True)
    np.testing.assert_allclose(RandContrastd("image")._apply(x[0], 1.2), contrast[0], atol=1e-5)
    centred = x - x.mean()  # zero mean: 0.21's and 0.25's kept statistics agree
    gamma = augment_gamma(centred.copy(), (1.3, 1.3), per_channel=True, retain_stats=True)
    np.testing.assert_allclose(RandGammad("image")._apply(centred[0], 1.3), gamma[0], atol=1e-5)


def test_noise_law_equals_batchgenerators(bg, numpy_global_seed):
    from batchgenerators.transforms.noise_transforms import GaussianNoiseTransform

    zeros = np.zeros((N, 1, 8, 8, 8), np.float32)
    theirs = GaussianNoiseTransform(p_per_sample=1, data_key="data")(data=zeros.copy())["data"]
    ours = _draws(RandGaussianNoised("image", prob=1.0, mean=0.0, std=0.1, sample_std=True), zeros[0])
    _same_law(theirs.reshape(N, -1).std(axis=1), ours.reshape(N, -1).std(axis=1))


def test_brightness_laws_equal_batchgenerators(bg, numpy_global_seed):
    from batchgenerators.transforms.color_transforms import BrightnessMultiplicativeTransform, BrightnessTransform

    ones = np.ones((N, 4, 1, 1, 1), np.float32)
    theirs = BrightnessMultiplicativeTransform((0.75, 1.25), p_per_sample=1, data_key="data")(data=ones.copy())
    ours = _draws(RandScaleIntensityd("image", factors=(-0.25, 0.25), prob=1.0, channel_wise=True), ones[0])
    _same_law(theirs["data"], ours)
    zeros = np.zeros_like(ones)
    theirs = BrightnessTransform(0.0, 0.1, True, p_per_sample=1, p_per_channel=0.5, data_key="data")(data=zeros.copy())
    ours = _draws(RandChannelGaussianShiftd("image", prob=1.0), zeros[0])
    _same_law(theirs["data"], ours)  # half the channels unchanged (an atom at 0), half + N(0, 0.1)


def test_contrast_and_gamma_laws_equal_batchgenerators(bg, numpy_global_seed):
    from batchgenerators.transforms.color_transforms import ContrastAugmentationTransform, GammaTransform

    # a channel of mean 0 whose 0.1 voxel is never clipped: it comes out as 0.1 x factor
    probe = np.tile(np.array([-1.0, 1.0, 0.1, -0.1], np.float32).reshape(1, 1, 4, 1, 1), (N, 1, 1, 1, 1))
    theirs = ContrastAugmentationTransform(p_per_sample=1, data_key="data")(data=probe.copy())["data"][:, 0, 2, 0, 0]
    ours = _draws(RandContrastd("image", prob=1.0), probe[0])[:, 0, 2, 0, 0]
    _same_law(theirs / 0.1, ours / 0.1)
    # min 0, max 1: the 0.5 voxel comes out as ~0.5 ** gamma
    ramp = np.tile(np.array([0.0, 0.5, 1.0], np.float32).reshape(1, 1, 3, 1, 1), (N, 1, 1, 1, 1))
    theirs = GammaTransform((0.7, 1.5), per_channel=True, p_per_sample=1, data_key="data")(data=ramp.copy())
    ours = _draws(RandGammad("image", prob=1.0, retain_stats=False), ramp[0])
    _same_law(np.log(theirs["data"][:, 0, 1]) / np.log(0.5), np.log(ours[:, 0, 1]) / np.log(0.5))


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (RandChannelGaussianBlurd, {"prob": 1.5}, "prob"),
        (RandChannelGaussianBlurd, {"sigma_range": (1.0, 0.5)}, "sigma_range"),
        (RandChannelGaussianShiftd, {"std": -0.1}, "std"),
        (RandContrastd, {"channel_prob": 2}, "channel_prob"),
        (RandChannelLowResolutiond, {"zoom_range": (0.0, 1.0)}, "zoom_range"),
        (RandGammad, {"gamma_range": (0.0, 1.5)}, "gamma_range"),
        (RandReferenceSpatiald, {"elastic_prob": -1}, "elastic_prob"),
        (RandReferenceSpatiald, {"scale_range": (0.0, 1.2)}, "scale_range"),
        (RandReferenceSpatiald, {"degrees": (15, -15)}, "degrees"),
    ],
)
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls("image", **kwargs)
