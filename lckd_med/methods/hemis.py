"""HeMIS, hetero-modal image segmentation (Havaei et al., MICCAI 2016), on this project's parts.

Each available sequence is encoded by its own encoder; at every level the decoder reads, the fused map is the
concatenation of the **mean and the variance over the available sequences' features** (HeMIS's "abstraction
layer"; the variance is the sample variance, 0 when one sequence is available), brought back to the level's
channels by a 1x1 convolution for the shared U-Net decoder. The fusion reads only the available slots, so
``forward(x, mask) == decode(encode(x_full), mask)`` and the encode-once sweep is exact. Training: modality dropout
and the plain segmentation loss. Shapes: features ``(B, M, C, *S)``, mask ``(B, M)`` bool, logits ``(B, 3, *S)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn

from lckd_med.methods.base import SegmentationMethod
from lckd_med.networks.model import MissingModalityNet

__all__ = ["mean_variance", "MeanVarianceFusion", "HeMISNet", "HeMISMethod"]


def mean_variance(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, 2C, *S)``: mean and sample variance (divisor ``K - 1``; 0 for ``K = 1``) over the ``K`` available slots of
    ``(B, M, C, *S)`` features under a validated ``(B, M)`` mask, computed in fp32; missing slots are never read."""
    m = mask.view(*mask.shape, *([1] * (features.dim() - 2)))
    x = torch.where(m, features.float(), 0.0)
    count = m.sum(dim=1).float()
    mean = x.sum(dim=1) / count
    var = torch.where(m, (x - mean.unsqueeze(1)) ** 2, 0.0).sum(dim=1) / (count - 1).clamp_min(1)
    return torch.cat([mean, var], dim=1).to(features.dtype)


class MeanVarianceFusion(nn.ModuleList):
    """HeMIS's fusion at every level: :func:`mean_variance`, then a MONAI ``1x1`` conv -> norm -> act (``2C -> C``).

    Laid out as the other fusion strategies (entry ``l`` fuses level ``l``; see
    :class:`~lckd_med.networks.model.MissingModalityNet` for the arguments).
    """

    def __init__(self, filters: Sequence[int], num_modalities: int, norm: Any, act: Any, spatial_dims: int = 3) -> None:
        super().__init__(Convolution(spatial_dims, 2 * f, f, kernel_size=1, norm=norm, act=act) for f in filters)

    def forward(self, features: Sequence[torch.Tensor], mask: torch.Tensor, zero_features: Any = None) -> list:
        """Per level ``(B, C_l, *S_l)`` from ``(B, M, C_l, *S_l)`` features; ``zero_features`` is unused."""
        return [fuse(mean_variance(f, mask)) for fuse, f in zip(self, features, strict=True)]


class HeMISNet(MissingModalityNet):
    """Per-modality encoders, :class:`MeanVarianceFusion`, the shared decoder; takes
    :class:`~lckd_med.networks.model.MissingModalityNet`'s arguments (presets apply)."""

    def __init__(self, **shared: Any) -> None:
        super().__init__(MeanVarianceFusion, **shared)


class HeMISMethod(SegmentationMethod):
    """HeMIS: its network trained with modality dropout and the plain segmentation loss."""

    label = "HeMIS"
    network_class = HeMISNet
