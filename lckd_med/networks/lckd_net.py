"""LCKD segmentation network: one 3D U-Net encoder per MRI sequence, mean-fill fusion, shared decoder.

A :class:`~lckd_med.networks.model.MissingModalityNet` with the
:class:`~lckd_med.networks.fusion.MeanFillFusion` strategy.

Shapes and orders: input ``(B, M, H, W, D)`` with channel ``i`` = :data:`~lckd_med.constants.MODALITIES` ``[i]``;
availability mask ``(B, M)`` bool in the same order; output ``(B, 3, H, W, D)`` logits of independent sigmoid
channels in :data:`~lckd_med.constants.REGIONS` order (ET, TC, WT).

Missing modalities (``fill_levels``, see :data:`~lckd_med.networks.fusion.FILL_LEVELS`):

* ``"bottleneck"`` (default, the reference code's behaviour): the missing modality's *bottleneck* feature is
  replaced by the mean of the available ones; its skip connections carry the encoder's output for an all-zero
  input, as when the reference code encodes a zeroed channel.
* ``"all"``: at every level (every skip connection and the bottleneck) the missing modality's features are replaced
  by the mean of the available ones, so a missing input can never influence the output.

In both modes the content of a missing channel is never read (the zero-input encodings are computed from zeros,
once per window shape), hence ``forward(x, mask) == decode(encode(x_full), mask)`` whatever ``x`` holds in the
missing channels, which is what lets :meth:`LCKDNet.decode_subsets` evaluate all 15 subsets from one encoding.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from lckd_med.networks.fusion import FILL_LEVELS, MeanFillFusion
from lckd_med.networks.model import MissingModalityNet

__all__ = ["LCKDNet"]


class LCKDNet(MissingModalityNet):
    """Per-modality 3D U-Net encoders ("students"), mean-fill fusion, one shared decoder.

    The ready-made configurations (the lean default, today's full-resolution U-Net, a CPU-sized one) are in
    :mod:`lckd_med.networks.presets`; the constructor's own defaults are the full-resolution U-Net.

    Args:
        fill_levels: which fused levels replace a missing modality by the mean of the available ones:
            ``"bottleneck"`` (default; the reference code) or ``"all"`` (see the module docstring).
        shared: keywords of :class:`~lckd_med.networks.model.MissingModalityNet` (``in_modalities``,
            ``out_channels``, ``filters``, ``strides``, ``kernel_size``, ``share_encoder`` -- the reference code's
            choice of one encoder for all modalities --, ``deep_supervision``, ``dropout``, ``norm``, ``act``,
            ``head_filters``, ``in_channels``, ``spatial_dims``), with its defaults.

    Raises:
        ValueError / TypeError: any invalid argument, with the reason.

    Note:
        :meth:`encode` skips (sample, modality) pairs marked missing and leaves zeros there. With per-sample
        normalisation (the default) this changes nothing but compute; under DistributedDataParallel set
        ``find_unused_parameters=True`` since a modality missing from a whole batch leaves its encoder unused.
    """

    #: Hyper-parameters saved before ``fill_levels`` existed get ``"all"``: those networks were trained with
    #: mean-fill at every level.
    LEGACY_HPARAMS: ClassVar[dict[str, Any]] = {"fill_levels": "all"}

    def __init__(self, *, fill_levels: str = "bottleneck", **shared: Any) -> None:
        if fill_levels not in FILL_LEVELS:
            raise ValueError(f"fill_levels must be one of {list(FILL_LEVELS)}, got {fill_levels!r}")
        super().__init__(functools.partial(MeanFillFusion, fill_levels=fill_levels), **shared)
        self.fill_levels = fill_levels

    def _extra_hparams(self) -> dict[str, Any]:
        return {"fill_levels": self.fill_levels}
