"""The LCKD reference's training augmentation (batchgenerators chain of ``BraTSDataSet.get_train_transform``).

The chain, in the reference's order, with its parameters (batchgenerators 0.21, the version the reference pins) and
what runs here (``REFERENCE_AUGMENTATION`` holds the numbers, :func:`reference_augmentation` builds the chain):

====================================== ============================================ ==================================
reference (batchgenerators)            law                                          here
====================================== ============================================ ==================================
SpatialTransform: elastic              p 0.2: alpha ~ U(0, 900), sigma ~ U(9, 13)   :class:`RandReferenceSpatiald`
SpatialTransform: rotation             p 0.2: three angles ~ U(-15, 15) degrees     (one resampling for all three,
SpatialTransform: scale                p 0.2: s ~ U(0.85, 1) or U(1, 1.25), half    image cubic, label linear >= 0.5)
                                       each; isotropic
GaussianNoiseTransform                 p 0.1: std ~ U(0, 0.1) (its "variance")     MONAI ``RandGaussianNoised``
GaussianBlurTransform                  p 0.2; per channel p 0.5: sigma ~ U(0.5, 1)  :class:`RandChannelGaussianBlurd`
BrightnessMultiplicativeTransform      p 0.15; per channel x U(0.75, 1.25)         MONAI ``RandScaleIntensityd``
BrightnessTransform                    p 0.15; per channel p 0.5: + N(0, 0.1)      :class:`RandChannelGaussianShiftd`
ContrastAugmentationTransform          p 0.15; per channel f ~ U(0.75, 1) or       :class:`RandContrastd`
                                       U(1, 1.25): (x - mean) f + mean, clipped
SimulateLowResolutionTransform         p 0.25; per channel p 0.5: zoom ~ U(0.5,1), :class:`RandChannelLowResolutiond`
                                       nearest down, cubic up
GammaTransform                         p 0.15; per channel gamma ~ U(0.7, 1) or    :class:`RandGammad`
                                       U(1, 1.5), statistics kept
MirrorTransform (+ dataset mirror)     each axis p 0.5                             MONAI ``RandFlipd`` per axis
====================================== ============================================ ==================================

Conversions: batchgenerators' ``noise_variance`` is passed to ``numpy.random.normal`` as the standard deviation, so
MONAI's ``std=0.1, sample_std=True`` (std ~ U(0, 0.1)) is the same law; ``BrightnessMultiplicativeTransform``'s
multiplier ``m`` is MONAI's ``1 + factor`` (``factors=(-0.25, 0.25)``); the reference's dataset-level mirror (none
with p 0.3, each of the 7 other axis combinations 0.1) XOR batchgenerators' independent fair flips is again an
independent fair flip per axis, so one ``RandFlipd(prob=0.5)`` per axis has the reference's law.

Own transforms where MONAI's differ (each says why): MONAI's ``Rand3DElasticd`` / ``RandAffined`` draw one
probability for elastic + rotation + scale together and scale each axis independently and uniformly; its
``RandGaussianSmoothd`` blurs all channels alike and pads with zeros; ``RandShiftIntensityd`` draws uniform
offsets; ``RandAdjustContrastd`` is a gamma on the whole image with uniform gamma; ``RandSimulateLowResolutiond``
resamples all channels alike with torch's nearest / trilinear. The batchgenerators differences between 0.21 and
0.25 that matter here: 0.21's gamma with ``retain_stats`` rescales the re-centred image, so the kept mean is
``mean * sd / sd'`` (0.25 keeps it exactly) -- :class:`RandGammad` follows 0.21, the reference's; 0.25 also gives
label voxels sampled outside the volume the fill value (-1) where 0.21 gives 0 -- here 0, as 0.21.

Axis order: images are ``(C, H, W, D)`` with D the axial axis; the spatial transform works in the reference's
``(D, H, W)`` order internally, so its rotations about "x, y, z" are the reference's.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import (
    MapTransform,
    RandFlipd,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    Resample,
)
from monai.utils import convert_to_dst_type
from scipy import ndimage

from lckd_med.data.resize import grid_resize

__all__ = [
    "REFERENCE_AUGMENTATION",
    "two_sided_uniform",
    "RandReferenceSpatiald",
    "RandChannelGaussianBlurd",
    "RandChannelGaussianShiftd",
    "RandContrastd",
    "RandChannelLowResolutiond",
    "RandGammad",
    "reference_augmentation",
]

#: The reference chain's parameters, in its order (probabilities per sample, ``channel_prob`` per channel).
REFERENCE_AUGMENTATION: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "elastic": MappingProxyType({"prob": 0.2, "alpha": (0.0, 900.0), "sigma": (9.0, 13.0)}),
        "rotation": MappingProxyType({"prob": 0.2, "degrees": (-15.0, 15.0)}),
        "scale": MappingProxyType({"prob": 0.2, "range": (0.85, 1.25)}),
        "noise": MappingProxyType({"prob": 0.1, "std": (0.0, 0.1)}),
        "blur": MappingProxyType({"prob": 0.2, "sigma": (0.5, 1.0), "channel_prob": 0.5}),
        "brightness_multiplicative": MappingProxyType({"prob": 0.15, "range": (0.75, 1.25)}),
        "brightness_additive": MappingProxyType({"prob": 0.15, "mean": 0.0, "std": 0.1, "channel_prob": 0.5}),
        "contrast": MappingProxyType({"prob": 0.15, "range": (0.75, 1.25)}),
        "low_resolution": MappingProxyType({"prob": 0.25, "zoom": (0.5, 1.0), "channel_prob": 0.5}),
        "gamma": MappingProxyType({"prob": 0.15, "range": (0.7, 1.5), "retain_stats": True}),
        "mirror": MappingProxyType({"prob": 0.5}),
    }
)


def two_sided_uniform(rng: np.random.RandomState, low: float, high: float) -> float:
    """batchgenerators' law for a factor around 1: ``U(low, 1)`` or ``U(1, high)`` with probability 1/2 each (when
    ``low < 1``; otherwise ``U(max(low, 1), high)``)."""
    if rng.uniform() < 0.5 and low < 1:
        return float(rng.uniform(low, 1))
    return float(rng.uniform(max(low, 1), high))


def _range(name: str, value: Sequence[float], low_bound: float = 0.0) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, got {value!r}") from None
    if not low_bound <= low <= high or not math.isfinite(high):
        raise ValueError(f"{name} must satisfy {low_bound} <= low <= high < inf, got {value!r}")
    return low, high


def _prob(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _numpy(img: NdarrayOrTensor) -> np.ndarray:
    return np.array(img.detach().cpu() if isinstance(img, torch.Tensor) else img, dtype=np.float32, copy=True)


class _RandChannelwise(RandomizableTransform, MapTransform):
    """Per sample with ``prob``, then per channel with ``channel_prob``: draw parameters, change the channel.

    Subclasses define ``_draw()`` (parameters of one channel, from ``self.R``) and ``_apply(channel, params)`` on a
    float32 numpy channel; the result keeps the input's type (MetaTensor / tensor / array).
    """

    def __init__(self, keys: KeysCollection, prob: float, channel_prob: float, allow_missing_keys: bool) -> None:
        RandomizableTransform.__init__(self, _prob("prob", prob))
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.channel_prob = _prob("channel_prob", channel_prob)

    def _draw(self) -> Any:
        raise NotImplementedError

    def _apply(self, channel: np.ndarray, params: Any) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            arr = _numpy(d[key])
            for c in range(arr.shape[0]):
                if self.R.uniform() < self.channel_prob:
                    arr[c] = self._apply(arr[c], self._draw())
            d[key] = convert_to_dst_type(arr, d[key])[0]
        return d


class RandChannelGaussianBlurd(_RandChannelwise):
    """Gaussian blur, isotropic ``sigma ~ U(sigma_range)`` drawn per channel (batchgenerators'
    ``GaussianBlurTransform(different_sigma_per_channel=True)``): ``scipy.ndimage.gaussian_filter`` with its
    defaults (edges reflected, kernel truncated at 4 sigma), as batchgenerators calls it."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.2,
        sigma_range: Sequence[float] = (0.5, 1.0),
        channel_prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, channel_prob, allow_missing_keys)
        self.sigma_range = _range("sigma_range", sigma_range)

    def _draw(self) -> float:
        return float(self.R.uniform(*self.sigma_range))

    def _apply(self, channel: np.ndarray, sigma: float) -> np.ndarray:
        return ndimage.gaussian_filter(channel, sigma, order=0)


