"""The LCKD reference encoder: a 3D ResNet-50 with weight-standardised convolutions, a 1x1 reduction and ASPP.

Written from the architecture of the public LCKD code (billhhh/LCKD at 5ba51b5, ``Res50.py`` / ``DualNet.py``),
for one input modality ``(B, 1, H, W, D)`` in the project's axis order (D = axial slices):

* stem: 7^3 convolution with stride ``(2, 2, 1)`` (the reference's ``(1, 2, 2)`` in its ``(D, H, W)`` order),
  instance norm, LeakyReLU 0.01, then a 3^3 max-pool with stride 2;
* ResNet-50 bottleneck stages with 3, 4, 6, 3 blocks and widths 64, 128, 256, 320 (outputs x4: 256, 512, 1024,
  1280), the first stage at stride 1, the others at stride 2, 1x1 convolution + norm shortcuts ("B");
* a 1x1 convolution 1280 -> 256 + norm + act, then ASPP: four branches (1x1, and 3^3 with dilations 2, 4, 8), a
  global-average branch (1x1 convolution, norm, act, broadcast back), concatenated and fused by a 1x1 convolution.

Every convolution of the encoder is weight-standardised (:class:`WSConv3d`), every normalisation an affine instance
norm that also takes single-voxel maps (:class:`~lckd_med.networks.norm.SafeInstanceNorm`: the global branch works
on ``1x1x1`` maps, where the reference code needed a patched torch; the output there is the norm's bias, as in the
patched reference). The stages are MONAI's ``ResNetBottleneck`` blocks, the stem and ASPP branches MONAI
``Convolution`` blocks; MONAI has no weight standardisation, so :func:`weight_standardise` swaps
their ``nn.Conv3d`` for :class:`WSConv3d` in place, keeping parameters and checkpoint keys.

Output of :class:`ResNetASPPEncoder`: five feature maps, full resolution first -- stem ``(B, 64, H/2, W/2, D)``,
stages 1-3 ``(B, 256, H/4, W/4, D/2)``, ``(B, 512, H/8, W/8, D/4)``, ``(B, 1024, H/16, W/16, D/8)`` and the ASPP
output ``(B, 256, H/32, W/32, D/16)`` (the stage-4 map feeds only the ASPP).
"""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.utils import get_norm_layer
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn

from lckd_med.networks.norm import SAFE_INSTANCE_NORM

__all__ = [
    "WSConv3d",
    "weight_standardise",
    "init_reference_weights",
    "conv_norm_act",
    "ASPP",
    "ResNetASPPEncoder",
    "REFERENCE_ACT",
    "REFERENCE_NORM",
    "ENCODER_CHANNELS",
    "STEM_STRIDE",
]

#: LeakyReLU 0.01, as the reference's ``activation_cfg='LeakyReLU'`` (MONAI ``act`` spec).
REFERENCE_ACT: tuple[str, dict] = ("leakyrelu", {"negative_slope": 0.01, "inplace": True})
#: Affine instance norm (``norm_cfg='IN'``), single-voxel safe (MONAI ``norm`` spec).
REFERENCE_NORM: tuple[str, dict] = (SAFE_INSTANCE_NORM, {"affine": True})
#: Channels of the five encoder outputs (stem, stages 1-3, ASPP).
ENCODER_CHANNELS: tuple[int, ...] = (64, 256, 512, 1024, 256)
#: Stride of the stem convolution in ``(H, W, D)``: in-plane only.
STEM_STRIDE: tuple[int, int, int] = (2, 2, 1)
_STAGE_WIDTHS = (64, 128, 256, 320)
_STAGE_BLOCKS = (3, 4, 6, 3)
_ASPP_DILATIONS = (2, 4, 8)
_ASPP_CHANNELS = 256


class WSConv3d(nn.Conv3d):
    """``nn.Conv3d`` whose weight is standardised per output channel before every convolution.

    ``w' = (w - mean(w)) / sqrt(var(w) + 1e-12)``, mean and unbiased variance over each output channel's
    ``in x k^3`` weights (the reference's ``Conv3d_wd``). Gradients flow through the standardisation.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        w = self.weight
        flat = w.flatten(1)
        shape = (-1,) + (1,) * (w.dim() - 1)
        w = (w - flat.mean(dim=1).view(shape)) / torch.sqrt(flat.var(dim=1) + 1e-12).view(shape)
        return self._conv_forward(input, w, self.bias)


def weight_standardise(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv3d`` below ``module`` by a :class:`WSConv3d` holding the same parameters.

    The parameter objects move over unchanged (initialisation and optimiser state are kept) and the module tree,
    hence the ``state_dict`` keys, stays the same. Transposed convolutions are not touched.

    Returns:
        ``module`` (changed in place).
    """
    for child in module.modules():
        if type(child) is nn.Conv3d:
            child.__class__ = WSConv3d  # a subclass without state of its own: only forward changes
    return module


