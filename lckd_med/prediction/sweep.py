"""Sliding-window inference that encodes each window once and decodes it under many modality subsets.

The network never reads a missing channel: its bottleneck feature (or, with ``fill_levels="all"``, every level)
is replaced by the mean of the available modalities' features, and its skip features are the encoding of a zero
input, computed once per window shape. Decoding the four-modality encoding under a subset's mask is therefore
exactly the forward pass of that subset (see ``tests/inference/test_sweep.py``), and a 15-subset sweep costs one
encoding plus 15 light decodes per window instead of 15 full forward passes. With another
:class:`~lckd_med.modalities.ModalitySpec` (``modalities=``) the sweep covers its ``2**M - 1`` subsets, in 2-D or 3-D.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from lckd_med.constants import NUM_REGIONS
from lckd_med.modalities import BRATS, ModalitySpec
from lckd_med.networks.outputs import output_kind, region_logits, region_probabilities

__all__ = [
    "BLEND_MODES",
    "WINDOW_AVERAGES",
    "subset_masks",
    "SubsetSweepPredictor",
    "sweep_subsets",
    "autocast_context",
]

#: Sliding-window blending of overlapping windows (:func:`monai.inferers.sliding_window_inference` ``mode``):
#: ``"constant"`` = uniform averaging, as the LCKD reference (its ``predict_sliding`` sums window outputs and divides
#: by the count), the default; ``"gaussian"`` weights window centres more (nnU-Net's choice), an option.
BLEND_MODES: tuple[str, ...] = ("constant", "gaussian")
#: What overlapping windows average: ``"logits"`` (default; the reference's validation, hence its teacher election)
#: or ``"probabilities"`` (the sigmoids; the reference's final inference, ``eval.py``). Either way the result is
#: returned as region logits (the logit of the averaged probabilities), so thresholding its sigmoid is unchanged.
#: A network whose output kind is ``"classes"`` (:mod:`lckd_med.networks.outputs`) has its softmax turned into
#: region probabilities per window: ``"probabilities"`` then averages them (equal to averaging its class
#: probabilities, the published RFNet / mmFormer inference); ``"logits"`` averages their logits.
WINDOW_AVERAGES: tuple[str, ...] = ("logits", "probabilities")


def subset_masks(subsets: Sequence[str] | None = None, modalities: ModalitySpec = BRATS) -> torch.Tensor:
    """``(K, M)`` boolean availability masks (modality order) of the named subsets (``None``: all, canonical order)."""
    subsets = modalities.subset_names if subsets is None else subsets
    if len(subsets) == 0:
        raise ValueError("need at least one subset to sweep")
    return torch.stack([torch.from_numpy(modalities.subset_to_mask(s)) for s in subsets])


def autocast_context(device: torch.device | str, amp: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when ``amp``; a no-op elsewhere (CPU runs stay fp32)."""
    device = torch.device(device)
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class SubsetSweepPredictor:
    """Predictor for :func:`monai.inferers.sliding_window_inference`: encode once, decode ``K`` masks.

    Args:
        network: a network with ``encode(x) -> features`` and ``decode_subsets(features, masks) -> (B, K, C, *S)``
            (``C`` = 3 region logits, or 4 class logits when its ``output_kind`` is ``"classes"``).
        masks: ``(K, M)`` boolean availability masks in modality order.
        amp: bf16 autocast when the window is on CUDA.
        average: ``"logits"`` or ``"probabilities"`` (:data:`WINDOW_AVERAGES`): the latter returns region
            probabilities (:func:`~lckd_med.networks.outputs.region_probabilities` of the network's output kind).
        on_windows: called with the number of windows after each call (e.g. a progress bar's ``update``).

    Calling it on a window ``(B, C, *S)`` returns float32 region logits (or probabilities) ``(B, K * 3, *S)``:
    subset-major, regions in ET, TC, WT order inside each subset, whatever the network's output kind.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        masks: torch.Tensor,
        amp: bool = True,
        average: str = "logits",
        on_windows: Callable[[int], object] | None = None,
    ) -> None:
        if average not in WINDOW_AVERAGES:
            raise ValueError(f"average must be one of {WINDOW_AVERAGES}, got {average!r}")
        masks = torch.as_tensor(masks, dtype=torch.bool)
        num_mod = getattr(network, "in_modalities", BRATS.num_modalities)
        if masks.ndim != 2 or masks.shape[1] != num_mod:
            raise ValueError(f"masks must have shape (K, {num_mod}), got {tuple(masks.shape)}")
        if not bool(masks.any(dim=1).all()):
            raise ValueError("every subset mask needs at least one modality")
        self.network = network
        self.masks = masks
        self.amp = amp
        self.average = average
        self.on_windows = on_windows
        self.output_kind = output_kind(network)

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        masks = self.masks.to(window.device)
        with autocast_context(window.device, self.amp):
            feats = self.network.encode(window)
            out = self.network.decode_subsets(feats, masks)
        if self.on_windows is not None:
            self.on_windows(int(window.shape[0]))
        b, k = out.shape[:2]
        convert = region_probabilities if self.average == "probabilities" else region_logits
        out = convert(out.float(), self.output_kind, dim=2)  # (B, K, 3, *S)
        return out.reshape(b, k * out.shape[2], *out.shape[3:])


@torch.no_grad()
def sweep_subsets(
    network: torch.nn.Module,
    image: torch.Tensor,
    roi_size: Sequence[int],
    subsets: Sequence[str] | None = None,
    available: torch.Tensor | None = None,
    overlap: float = 1 / 3,
    sw_batch_size: int = 1,
    mode: str = "constant",
    amp: bool = True,
    sw_device: torch.device | str | None = None,
    device: torch.device | str | None = None,
    modalities: ModalitySpec = BRATS,
    average: str = "logits",
    on_windows: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Whole-volume logits of every subset, each modality encoded once per window.

    Args:
        network: see :class:`SubsetSweepPredictor`; put in eval mode by the caller.
        image: ``(B, C, *S)`` normalised image in modality order (``C = modalities.total_channels``, 4 for BraTS).
        roi_size: sliding-window size (divisible by the network's size divisor).
        subsets: subset names to decode (default: all of them in canonical order, the 15 of BraTS).
        available: optional ``(B, M)`` availability of the modalities on disk; a subset needing an unavailable
            modality raises ``ValueError`` instead of silently decoding zeros.
        overlap, sw_batch_size: as in :func:`monai.inferers.sliding_window_inference` (1/3 overlap, as the
            reference recipe).
        mode: window blending, one of :data:`BLEND_MODES`: ``"constant"`` (uniform averaging, the reference's,
            default) or ``"gaussian"``.
        amp: bf16 autocast on CUDA.
        sw_device, device: where windows run and where the stitched output lives (CPU saves GPU memory on
            large volumes).
        modalities: the modality spec of ``image`` and the subset names (default BraTS).
        average: what overlapping windows average, ``"logits"`` or ``"probabilities"`` (:data:`WINDOW_AVERAGES`).
        on_windows: called with the number of windows done after each network call (progress).

    Returns:
        float32 region logits ``(B, K, 3, *S)`` (with ``"probabilities"``: the logit of the averaged region
        probabilities), subsets in the given order, regions ET, TC, WT; ``sigmoid`` of it is the region probabilities
        whatever the network's output kind.
    """
    spec = modalities
    if image.ndim != 2 + spec.spatial_dims or image.shape[1] != spec.total_channels:
        axes = ", ".join("HWD"[: spec.spatial_dims])
        raise ValueError(f"image must have shape (B, {spec.total_channels}, {axes}), got {tuple(image.shape)}")
    if mode not in BLEND_MODES:
        raise ValueError(f"mode (window blending) must be one of {BLEND_MODES}, got {mode!r}")
    subsets = spec.subset_names if subsets is None else subsets
    masks = subset_masks(subsets, spec)
    if available is not None:
        available = torch.as_tensor(available, dtype=torch.bool).reshape(image.shape[0], spec.num_modalities).cpu()
        for b in range(image.shape[0]):
            lacking = [s for s, m in zip(subsets, masks, strict=True) if bool((m & ~available[b]).any())]
            if lacking:
                raise ValueError(
                    f"sample {b} has only {spec.mask_to_subset(available[b])}; cannot evaluate subsets {lacking}"
                )
    predictor = SubsetSweepPredictor(network, masks, amp=amp, average=average, on_windows=on_windows)
    out = sliding_window_inference(
        image,
        roi_size=tuple(int(r) for r in roi_size),
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode=mode,
        sw_device=sw_device,
        device=device,
    )
    # drop MetaTensor wrapping (torch.as_tensor keeps the subclass): callers index by subset
    out = torch.as_tensor(out).as_subclass(torch.Tensor)
    if average == "probabilities":
        out = torch.logit(out)  # exact inverse of the sigmoid: sigmoid(out) is the averaged probability
    return out.reshape(image.shape[0], len(subsets), NUM_REGIONS, *out.shape[2:])