class RandChannelGaussianShiftd(_RandChannelwise):
    """Additive brightness ``+ N(mean, std)`` drawn per channel (batchgenerators' ``BrightnessTransform``)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.15,
        mean: float = 0.0,
        std: float = 0.1,
        channel_prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, channel_prob, allow_missing_keys)
        if not (math.isfinite(mean) and math.isfinite(std) and std >= 0):
            raise ValueError(f"mean must be finite and std finite and >= 0, got mean={mean!r}, std={std!r}")
        self.mean, self.std = float(mean), float(std)

    def _draw(self) -> float:
        return float(self.R.normal(self.mean, self.std))

    def _apply(self, channel: np.ndarray, shift: float) -> np.ndarray:
        return channel + np.float32(shift)


class RandContrastd(_RandChannelwise):
    """Contrast around the channel mean (batchgenerators' ``ContrastAugmentationTransform``): per channel
    ``f ~`` :func:`two_sided_uniform`, ``x -> (x - mean) f + mean``, then (``preserve_range``) clipped to the
    channel's former ``[min, max]``."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.15,
        contrast_range: Sequence[float] = (0.75, 1.25),
        preserve_range: bool = True,
        channel_prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, channel_prob, allow_missing_keys)
        self.contrast_range = _range("contrast_range", contrast_range)
        self.preserve_range = bool(preserve_range)

    def _draw(self) -> float:
        return two_sided_uniform(self.R, *self.contrast_range)

    def _apply(self, channel: np.ndarray, factor: float) -> np.ndarray:
        mean = channel.mean()
        out = (channel - mean) * factor + mean
        return np.clip(out, channel.min(), channel.max()) if self.preserve_range else out