def init_reference_weights(module: nn.Module) -> None:
    """The reference initialisation: Kaiming-normal (``fan_out``) convolution and transposed-convolution weights,
    normalisation weights 1 and biases 0 (use with ``module.apply``)."""
    if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_out")
    elif isinstance(module, nn.InstanceNorm3d) and module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def conv_norm_act(in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1) -> Convolution:
    """Convolution (no bias) -> instance norm -> LeakyReLU, padded to keep the size."""
    return Convolution(
        3,
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        dilation=dilation,
        act=REFERENCE_ACT,
        norm=REFERENCE_NORM,
        bias=False,
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling of the reference: 1x1, three dilated 3^3 branches, a global branch, fused.

    Args:
        channels: input and output channels (256 in the reference).
        dilations: dilations of the 3^3 branches.

    Input ``(B, C, *S)``; output ``(B, C, *S)``.
    """

    def __init__(self, channels: int = _ASPP_CHANNELS, dilations: tuple[int, ...] = _ASPP_DILATIONS) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_norm_act(channels, channels)] + [conv_norm_act(channels, channels, 3, d) for d in dilations]
        )
        self.global_branch = conv_norm_act(channels, channels)  # on the 1x1x1 spatial mean
        self.fuse = conv_norm_act(channels * (len(dilations) + 2), channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.global_branch(x.mean(dim=(2, 3, 4), keepdim=True))
        # trilinear upsampling of a 1x1x1 map (the reference's, align_corners=True) is a broadcast
        branches = [b(x) for b in self.branches] + [pooled.expand(-1, -1, *x.shape[2:])]
        return self.fuse(torch.cat(branches, dim=1))


def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` MONAI bottleneck blocks (1x1, 3^3 with ``stride``, 1x1 x4); the first has a 1x1 conv + norm
    shortcut ("B") when the stride or the width changes."""
    out_planes = planes * ResNetBottleneck.expansion
    downsample = None
    if stride != 1 or in_planes != out_planes:
        downsample = nn.Sequential(
            nn.Conv3d(in_planes, out_planes, 1, stride=stride, bias=False),
            get_norm_layer(REFERENCE_NORM, spatial_dims=3, channels=out_planes),
        )
    layers = [ResNetBottleneck(in_planes, planes, 3, stride, downsample, act=REFERENCE_ACT, norm=REFERENCE_NORM)]
    layers += [
        ResNetBottleneck(out_planes, planes, 3, 1, act=REFERENCE_ACT, norm=REFERENCE_NORM) for _ in range(1, blocks)
    ]
    return nn.Sequential(*layers)


class ResNetASPPEncoder(nn.Module):
    """Stem + ResNet-50 stages + 1x1 reduction + ASPP for one modality (see the module docstring).

    Args:
        in_channels: input channels of the modality (1 for an MRI sequence).

    ``forward(x (B, in_channels, H, W, D))`` returns the five feature maps of :data:`ENCODER_CHANNELS`, full
    resolution first; ``H`` and ``W`` must be multiples of 32, ``D`` of 16.
    """

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        # MONAI's ResNet does not pass its activation (nor, in 1.6, its norm) to the blocks: the stages are built here
        # from MONAI's bottleneck block, which takes both
        self.stem = Convolution(
            3,
            in_channels,
            _STAGE_WIDTHS[0],
            strides=STEM_STRIDE,
            kernel_size=7,
            act=REFERENCE_ACT,
            norm=REFERENCE_NORM,
            bias=False,
        )
        self.pool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        stages, in_planes = [], _STAGE_WIDTHS[0]
        for i, (width, blocks) in enumerate(zip(_STAGE_WIDTHS, _STAGE_BLOCKS, strict=True)):
            stages.append(_stage(in_planes, width, blocks, 1 if i == 0 else 2))
            in_planes = width * ResNetBottleneck.expansion
        self.stages = nn.ModuleList(stages)
        self.reduce = conv_norm_act(in_planes, _ASPP_CHANNELS)
        self.aspp = ASPP()
        weight_standardise(self)
        self.apply(init_reference_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.stem(x)
        s1 = self.stages[0](self.pool(stem))
        s2 = self.stages[1](s1)
        s3 = self.stages[2](s2)
        return [stem, s1, s2, s3, self.aspp(self.reduce(self.stages[3](s3)))]
