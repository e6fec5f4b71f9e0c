"""Missing-modality feature filling and fusion (LCKD's "mean of the available features" rule).

Features of all modalities are stacked on dim 1: ``(B, M, C, H, W, D)`` with ``M`` in
:data:`~lckd_med.constants.MODALITIES` order; availability masks are ``(B, M)`` booleans in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.networks.blocks import Convolution
from torch import nn

from lckd_med.constants import NUM_MODALITIES
from lckd_med.networks.encoder import DEFAULT_ACT, SPATIAL_DIMS, check_layer_spec, check_spatial_dims
from lckd_med.networks.norm import DEFAULT_NORM

__all__ = ["mean_fill", "check_mask", "ModalityFusion", "MeanFillFusion", "FILL_LEVELS"]

#: Values of the networks' ``fill_levels`` option, default first. ``"bottleneck"``: only the bottleneck feature of
#: a missing modality is replaced by the mean of the available ones, skip connections carry the encoding of a zero
#: input (the LCKD reference code). ``"all"``: every level is mean-filled, so a missing input never influences
#: the output (cleaner; today's lckd_med behaviour before the option existed).
FILL_LEVELS: tuple[str, ...] = ("bottleneck", "all")


def check_mask(mask: torch.Tensor, batch: int, num_modalities: int, *, require_any: bool = True) -> torch.Tensor:
    """Validated availability mask of shape ``(batch, num_modalities)``.

    A ``(num_modalities,)`` or ``(1, num_modalities)`` mask is broadcast to every sample.

    Args:
        mask: boolean tensor, ``True`` where the modality is available.
        batch: expected batch size.
        num_modalities: expected number of modalities.
        require_any: raise when a sample has no available modality.

    Raises:
        TypeError: ``mask`` is not a boolean tensor.
        ValueError: wrong shape, or (``require_any``) a sample without any available modality.
    """
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        kind = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"availability mask must be a torch.bool tensor (use mask.bool()), got {kind}")
    if mask.dim() == 1:
        mask = mask.unsqueeze(0)
    if mask.dim() != 2 or mask.shape[1] != num_modalities or mask.shape[0] not in (1, batch):
        raise ValueError(
            f"availability mask must have shape ({batch}, {num_modalities}) (or ({num_modalities},)), "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.expand(batch, num_modalities)
    if require_any and not bool(mask.any(dim=1).all()):
        empty = torch.nonzero(~mask.any(dim=1)).flatten().tolist()
        raise ValueError(f"samples {empty} have no available modality; at least one is needed")
    return mask


def mean_fill(features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
    """Replace each missing modality's feature by the mean of the available modalities' features, per sample.

    Available features pass through unchanged (same values, same gradient path). The missing entries are
    *replaced*, never combined with their old values, so whatever the encoder produced for a missing input
    (even non-finite values) cannot leak into the output.

    Args:
        features: ``(B, M, C, *S)`` features, modality on dim 1.
        mask: ``(B, M)`` bool, ``True`` where available (``(M,)`` broadcasts to every sample).
        validate: check ``mask``; callers that already did may skip the device sync.

    Returns:
        ``(B, M, C, *S)`` tensor.

    Raises:
        ValueError: ``features`` has fewer than 3 dims, ``mask`` has the wrong shape, or a sample has no
            available modality.
        TypeError: ``mask`` is not boolean.
    """
    if features.dim() < 3:
        raise ValueError(f"features must be (B, M, C, *spatial), got shape {tuple(features.shape)}")
    batch, num_mod = features.shape[:2]
    if validate:
        mask = check_mask(mask, batch, num_mod)
    else:
        mask = mask.reshape(-1, num_mod).expand(batch, num_mod)
    mask = mask.to(features.device)
    m = mask.view(batch, num_mod, *([1] * (features.dim() - 2)))
    count = mask.sum(dim=1).to(features.dtype).view(batch, 1, *([1] * (features.dim() - 2)))
    mean = torch.where(m, features, torch.zeros((), dtype=features.dtype, device=features.device)).sum(
        dim=1, keepdim=True
    ) / count.clamp_min(1)
    return torch.where(m, features, mean)


class ModalityFusion(nn.Module):
    """Mean-fill the missing modalities, then fuse the ``M`` feature maps into one.

    Fusion = concatenate the ``M`` filled maps on channels (modality slots keep their order, so the weights are
    modality-specific) and apply a MONAI ``Convolution`` ``1x1x1`` conv -> norm -> act to ``C`` channels.

    Args:
        channels: channels ``C`` of each modality's feature map (and of the output).
        num_modalities: ``M``.
        norm: MONAI normalisation spec.
        act: MONAI activation spec.
        spatial_dims: 3 (volumes, default) or 2 (images).

    Raises:
        ValueError: ``channels`` or ``num_modalities`` not a positive int, ``spatial_dims`` not 2 or 3.
        TypeError: bad ``norm`` / ``act`` spec.
    """

    def __init__(
        self,
        channels: int,
        num_modalities: int = NUM_MODALITIES,
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple = DEFAULT_ACT,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        for name, value in (("channels", channels), ("num_modalities", num_modalities)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.channels = channels
        self.num_modalities = num_modalities
        self.fuse = Convolution(
            self.spatial_dims,
            num_modalities * channels,
            channels,
            kernel_size=1,
            norm=check_layer_spec(norm, "norm"),
            act=check_layer_spec(act, "act"),
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        """Fuse ``(B, M, C, H, W, D)`` features under a ``(B, M)`` bool mask into ``(B, C, H, W, D)``."""
        if features.dim() != 3 + self.spatial_dims or features.shape[1:3] != (self.num_modalities, self.channels):
            raise ValueError(
                f"features must be (B, {self.num_modalities}, {self.channels}, H, W, D), got {tuple(features.shape)}"
            )
        filled = mean_fill(features, mask, validate=validate)
        return self.fuse(filled.flatten(1, 2))


class MeanFillFusion(nn.ModuleList):
    """LCKD's fusion strategy: one :class:`ModalityFusion` per level under the ``fill_levels`` rule.

    A ``ModuleList`` (entry ``l`` fuses level ``l``) so the checkpoint keys stay ``fusions.<l>.*``.

    Args:
        filters: channels per level, first level -> bottleneck.
        num_modalities: ``M``.
        norm, act: MONAI layer specs.
        fill_levels: ``"bottleneck"`` (the reference code: only the bottleneck feature of a missing modality is
            replaced by the mean of the available ones, its skips carry the zero-input encoding) or ``"all"``
            (mean-fill at every level). See :data:`FILL_LEVELS`.
        spatial_dims: 3 (volumes, default) or 2 (images).

    Raises:
        ValueError: unknown ``fill_levels``.
    """

    def __init__(
        self,
        filters: Sequence[int],
        num_modalities: int = NUM_MODALITIES,
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple = DEFAULT_ACT,
        fill_levels: str = "bottleneck",
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        if fill_levels not in FILL_LEVELS:
            raise ValueError(f"fill_levels must be one of {list(FILL_LEVELS)}, got {fill_levels!r}")
        super().__init__(ModalityFusion(f, num_modalities, norm, act, spatial_dims) for f in filters)
        self.fill_levels = fill_levels

    def forward(
        self,
        features: Sequence[torch.Tensor],
        mask: torch.Tensor,
        zero_features: Callable[[torch.Tensor], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Fused ``(B, C_l, *S_l)`` map per level (``mask`` ``(B, M)`` already validated).

        Args:
            features: per level ``(B, M, C_l, *S_l)`` encoder features.
            mask: ``(B, M)`` bool availability.
            zero_features: ``needed (M,) bool -> `` per level ``(1, M, C_l, *S_l)`` encodings of an all-zero input
                (the owning network's :meth:`zero_features` at this window size).
        """
        if self.fill_levels == "all" or bool(mask.all()):
            return [fusion(f, mask, validate=False) for fusion, f in zip(self, features, strict=True)]
        batch, num_mod = mask.shape
        zero = zero_features((~mask).any(dim=0))
        m = mask.view(batch, num_mod, *([1] * (features[0].dim() - 2)))
        last = len(self) - 1
        fused = []
        for level, (fusion, f) in enumerate(zip(self, features, strict=True)):
            if level == last:
                fused.append(fusion(f, mask, validate=False))  # bottleneck: mean of the available modalities
            else:  # skip: the zero-input encoding of each missing modality; nothing left to fill
                fused.append(fusion.fuse(torch.where(m, f, zero[level].to(f.dtype)).flatten(1, 2)))
        return fused
