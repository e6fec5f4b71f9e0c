"""The one predictor: sliding window, encode once, decode the requested subsets, on one device.

Teacher election (:mod:`lckd_med.engines.election`), evaluation (:mod:`lckd_med.inference.evaluation`) and batch
inference (:mod:`lckd_med.inference.batch`) all predict through :class:`SubsetPredictor`, so the window size
fallback, the overlap, the blending, autocast and the device are chosen in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lckd_med.constants import NUM_REGIONS
from lckd_med.modalities import ModalitySpec, spec_of
from lckd_med.prediction.device import resolve_device
from lckd_med.prediction.sweep import BLEND_MODES, WINDOW_AVERAGES, sweep_subsets
from lckd_med.utils.checks import fraction, positive_int
from lckd_med.utils.memory import check_fits
from lckd_med.utils.progress import progress_bar, progress_enabled

__all__ = [
    "SubsetPredictor",
    "resolve_roi_size",
    "estimate_sweep_memory",
    "count_windows",
    "ACTIVATION_FACTOR",
    "STITCHING_FACTOR",
    "FALLBACK_BYTES_PER_WINDOW_VOXEL",
]

#: Activation bytes per window voxel assumed for a network without ``filters``/``in_modalities`` hyper-parameters.
FALLBACK_BYTES_PER_WINDOW_VOXEL: int = 256


def resolve_roi_size(
    roi_size: int | Sequence[int] | None,
    ckpt: Mapping[str, Any] | None = None,
    network: torch.nn.Module | None = None,
    where: str = "checkpoint",
) -> tuple[int, ...]:
    """The sliding-window size: the one given, else the training crop stored in the checkpoint.

    Args:
        roi_size: an int (a cube; a square for a 2-D ``network``), a sequence of ints, or ``None`` for the
            checkpoint's ``train_config.roi_size``.
        ckpt: the loaded checkpoint dict (only read when ``roi_size`` is ``None``).
        network: when given, the window must be divisible by its ``size_divisor``.
        where: names the checkpoint in the error messages.

    Raises:
        ValueError: no size anywhere, a non-positive size, or a size the network cannot take.
    """
    if roi_size is None:
        roi_size = ((ckpt or {}).get("train_config") or {}).get("roi_size")
        if not roi_size:
            raise ValueError(f"{where} stores no training roi_size (train_config.roi_size); pass roi_size")
    if isinstance(roi_size, (bool, str, bytes)):
        raise TypeError(f"roi_size must be an int or a sequence of ints, got {roi_size!r}")
    divisor = getattr(network, "size_divisor", None) if network is not None else None
    if isinstance(roi_size, int):  # a cube, or a square for a 2-D network
        roi_size = (roi_size,) * (len(divisor) if divisor is not None else 3)
    try:
        roi = tuple(roi_size)
    except TypeError:
        raise TypeError(f"roi_size must be an int or a sequence of ints, got {roi_size!r}") from None
    if any(isinstance(r, bool) or not isinstance(r, int) or r <= 0 for r in roi):
        raise ValueError(f"roi_size must be positive ints, got {roi_size!r}")
    if divisor is not None and (len(divisor) != len(roi) or any(r % int(d) for r, d in zip(roi, divisor, strict=True))):
        raise ValueError(f"roi_size {roi} must be divisible by the network's size divisor {tuple(divisor)}")
    return roi


#: Feature maps alive at once per level while a window is encoded and decoded, in units of one float32 map per
#: modality (and one for the decoder): measured peaks on the CPU were 1.5 to 2.1 times one map (tiny, lean_small and
#: lean networks, 96^3 to 128^3 windows; docs/reliability.md).
ACTIVATION_FACTOR: float = 2.0
#: Buffers alive at once while the windows are stitched, in units of the padded image and logit sums.
STITCHING_FACTOR: float = 1.5


def _window_bytes_per_voxel(network: torch.nn.Module) -> float:
    """Activation bytes per window voxel: :data:`ACTIVATION_FACTOR` float32 feature maps per level and modality, plus
    the decoder's, each at its level's resolution (``filters[l]`` channels over the product of the strides down to
    level ``l``), plus the full-resolution head of a network with a strided stem."""
    hparams = getattr(network, "hparams", None) or {}
    filters, modalities = hparams.get("filters"), hparams.get("in_modalities")
    if not filters or not modalities:
        return float(FALLBACK_BYTES_PER_WINDOW_VOXEL)
    dims = int(hparams.get("spatial_dims", 3))
    strides = hparams.get("strides") or [[1] * dims] + [[2] * dims] * (len(filters) - 1)
    per_voxel, scale = 0.0, 1.0
    for f, stride in zip(filters, strides, strict=False):
        scale *= float(np.prod(stride))
        per_voxel += int(f) / scale
    head = float(hparams.get("head_filters") or 0) if np.prod(strides[0]) > 1 else 0.0
    return 4.0 * ACTIVATION_FACTOR * (per_voxel * (int(modalities) + 1) + head)


def estimate_sweep_memory(
    image_shape: Sequence[int],
    roi_size: Sequence[int],
    n_subsets: int,
    network: torch.nn.Module,
    sw_batch_size: int = 1,
) -> tuple[float, float]:
    """``(stitching bytes, window bytes)`` a sliding-window sweep allocates, as lower estimates.

    Stitching (on the output device): the image padded to at least one window per axis, the subsets' logit sums
    and their copy, the count map (MONAI pads an image smaller than the window, so a window larger than the image
    makes all of these window-sized). Windows (on the device the network runs on): ``sw_batch_size`` windows of the
    network's activations (see :func:`_window_bytes_per_voxel`).
    """
    batch, channels, *spatial = (int(v) for v in image_shape)
    padded = float(np.prod([max(s, int(r)) for s, r in zip(spatial, roi_size, strict=True)], dtype=np.float64))
    stitching = 4.0 * STITCHING_FACTOR * batch * padded * (channels + 2 * n_subsets * NUM_REGIONS + 2)
    window = float(np.prod([int(r) for r in roi_size], dtype=np.float64)) * sw_batch_size
    return stitching, window * _window_bytes_per_voxel(network)


def count_windows(spatial_shape: Sequence[int], roi_size: Sequence[int], overlap: float) -> int:
    """Windows :func:`monai.inferers.sliding_window_inference` runs over one image of ``spatial_shape``.

    The image is padded to at least one window per axis; the scan interval per axis is the window less the overlap
    (the whole window where image and window are equal), as MONAI computes it; the window starts are MONAI's
    ``dense_patch_slices``.
    """
    from monai.data.utils import dense_patch_slices

    size = [max(int(s), int(r)) for s, r in zip(spatial_shape, roi_size, strict=True)]
    roi = [int(r) for r in roi_size]
    interval = [r if r == s else max(int(r * (1 - overlap)), 1) for s, r in zip(size, roi, strict=True)]
    return len(dense_patch_slices(size, roi, interval))


class SubsetPredictor:
    """Whole-volume subset logits of one network: sliding window, each window encoded once.

    Args:
        network: a network with ``encode`` / ``decode_subsets`` (see :class:`~lckd_med.prediction.sweep.
            SubsetSweepPredictor`); the caller sets eval mode.
        roi_size: sliding-window size (see :func:`resolve_roi_size` for the checkpoint fallback).
        overlap: window overlap in [0, 1) (1/3, as the reference recipe).
        mode: window blending, one of :data:`~lckd_med.prediction.sweep.BLEND_MODES` (``"constant"``: uniform
            averaging, the reference's).
        amp: bf16 autocast when the windows run on CUDA.
        sw_batch_size: windows per forward pass.
        device: where the windows run (``"auto"`` etc., see :func:`resolve_device`).
        output_device: where the stitched logits live; ``None`` keeps them on ``device`` (election scores on
            the GPU), ``"cpu"`` saves GPU memory on whole scans (evaluation, batch inference).
        modalities: the :class:`~lckd_med.modalities.ModalitySpec` of the images and subset names (``None`` =
            BraTS); its ``spatial_dims`` must match the network's.
        average: what overlapping windows average, ``"logits"`` (default; the reference's validation) or
            ``"probabilities"`` (the reference's final inference); see
            :data:`~lckd_med.prediction.sweep.WINDOW_AVERAGES`.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        roi_size: Sequence[int],
        overlap: float = 1 / 3,
        mode: str = "constant",
        amp: bool = True,
        sw_batch_size: int = 1,
        device: str | torch.device = "auto",
        output_device: str | torch.device | None = None,
        modalities: ModalitySpec | Mapping[str, Any] | None = None,
        average: str = "logits",
    ) -> None:
        self.modalities = spec_of(modalities)
        net_dims = getattr(network, "spatial_dims", self.modalities.spatial_dims)
        net_channels = getattr(network, "in_channels", None)
        net_channels = tuple(net_channels) if isinstance(net_channels, (tuple, list)) else self.modalities.channels
        if (net_dims, net_channels) != (self.modalities.spatial_dims, self.modalities.channels):
            raise ValueError(
                f"the network takes {net_dims}-D inputs with channels {list(net_channels)} per modality; the "
                f"{self.modalities.name} modality spec has {self.modalities.spatial_dims}-D, {list(self.modalities.channels)}"
            )
        if mode not in BLEND_MODES:
            raise ValueError(f"mode (window blending) must be one of {BLEND_MODES}, got {mode!r}")
        if average not in WINDOW_AVERAGES:
            raise ValueError(f"average (what windows average) must be one of {WINDOW_AVERAGES}, got {average!r}")
        self.average = average
        self.sw_batch_size = positive_int(sw_batch_size, "sw_batch_size")
        self.network = network
        self.roi_size = resolve_roi_size(roi_size, network=network)
        self.overlap = fraction(overlap, "overlap")
        self.mode = mode
        self.amp = bool(amp)
        self.device = resolve_device(device)
        self.output_device = self.device if output_device is None else torch.device(output_device)

    def count_windows(self, spatial_shape: Sequence[int]) -> int:
        """Windows one image of ``spatial_shape`` takes with this window and overlap (:func:`count_windows`)."""
        return count_windows(spatial_shape, self.roi_size, self.overlap)

    @torch.no_grad()
    def __call__(
        self,
        image: torch.Tensor,
        subsets: Sequence[str],
        available: torch.Tensor | None = None,
        progress: str | None = None,
    ) -> torch.Tensor:
        """Region logits ``(B, K, 3, *S)`` (float32, on ``output_device``; their sigmoid is the region probabilities
        whatever the network's output kind, see :func:`~lckd_med.prediction.sweep.sweep_subsets`) of ``image``
        ``(B, C, *S)`` under ``subsets``.

        ``available`` ``(B, M)``: the sequences on disk; a subset needing a missing one raises ``ValueError``.
        ``progress``: label of a bar counting the windows (drawn on a terminal only, see
        :func:`lckd_med.utils.progress.progress_enabled`; it disappears when the sweep ends).

        Raises:
            NotEnoughMemoryError: the sweep's memory estimate (:func:`estimate_sweep_memory`) exceeds what the
                output or window device has available (checked before anything is allocated).
        """
        stitching, windows = estimate_sweep_memory(
            tuple(image.shape), self.roi_size, len(subsets), self.network, self.sw_batch_size
        )
        what = f"sliding-window inference of a {tuple(image.shape[2:])} image with a {self.roi_size} window"
        fix = "use a smaller roi_size (a window larger than the image only pads it) or fewer subsets at once"
        if self.output_device == self.device:
            check_fits(stitching + windows, what, fix, self.device)
        else:
            check_fits(stitching, what, fix, self.output_device)
            check_fits(windows, what, fix, self.device)
        bar = None
        if progress is not None and progress_enabled():
            total = int(image.shape[0]) * self.count_windows(tuple(image.shape[2:]))
            bar = progress_bar(desc=progress, total=total, unit="window", leave=False)
        try:
            return sweep_subsets(
                self.network,
                torch.as_tensor(image).as_subclass(torch.Tensor),
                self.roi_size,
                subsets=subsets,
                available=available,
                overlap=self.overlap,
                sw_batch_size=self.sw_batch_size,
                mode=self.mode,
                amp=self.amp,
                sw_device=self.device,
                device=self.output_device,
                modalities=self.modalities,
                average=self.average,
                on_windows=bar.update if bar is not None else None,
            )
        finally:
            if bar is not None:
                bar.close()