class RandChannelLowResolutiond(_RandChannelwise):
    """Low-resolution simulation per channel (batchgenerators' ``SimulateLowResolutionTransform(per_channel=True,
    order_downsample=0, order_upsample=3)``): ``zoom ~ U(zoom_range)``, resize to ``round(shape * zoom)`` by nearest
    neighbour, back by a cubic spline (edges replicated, result clipped to the coarse channel's range), with
    scikit-image's geometry (:func:`~lckd_med.data.resize.grid_resize`)."""

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.25,
        zoom_range: Sequence[float] = (0.5, 1.0),
        channel_prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, channel_prob, allow_missing_keys)
        low, high = _range("zoom_range", zoom_range)
        if low <= 0:
            raise ValueError(f"zoom_range must be positive, got {zoom_range!r}")
        self.zoom_range = (low, high)

    def _draw(self) -> float:
        low, high = self.zoom_range
        return low if low == high else float(self.R.uniform(low, high))

    def _apply(self, channel: np.ndarray, zoom: float) -> np.ndarray:
        shape = channel.shape
        coarse_shape = np.maximum(np.round(np.array(shape) * zoom).astype(int), 1)
        coarse = grid_resize(channel, coarse_shape, order=0, mode="nearest")
        return grid_resize(coarse, shape, order=3, mode="nearest", clip=True).astype(np.float32)


class RandGammad(_RandChannelwise):
    """Gamma per channel (batchgenerators 0.21's ``GammaTransform(per_channel=True, retain_stats=True)``).

    ``gamma ~`` :func:`two_sided_uniform`; ``x -> ((x - min) / (r + 1e-7)) ** gamma * (r + 1e-7) + min`` with
    ``r = max - min``; with ``retain_stats`` the result is moved to the former mean, then divided by its standard
    deviation (+ 1e-8) and multiplied by the former one -- 0.21's order, which scales the restored mean too.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.15,
        gamma_range: Sequence[float] = (0.7, 1.5),
        retain_stats: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, 1.0, allow_missing_keys)
        low, high = _range("gamma_range", gamma_range)
        if low <= 0:
            raise ValueError(f"gamma_range must be positive, got {gamma_range!r}")
        self.gamma_range = (low, high)
        self.retain_stats = bool(retain_stats)

    def _draw(self) -> float:
        return two_sided_uniform(self.R, *self.gamma_range)

    def _apply(self, channel: np.ndarray, gamma: float) -> np.ndarray:
        x = channel.astype(np.float64)
        mean, std = x.mean(), x.std()
        low = x.min()
        span = x.max() - low + 1e-7
        x = np.power((x - low) / span, gamma) * span + low
        if self.retain_stats:
            x = x - x.mean() + mean
            x = x / (x.std() + 1e-8) * std
        return x.astype(np.float32)


class RandReferenceSpatiald(RandomizableTransform, MapTransform):
    """batchgenerators' ``SpatialTransform`` of the reference: elastic, rotation and scale drawn independently,
    applied by one resampling of the patch onto itself.

    Per sample: with ``elastic_prob`` add to the centred voxel grid a displacement ``alpha * G_sigma(U(-1, 1))`` per
    axis (uniform noise smoothed by a Gaussian of ``sigma``, zero outside); with ``rotate_prob`` rotate the grid by
    ``Rx(a) Ry(b) Rz(c)`` with each angle ~ ``U(degrees)``; with ``scale_prob`` multiply it by one
    :func:`two_sided_uniform` factor. When any of the three happened, the grid is moved to the patch centre as
    batchgenerators does (``n / 2``, half a voxel past the array centre for even sizes) and the image is resampled by
    a cubic spline with 0 outside, each label channel linearly with -1 outside and thresholded at 0.5 (0.21's
    label rule). Resampling is MONAI's ``Resample`` with a spline order, i.e. ``scipy.ndimage.map_coordinates``, the
    function batchgenerators calls.

    Args:
        keys: the image keys (cubic).
        label_key: the region label key (linear + 0.5 threshold); ``None`` for none.
        elastic_prob, alpha_range, sigma_range: elastic deformation.
        rotate_prob, degrees: rotation range in degrees about each axis.
        scale_prob, scale_range: isotropic scaling of the sampling grid (> 1 zooms out).

    Images ``(C, H, W, D)``, 3-D only.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = None,
        elastic_prob: float = 0.2,
        alpha_range: Sequence[float] = (0.0, 900.0),
        sigma_range: Sequence[float] = (9.0, 13.0),
        rotate_prob: float = 0.2,
        degrees: Sequence[float] = (-15.0, 15.0),
        scale_prob: float = 0.2,
        scale_range: Sequence[float] = (0.85, 1.25),
        allow_missing_keys: bool = False,
    ) -> None:
        RandomizableTransform.__init__(self, 1.0)
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.label_key = label_key
        self.elastic_prob = _prob("elastic_prob", elastic_prob)
        self.alpha_range = _range("alpha_range", alpha_range)
        self.sigma_range = _range("sigma_range", sigma_range)
        self.rotate_prob = _prob("rotate_prob", rotate_prob)
        self.degrees = _range("degrees", degrees, low_bound=-180.0)
        self.scale_prob = _prob("scale_prob", scale_prob)
        self.scale_range = _range("scale_range", scale_range)
        if self.scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {scale_range!r}")
        self.image_resampler = Resample(mode=3, padding_mode="zeros", norm_coords=False)
        self.label_resampler = Resample(mode=1, padding_mode="zeros", norm_coords=False)

    @staticmethod
    def rotation(angles: Sequence[float]) -> np.ndarray:
        """``Rx(a) @ Ry(b) @ Rz(c)`` (radians) in the reference's ``(D, H, W)`` axis order, batchgenerators' matrices."""
        a, b, c = angles
        rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
        ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
        rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
        return rx @ ry @ rz

    def draw(self, shape: Sequence[int]) -> dict[str, Any] | None:
        """The random parameters for a ``(D, H, W)`` patch: ``None`` (no change) or a dict of ``displacement``
        (``(3, D, H, W)`` or ``None``; with its ``alpha`` and ``sigma``), ``angles`` (radians, or ``None``), ``scale``
        (or ``None``) and the grid ``centre``."""
        params: dict[str, Any] = {"displacement": None, "angles": None, "scale": None}
        if self.R.uniform() < self.elastic_prob:
            alpha = params["alpha"] = float(self.R.uniform(*self.alpha_range))
            sigma = params["sigma"] = float(self.R.uniform(*self.sigma_range))
            params["displacement"] = np.stack(
                [
                    ndimage.gaussian_filter(self.R.random_sample(shape) * 2 - 1, sigma, mode="constant", cval=0) * alpha
                    for _ in range(3)
                ]
            )
        if self.R.uniform() < self.rotate_prob:
            params["angles"] = [math.radians(self.R.uniform(*self.degrees)) for _ in range(3)]
        if self.R.uniform() < self.scale_prob:
            params["scale"] = two_sided_uniform(self.R, *self.scale_range)
        if params["displacement"] is None and params["angles"] is None and params["scale"] is None:
            return None
        params["centre"] = [float(self.R.uniform(n // 2, n - n // 2)) for n in shape]
        return params

    @classmethod
    def grid(cls, shape: Sequence[int], params: Mapping[str, Any]) -> np.ndarray:
        """Sampling coordinates ``(3, D, H, W)`` (voxel indices of the input) for drawn ``params``."""
        axes = [np.arange(n, dtype=np.float64) - (n - 1) / 2.0 for n in shape]
        coords = np.stack(np.meshgrid(*axes, indexing="ij"))
        if params.get("displacement") is not None:
            coords = coords + params["displacement"]
        if params.get("angles") is not None:
            coords = np.einsum("ij,i...->j...", cls.rotation(params["angles"]), coords)
        if params.get("scale") is not None:
            coords = coords * params["scale"]
        return coords + np.asarray(params["centre"], dtype=np.float64).reshape(3, 1, 1, 1)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        first = next(self.key_iterator(d), None)
        if first is None:
            return d
        if d[first].ndim != 4:
            raise ValueError(f"RandReferenceSpatiald takes (C, H, W, D) images, got shape {tuple(d[first].shape)}")
        h, w, depth = d[first].shape[1:]
        params = self.draw((depth, h, w))
        if params is None:
            return d
        grid = torch.as_tensor(self.grid((depth, h, w), params))
        for key in self.key_iterator(d):
            d[key] = self._resample(d[key], grid, self.image_resampler)
        if self.label_key is not None and self.label_key in d:
            label = d[self.label_key]
            # linear interpolation with -1 outside = interpolating (label + 1) with 0 outside, minus 1
            moved = self._resample(torch.as_tensor(label, dtype=torch.float32) + 1, grid, self.label_resampler) - 1
            d[self.label_key] = convert_to_dst_type(moved >= 0.5, label, dtype=label.dtype)[0]
        return d

    @staticmethod
    def _resample(img: NdarrayOrTensor, grid: torch.Tensor, resampler: Resample) -> NdarrayOrTensor:
        t = torch.as_tensor(img, dtype=torch.float32).permute(0, 3, 1, 2)  # (C, H, W, D) -> (C, D, H, W)
        out = torch.as_tensor(resampler(t.as_subclass(torch.Tensor), grid=grid)).permute(0, 2, 3, 1)
        return convert_to_dst_type(out.contiguous(), img, dtype=torch.as_tensor(img).dtype)[0]


def reference_augmentation(image_key: str, label_key: str, spatial_dims: int = 3) -> list:
    """The reference chain (see the module docstring) as MONAI dictionary transforms, in the reference's order.

    Args:
        image_key: ``(C, H, W, D)`` image key.
        label_key: ``(R, H, W, D)`` region label key (moved with the image by the spatial transform and flips).
        spatial_dims: must be 3 (the reference chain is 3-D).

    Raises:
        ValueError: ``spatial_dims`` other than 3.
    """
    if spatial_dims != 3:
        raise ValueError(f"the reference augmentation is 3-D only, got spatial_dims={spatial_dims}")
    p = REFERENCE_AUGMENTATION
    keys = [image_key, label_key]
    return [
        RandReferenceSpatiald(
            image_key,
            label_key=label_key,
            elastic_prob=p["elastic"]["prob"],
            alpha_range=p["elastic"]["alpha"],
            sigma_range=p["elastic"]["sigma"],
            rotate_prob=p["rotation"]["prob"],
            degrees=p["rotation"]["degrees"],
            scale_prob=p["scale"]["prob"],
            scale_range=p["scale"]["range"],
        ),
        # batchgenerators' "noise_variance" is numpy's scale, i.e. the standard deviation
        RandGaussianNoised(image_key, prob=p["noise"]["prob"], mean=0.0, std=p["noise"]["std"][1], sample_std=True),
        RandChannelGaussianBlurd(
            image_key, prob=p["blur"]["prob"], sigma_range=p["blur"]["sigma"], channel_prob=p["blur"]["channel_prob"]
        ),
        # multiplier m ~ U(0.75, 1.25) = MONAI's 1 + factor, factor ~ U(-0.25, 0.25)
        RandScaleIntensityd(
            image_key,
            factors=tuple(m - 1.0 for m in p["brightness_multiplicative"]["range"]),
            prob=p["brightness_multiplicative"]["prob"],
            channel_wise=True,
        ),
        RandChannelGaussianShiftd(
            image_key,
            prob=p["brightness_additive"]["prob"],
            mean=p["brightness_additive"]["mean"],
            std=p["brightness_additive"]["std"],
            channel_prob=p["brightness_additive"]["channel_prob"],
        ),
        RandContrastd(image_key, prob=p["contrast"]["prob"], contrast_range=p["contrast"]["range"]),
        RandChannelLowResolutiond(
            image_key,
            prob=p["low_resolution"]["prob"],
            zoom_range=p["low_resolution"]["zoom"],
            channel_prob=p["low_resolution"]["channel_prob"],
        ),
        RandGammad(
            image_key, prob=p["gamma"]["prob"], gamma_range=p["gamma"]["range"], retain_stats=p["gamma"]["retain_stats"]
        ),
        *[RandFlipd(keys, prob=p["mirror"]["prob"], spatial_axis=axis) for axis in range(spatial_dims)],
    ]
