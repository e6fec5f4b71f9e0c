"""The shared decoder of every missing-modality network: U-Net up-path, optional full-resolution head, output heads.

Shapes: input one fused ``(B, filters[l], H_l, W_l, D_l)`` map per level, full resolution first (the output of a
fusion strategy); output ``(B, out_channels, H, W, D)`` logits in :data:`~lckd_med.constants.REGIONS` order, or,
with deep supervision, a list of logits, full resolution first, one per decoder level at its own resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.networks.blocks import Convolution
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetUpBlock, get_conv_layer
from torch import nn

from lckd_med.networks.encoder import SPATIAL_DIMS, check_spatial_dims

__all__ = ["UNetDecoder"]


class UNetDecoder(nn.Module):
    """U-Net decoder from fused per-level maps (arguments already validated by the owning network).

    Args:
        filters: channels per level, first level -> bottleneck.
        strides: per-level strides, ``spatial_dims`` ints each (``strides[0] > 1`` = strided stem, then
            ``head_filters`` is set).
        kernel_size: ``spatial_dims`` odd ints for every convolution.
        out_channels: output channels (3 region logits ET, TC, WT).
        norm, act: MONAI layer specs.
        dropout: dropout probability after each convolution.
        head_filters: channels of the full-resolution head of a strided stem (transposed convolution
            ``filters[0] -> head_filters``, kernel = stride = ``strides[0]``, one conv-norm-act, then the output
            convolution); ``None`` without a stem.
        deep_supervision: add one output head per decoder level 1 .. L-2.
        spatial_dims: 3 (volumes, default) or 2 (images).
    """

    def __init__(
        self,
        filters: Sequence[int],
        strides: Sequence[tuple[int, ...]],
        kernel_size: tuple[int, ...],
        out_channels: int,
        norm: str | Sequence,
        act: str | Sequence,
        dropout: float,
        head_filters: int | None,
        deep_supervision: bool,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        dims = check_spatial_dims(spatial_dims)
        self.num_levels = len(filters)
        # up_blocks[l] maps level l+1 to level l, concatenating the fused skip of level l
        self.up_blocks = nn.ModuleList(
            UnetUpBlock(
                dims,
                filters[level + 1],
                filters[level],
                kernel_size=kernel_size,
                stride=1,
                upsample_kernel_size=strides[level + 1],
                norm_name=norm,
                act_name=act,
                dropout=dropout or None,
            )
            for level in range(len(filters) - 1)
        )
        # full-resolution head of a strided stem: upsample to few channels, one conv-norm-act at full resolution
        self.head_up = (
            None
            if head_filters is None
            else nn.Sequential(
                get_conv_layer(
                    dims,
                    filters[0],
                    head_filters,
                    kernel_size=strides[0],
                    stride=strides[0],
                    conv_only=True,
                    is_transposed=True,
                ),
                Convolution(dims, head_filters, head_filters, kernel_size=kernel_size, norm=norm, act=act),
            )
        )
        self.head = UnetOutBlock(dims, head_filters or filters[0], out_channels)
        # deep-supervision heads on decoder levels 1 .. L-2 (level 0 uses `head`)
        self.ds_heads = nn.ModuleList(
            UnetOutBlock(dims, filters[level], out_channels)
            for level in range(1, len(filters) - 1 if deep_supervision else 1)
        )

    def forward(self, fused: Sequence[torch.Tensor], deep: bool = False) -> Any:
        """Logits from the fused maps (one per level); with ``deep`` the deep-supervision list."""
        x = fused[-1]
        outs = []
        for level in range(self.num_levels - 2, -1, -1):
            x = self.up_blocks[level](x, fused[level])
            if deep and 1 <= level <= len(self.ds_heads):
                outs.append(self.ds_heads[level - 1](x))
        if self.head_up is not None:
            x = self.head_up(x)
        logits = self.head(x)
        return [logits, *reversed(outs)] if deep else logits
