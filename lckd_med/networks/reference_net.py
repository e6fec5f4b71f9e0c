"""The LCKD reference network (``network_preset reference``): one shared ResNet-50 + ASPP encoder, mean-filled
bottleneck, the reference decoder.

Written from the architecture of the public LCKD code (billhhh/LCKD at 5ba51b5, ``DualNet.py``):

* every modality ``(B, 1, H, W, D)`` goes through the same :class:`~lckd_med.networks.resnet_aspp.ResNetASPPEncoder`
  (five levels: stem 64, stages 256 / 512 / 1024, ASPP 256 channels);
* missing modality: its bottleneck (ASPP) map is replaced by the mean of the available ones; its skip maps are the
  encoder's output for an all-zero input, as when the reference encodes a zeroed channel (``fill_levels="bottleneck"``,
  default; ``"all"`` mean-fills every level instead);
* the four modalities' maps of each level are concatenated on channels (modality-major), and the decoder runs four
  stages of: 2x transposed convolution (no bias), plus a 1x1 convolution + norm + act of the level's concatenated
  skips (added), then a residual block of two 3^3 convolutions; widths 256, 128, 64, 32; a 1x1 convolution to the 3
  region logits at the stem's resolution ``(H/2, W/2, D)``, then trilinear upsampling x ``(2, 2, 1)``;
* weight-standardised convolutions, affine instance norm and LeakyReLU 0.01 everywhere except the transposed
  convolutions and the logits convolution (plain, as in the reference).

Knowledge distillation uses the ASPP output before the fill (the last level of :meth:`encode`), as the reference's
``shared_ft``. 43,656,672 parameters (backbone 29,029,440; reduction + ASPP 6,098,432; decoder 8,528,800), as the
reference. The network is a :class:`~lckd_med.networks.model.MissingModalityNet` with a shared encoder, so
``encode`` / ``decode`` / ``decode_subsets`` (the encode-once sweep), ``forward``, checkpoints (``hparams`` /
``from_hparams``) and export behave as for the U-Net networks; only LCKD's methods train it (OMD's restoration and
translation modules are defined on the U-Net students).

Shapes and orders: input ``(B, M, H, W, D)`` (:data:`~lckd_med.constants.MODALITIES` order, ``H``, ``W`` multiples
of 32, ``D`` of 16); mask ``(B, M)`` bool; output ``(B, 3, H, W, D)`` logits (ET, TC, WT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.networks.fusion import FILL_LEVELS, MeanFillFusion, mean_fill
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.model import MissingModalityNet, positive_int
from lckd_med.networks.resnet_aspp import (
    ENCODER_CHANNELS,
    REFERENCE_ACT,
    REFERENCE_NORM,
    STEM_STRIDE,
    ResNetASPPEncoder,
    conv_norm_act,
    init_reference_weights,
    weight_standardise,
)

__all__ = [
    "REFERENCE_PRESET",
    "REFERENCE_PARAMETERS",
    "DECODER_WIDTHS",
    "ConcatLevel",
    "ConcatFillFusion",
    "ReferenceDecoder",
    "ReferenceLCKDNet",
    "build_reference_preset",
]

#: The preset name (``network_preset`` in the bundles, ``build_preset(name)``).
REFERENCE_PRESET = "reference"
#: Parameters of the reference network for BraTS (4 modalities, 3 regions), as counted on the reference code.
REFERENCE_PARAMETERS = 43_656_672
#: Decoder widths, bottleneck side first.
DECODER_WIDTHS: tuple[int, ...] = (256, 128, 64, 32)


class ConcatLevel(nn.Module):
    """One level of :class:`ConcatFillFusion`: the ``M`` modality maps concatenated on channels (no parameters).

    ``forward(features (B, M, C, *S), mask (B, M))`` mean-fills the missing modalities then concatenates to
    ``(B, M * C, *S)``; ``fuse(flat (B, M * C, *S))`` is the identity (the concatenation is already done), the
    interface :class:`~lckd_med.networks.fusion.MeanFillFusion` and the export wrapper call for skip levels.
    """

    def forward(self, features: torch.Tensor, mask: torch.Tensor, *, validate: bool = True) -> torch.Tensor:
        return mean_fill(features, mask, validate=validate).flatten(1, 2)

    def fuse(self, flat: torch.Tensor) -> torch.Tensor:
        return flat


class ConcatFillFusion(MeanFillFusion):
    """The reference's fusion: mean-fill (bottleneck, or every level) and concatenate the modalities per level.

    :class:`~lckd_med.networks.fusion.MeanFillFusion`'s rule (its ``forward`` is inherited) with parameter-free
    :class:`ConcatLevel` levels instead of learned 1x1 fusions: the reference leaves the channel reduction to the
    decoder's skip convolutions.

    Args:
        num_levels: number of encoder levels.
        fill_levels: ``"bottleneck"`` (the reference) or ``"all"`` (see :data:`~lckd_med.networks.fusion.FILL_LEVELS`).
    """

    def __init__(self, num_levels: int, fill_levels: str = "bottleneck") -> None:
        if fill_levels not in FILL_LEVELS:
            raise ValueError(f"fill_levels must be one of {list(FILL_LEVELS)}, got {fill_levels!r}")
        # MeanFillFusion.__init__ would build its learned fusions; only the ModuleList of levels is wanted here
        nn.ModuleList.__init__(self, [ConcatLevel() for _ in range(positive_int(num_levels, "num_levels"))])
        self.fill_levels = fill_levels


class ReferenceDecoder(nn.Module):
    """The reference decoder over concatenated per-level maps (see the module docstring).

    Args:
        in_modalities: ``M`` (each level's input has ``M x`` the encoder's channels).
        out_channels: logits (3 regions).
        encoder_channels: channels of one modality's encoder levels, full resolution first.
        widths: decoder widths, bottleneck side first (one per skip level).

    ``forward(fused, deep=False)``: ``fused[l]`` ``(B, M * encoder_channels[l], *S_l)`` -> logits
    ``(B, out_channels, H, W, D)``; ``deep`` is accepted for the network interface and ignored (no deep supervision).
    """

    def __init__(
        self,
        in_modalities: int = NUM_MODALITIES,
        out_channels: int = NUM_REGIONS,
        encoder_channels: Sequence[int] = ENCODER_CHANNELS,
        widths: Sequence[int] = DECODER_WIDTHS,
    ) -> None:
        super().__init__()
        skips = list(encoder_channels[:-1])[::-1]  # deepest skip first
        if len(widths) != len(skips):
            raise ValueError(f"widths needs one entry per skip level ({len(skips)}), got {list(widths)}")
        ins = [in_modalities * encoder_channels[-1], *widths[:-1]]
        self.up = nn.ModuleList(
            nn.ConvTranspose3d(i, w, 2, stride=2, bias=False) for i, w in zip(ins, widths, strict=True)
        )
        self.skip = nn.ModuleList(conv_norm_act(in_modalities * c, w) for c, w in zip(skips, widths, strict=True))
        self.blocks = nn.ModuleList(
            ResNetBlock(w, w, spatial_dims=3, act=REFERENCE_ACT, norm=REFERENCE_NORM) for w in widths
        )
        self.head = nn.Conv3d(widths[-1], out_channels, 1, bias=False)  # plain, as the reference's cls_conv
        weight_standardise(self.skip)
        weight_standardise(self.blocks)
        self.apply(init_reference_weights)

    def forward(self, fused: Sequence[torch.Tensor], deep: bool = False) -> torch.Tensor:
        x = fused[-1]
        for up, skip, block, level in zip(self.up, self.skip, self.blocks, reversed(fused[:-1]), strict=True):
            x = block(up(x) + skip(level))
        return F.interpolate(self.head(x), scale_factor=STEM_STRIDE, mode="trilinear", align_corners=False)


class ReferenceLCKDNet(MissingModalityNet):
    """The LCKD reference network (see the module docstring) behind the :class:`MissingModalityNet` interface.

    Args:
        in_modalities: ``M`` (4 for BraTS); the shared encoder sees each modality alone.
        out_channels: region logits (3).
        in_channels: channels of each modality, all equal (the encoder is shared); ``None`` = one each.
        spatial_dims: 3 only (the reference network is 3-D).
        fill_levels: ``"bottleneck"`` (the reference) or ``"all"``.

    Raises:
        ValueError: any invalid argument, with the reason.
    """

    LEGACY_HPARAMS: ClassVar[dict[str, Any]] = {}
    #: Relative stride of each encoder level: the stem, then the max-pool and stages 2-4 halve every axis.
    LEVEL_STRIDES: tuple[tuple[int, ...], ...] = (STEM_STRIDE,) + ((2, 2, 2),) * (len(ENCODER_CHANNELS) - 1)

    def __init__(
        self,
        *,
        in_modalities: int = NUM_MODALITIES,
        out_channels: int = NUM_REGIONS,
        in_channels: Sequence[int] | None = None,
        spatial_dims: int = 3,
        fill_levels: str = "bottleneck",
    ) -> None:
        # MissingModalityNet.__init__ builds U-Net parts; its encode / fusion / sweep / forward machinery only needs
        # the attributes set here (a shared encoder returning one map per level, a fusion, a decoder)
        nn.Module.__init__(self)
        self.in_modalities = positive_int(in_modalities, "in_modalities")
        self.in_channels = self._check_in_channels(in_channels, self.in_modalities)
        if len(set(self.in_channels)) > 1:
            raise ValueError(f"the shared encoder needs the same channels for every modality, got {in_channels}")
        if isinstance(spatial_dims, bool) or spatial_dims != 3:
            raise ValueError(f"the reference network is 3-D only (spatial_dims=3), got {spatial_dims!r}")
        if fill_levels not in FILL_LEVELS:
            raise ValueError(f"fill_levels must be one of {list(FILL_LEVELS)}, got {fill_levels!r}")
        self.spatial_dims = 3
        self.out_channels = positive_int(out_channels, "out_channels")
        self.fill_levels = fill_levels
        self.filters = ENCODER_CHANNELS
        self.strides = self.LEVEL_STRIDES
        self.share_encoder = True
        self.deep_supervision = False
        self._zero_cache = None
        self.encoders = nn.ModuleList([ResNetASPPEncoder(self.in_channels[0])])
        self.fusions = ConcatFillFusion(len(ENCODER_CHANNELS), fill_levels)
        self.decoder = ReferenceDecoder(self.in_modalities, self.out_channels)

    @property
    def hparams(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable."""
        return {
            "in_modalities": self.in_modalities,
            "out_channels": self.out_channels,
            "in_channels": list(self.in_channels),
            "spatial_dims": self.spatial_dims,
            "fill_levels": self.fill_levels,
        }

    @classmethod
    def hparam_names(cls) -> set[str]:
        return {"in_modalities", "out_channels", "in_channels", "spatial_dims", "fill_levels"}


