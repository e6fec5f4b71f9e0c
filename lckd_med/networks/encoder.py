"""3D U-Net encoder (one "student" per MRI sequence in LCKD) built from MONAI ``UnetBasicBlock`` levels.

Also holds the argument checks shared with :mod:`lckd_med.networks.lckd_net` (filters, strides, kernel size,
MONAI layer specs), so both report bad arguments the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from torch import nn

from lckd_med.networks.norm import DEFAULT_NORM

__all__ = ["UNetEncoder", "DEFAULT_FILTERS", "DEFAULT_ACT", "SPATIAL_DIMS", "default_strides", "check_spatial_dims"]

#: Spatial dimensions of the networks unless a modality spec says otherwise (BraTS volumes).
SPATIAL_DIMS = 3
#: Channels per level, full resolution -> bottleneck (nnU-Net's 3D progression).
DEFAULT_FILTERS: tuple[int, ...] = (32, 64, 128, 256, 320)
#: Activation used unless told otherwise (MONAI ``act`` spec; MONAI's ``UnetBasicBlock`` default).
DEFAULT_ACT: tuple[str, dict] = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})

Stride3 = tuple[int, ...]


def check_spatial_dims(spatial_dims: int) -> int:
    """Validated number of spatial dimensions (2 or 3)."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def default_strides(num_levels: int, spatial_dims: int = SPATIAL_DIMS) -> tuple[Stride3, ...]:
    """Strides of a ``num_levels`` U-Net: full resolution first, then halving every level."""
    return ((1,) * spatial_dims,) + ((2,) * spatial_dims,) * (num_levels - 1)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_filters(filters: Sequence[int]) -> tuple[int, ...]:
    """Validated channel counts per level (a non-empty sequence of positive ints)."""
    if isinstance(filters, (str, bytes)) or not isinstance(filters, Sequence) or len(filters) == 0:
        raise ValueError(f"filters must be a non-empty sequence of positive ints, got {filters!r}")
    if not all(_is_int(f) and f > 0 for f in filters):
        raise ValueError(f"filters must all be positive ints, got {list(filters)}")
    return tuple(int(f) for f in filters)


def check_strides(
    strides: Sequence[int | Sequence[int]] | None, num_levels: int, spatial_dims: int = SPATIAL_DIMS
) -> tuple[Stride3, ...]:
    """Validated per-level strides as ``spatial_dims``-tuples; ``None`` gives :func:`default_strides`.

    Each entry is an int (isotropic) or a sequence of ``spatial_dims`` positive ints; the first entry is the stride
    of the full-resolution level (usually 1).
    """
    if strides is None:
        return default_strides(num_levels, spatial_dims)
    if isinstance(strides, (str, bytes)) or not isinstance(strides, Sequence):
        raise ValueError(f"strides must be a sequence with one entry per level, got {strides!r}")
    if len(strides) != num_levels:
        raise ValueError(f"strides has {len(strides)} entries but filters has {num_levels}; give one per level")
    out = []
    for level, s in enumerate(strides):
        s3 = (s,) * spatial_dims if _is_int(s) else tuple(s) if isinstance(s, Sequence) else None
        if s3 is None or len(s3) != spatial_dims or not all(_is_int(v) and v > 0 for v in s3):
            raise ValueError(f"strides[{level}] must be a positive int or {spatial_dims} positive ints, got {s!r}")
        out.append(tuple(int(v) for v in s3))
    return tuple(out)


def check_kernel_size(kernel_size: int | Sequence[int], spatial_dims: int = SPATIAL_DIMS) -> tuple[int, ...]:
    """Validated convolution kernel size as ``spatial_dims`` odd positive ints (odd keeps 'same' padding exact)."""
    k3 = (
        (kernel_size,) * spatial_dims
        if _is_int(kernel_size)
        else tuple(kernel_size)
        if isinstance(kernel_size, Sequence) and not isinstance(kernel_size, (str, bytes))
        else None
    )
    if k3 is None or len(k3) != spatial_dims or not all(_is_int(v) and v > 0 and v % 2 == 1 for v in k3):
        raise ValueError(f"kernel_size must be an odd positive int or {spatial_dims} of them, got {kernel_size!r}")
    return tuple(int(v) for v in k3)