#: Overrides the bundles pass to every preset that mean "the preset's own value" when they hold these values.
_NEUTRAL = {"share_encoder": True, "filters": None}


def build_reference_preset(network: type[nn.Module] = LCKDNet, **overrides: Any) -> ReferenceLCKDNet:
    """``network_preset reference``: the reference network in place of ``network``, the class the method trains
    (:class:`~lckd_med.networks.lckd_net.LCKDNet`: LCKD and its baselines, whose methods list
    :class:`ReferenceLCKDNet` among their ``other_networks``).

    Overrides set to ``None`` are ignored (bundle configs pass ``null`` for "the preset's value"), as is
    ``share_encoder=True`` (the encoder is shared by construction); the others must be :class:`ReferenceLCKDNet`
    arguments.

    Raises:
        ValueError: ``network`` other than LCKDNet (or ReferenceLCKDNet), ``share_encoder=False``, ``filters`` or an
            unknown argument.
    """
    if network not in (LCKDNet, ReferenceLCKDNet):
        name = getattr(network, "__name__", repr(network))
        raise ValueError(
            f"network_preset {REFERENCE_PRESET!r} is the LCKD reference network and stands in for LCKDNet only (LCKD "
            f"and its baselines); a method training {name} needs a U-Net preset (its modules are defined on "
            "per-modality U-Net features)"
        )
    given = {k: v for k, v in overrides.items() if v is not None and not (k in _NEUTRAL and v == _NEUTRAL[k])}
    if "share_encoder" in given:
        raise ValueError("network_preset 'reference' shares one encoder by construction; set share_encoder null/true")
    unknown = sorted(set(given) - ReferenceLCKDNet.hparam_names())
    if unknown:
        raise ValueError(
            f"unknown ReferenceLCKDNet arguments {unknown} (the reference architecture is fixed); allowed: "
            f"{sorted(ReferenceLCKDNet.hparam_names())}"
        )
    return ReferenceLCKDNet(**given)