def check_layer_spec(spec: str | Sequence, what: str) -> str | tuple[str, dict]:
    """Validated MONAI layer spec: a name or ``(name, kwargs)``; lists (from JSON) become tuples.

    Callables are refused on purpose: specs end up in :attr:`LCKDNet.hparams`, which must stay JSON-serialisable.
    """
    if isinstance(spec, str) and spec:
        return spec
    if (
        isinstance(spec, Sequence)
        and not isinstance(spec, (str, bytes))
        and len(spec) == 2
        and isinstance(spec[0], str)
        and spec[0]
        and isinstance(spec[1], dict)
    ):
        return (spec[0], dict(spec[1]))
    raise TypeError(f"{what} must be a MONAI layer name or a (name, kwargs-dict) pair, got {spec!r}")


def check_dropout(dropout: float) -> float:
    """Validated dropout probability in ``[0, 1)``."""
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")
    return float(dropout)


def check_kernel_stride(kernel: tuple[int, ...], strides: Sequence[Stride3]) -> None:
    """MONAI's padding rule needs ``kernel >= stride - 1`` per dimension for outputs of exactly ``size / stride``."""
    for level, s in enumerate(strides):
        if any(k < v - 1 for k, v in zip(kernel, s, strict=True)):
            raise ValueError(f"strides[{level}]={s} too large for kernel_size={kernel} (need kernel >= stride - 1)")


class UNetEncoder(nn.Module):
    """Contracting path of a 3D (or 2D) U-Net: one MONAI ``UnetBasicBlock`` (two conv-norm-act) per level.

    The first convolution of level ``l`` has stride ``strides[l]`` (nnU-Net style strided downsampling).

    Args:
        in_channels: input channels (1 for one MRI sequence, 3 for an RGB image).
        filters: output channels per level, full resolution -> bottleneck.
        strides: per-level stride, int or ``spatial_dims`` ints; ``None`` -> ``(1, 2, 2, ...)``.
        kernel_size: odd int or ``spatial_dims`` odd ints, the same at every level.
        norm: MONAI normalisation spec (default :class:`~lckd_med.networks.norm.SafeInstanceNorm`, affine).
        act: MONAI activation spec (default LeakyReLU 0.01).
        dropout: dropout probability after each convolution (0 disables).
        spatial_dims: 3 (volumes, the default) or 2 (images).

    Raises:
        ValueError: bad ``in_channels``, ``filters``, ``strides``, ``kernel_size``, ``dropout`` or ``spatial_dims``.
        TypeError: ``norm`` / ``act`` not a name or ``(name, kwargs)`` pair.
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: Sequence[int] = DEFAULT_FILTERS,
        strides: Sequence[int | Sequence[int]] | None = None,
        kernel_size: int | Sequence[int] = 3,
        norm: str | tuple = DEFAULT_NORM,
        act: str | tuple = DEFAULT_ACT,
        dropout: float = 0.0,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        if not _is_int(in_channels) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        self.in_channels = int(in_channels)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        self.filters = check_filters(filters)
        self.strides = check_strides(strides, len(self.filters), self.spatial_dims)
        self.kernel_size = check_kernel_size(kernel_size, self.spatial_dims)
        check_kernel_stride(self.kernel_size, self.strides)
        norm = check_layer_spec(norm, "norm")
        act = check_layer_spec(act, "act")
        dropout = check_dropout(dropout)
        channels = (self.in_channels, *self.filters)
        self.levels = nn.ModuleList(
            UnetBasicBlock(
                self.spatial_dims,
                channels[i],
                channels[i + 1],
                kernel_size=self.kernel_size,
                stride=self.strides[i],
                norm_name=norm,
                act_name=act,
                dropout=dropout or None,
            )
            for i in range(len(self.filters))
        )

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """Per-dimension product of the strides: spatial sizes must be multiples of it."""
        return tuple(math.prod(s[d] for s in self.strides) for d in range(self.spatial_dims))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode ``x`` of shape ``(B, in_channels, H, W, D)`` (``(B, in_channels, H, W)`` in 2-D).

        Returns:
            One feature map per level, full resolution first: ``(B, filters[l], H / s_l, W / s_l, D / s_l)`` with
            ``s_l`` the cumulative stride of level ``l``.
        """
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats
