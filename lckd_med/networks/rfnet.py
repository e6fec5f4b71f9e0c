"""RFNet, the region-aware fusion network (Ding, Yu & Yang, ICCV 2021), written here from its architecture.

The published code (github.com/dyh127/RFNet at ``1e475fa``) gives the facts; this module is this project's own
code on MONAI blocks. The parts, for ``L`` levels (published: 4, channels 16, 32, 64, 128):

* **Encoders**, one per modality (:class:`RFNetEncoder`): per level a conv block (stride 2 from the second level
  on) followed by a residual pair of conv blocks. Every conv block is convolution (reflection padding) ->
  instance norm (no affine) -> LeakyReLU(0.2).
* **Region maps** (:class:`RegionMapHead`), one per level: from the concatenated available features (and, below
  the bottleneck, the decoder's upsampled state) a soft segmentation over the ``R = out_channels`` classes, the
  "progressive region-aware maps" (softmax probabilities). The bottleneck's comes first; the fusion uses it
  detached.
* **Region-aware fusion** (:class:`RegionAwareFusion`), one per level: each modality's features are split into
  ``R`` regions by the maps; per region a small MLP on the region-averaged features of all modalities gives one
  sigmoid weight per modality; the weighted sums of the regions go through conv blocks and are concatenated with a
  shortcut of all modalities' features. Missing modalities enter as zeros.
* **Shared decoder** (:class:`RFNetDecoder`): per level upsampling (trilinear, ``align_corners=True``), a conv block,
  concatenation with the fused features, two conv blocks; a 1x1 head gives the class logits.
* **Separate decoder** (training only, the regulariser): one decoder with the same layout, shared by all
  modalities, segments every modality from its own features alone.

Shapes and orders (this project's conventions): input ``x`` ``(B, M, *S)`` with channel ``i`` =
:data:`~lckd_med.constants.MODALITIES` ``[i]`` (FLAIR, T1, T1ce, T2 for BraTS; the published order differs, the
importer :mod:`lckd_med.networks.rfnet_import` permutes the weights); availability mask ``(B, M)`` bool in the same
order (``(M,)`` broadcasts). Output: **logits** ``(B, R, *S)`` over the published classes (BraTS2018/2020: 0
background, 1 NCR/NET, 2 ED, 3 ET = label 4); the published model returns softmax probabilities instead, so
``softmax(logits, dim=1)`` equals its output. Features: one ``(B, M, C_l, *S_l)`` tensor per level, full
resolution first. ``*S`` is ``(H, W, D)`` (or ``(H, W)`` with ``spatial_dims=2``), each a multiple of
:attr:`RFNet.size_divisor` and at least twice it (reflection padding needs two voxels at the bottleneck).

Missing modalities: the published model encodes every input channel and zeroes the missing modalities' features
where the fusion and the region maps read them, so what a missing channel holds never matters; here missing
channels are not encoded at all, which gives the same result (``forward(x, mask) == decode(encode(x_full), mask)``,
the encode-once subset sweep is exact).

:data:`PUBLISHED_RECIPE` lists what the published training and inference did (with file:line citations), for the
importer to record and for inference to apply.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv
from torch import nn

from lckd_med.constants import NUM_MODALITIES
from lckd_med.networks.encoder import SPATIAL_DIMS, check_filters, check_spatial_dims
from lckd_med.networks.fusion import check_mask
from lckd_med.networks.model import MissingModalityNet, positive_int

__all__ = [
    "RFNet",
    "RFNetOutput",
    "RFNetEncoder",
    "RFNetDecoder",
    "RegionMapHead",
    "RegionAwareFusion",
    "RFNET_FILTERS",
    "PUBLISHED_RECIPE",
    "recipe_to_json",
]

#: Channels per level of the published network (``basic_dims = 16`` doubled per level, models.py:9-28).
RFNET_FILTERS: tuple[int, ...] = (16, 32, 64, 128)
#: LeakyReLU slope of every conv block (layers.py:18, ``relufactor=0.2``).
NEGATIVE_SLOPE = 0.2
#: Added to the mean of a region map before dividing by it (layers.py:95).
REGION_EPS = 1e-7


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def recipe_to_json(value: Any) -> Any:
    """A (frozen) recipe as plain dicts and lists, JSON-serialisable (e.g. ``recipe_to_json(PUBLISHED_RECIPE)``)."""
    if isinstance(value, Mapping):
        return {k: recipe_to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recipe_to_json(v) for v in value]
    return value


#: What the published RFNet training and inference assume (read in dyh127/RFNet at 1e475fa; file:line there).
#: Orders and labels are the published ones: channel order ``modalities``, class ``i`` = BraTS label
#: ``class_labels[i]``.
PUBLISHED_RECIPE: Mapping[str, Any] = _freeze(
    {
        "source": {
            "repository": "https://github.com/dyh127/RFNet",
            "commit": "1e475fa5de4ac3f41f8de3d3102bb8b28383c2c4",
        },
        "modalities": ["flair", "t1ce", "t1", "t2"],  # preprocess.py:64, models.py:166-169, datasets_nii.py:24-26
        "classes": ["background", "NCR/NET", "ED", "ET"],  # layers.py:133; 5 classes for BraTS2015 (train.py:77-83)
        "class_labels": [0, 1, 2, 4],  # label 4 stored as class 3 (preprocess.py:73)
        "output": "softmax probabilities (models.py:142-143); label map = argmax over classes (predict.py:190)",
        "preprocessing": {
            "crop": (
                "bounding box of the voxels where the maximum over the four sequences is non-zero, each axis then "
                "widened symmetrically to at least 128 voxels; the box end is used as an exclusive slice end, so "
                "the last non-zero slice of an axis that was not widened is dropped (preprocess.py:10-37,65-66)"
            ),
            "normalisation": (
                "per sequence z-score with mean and std (numpy, ddof 0) over the brain mask (sum of the four "
                "sequences > 0, computed on the crop), applied to every voxel of the crop: background becomes "
                "-mean/std (preprocess.py:39-47,66)"
            ),
            "resampling": "none (BraTS is 1 mm isotropic)",
        },
        "inference": {
            "window": [80, 80, 80],  # predict.py:131,155-168
            "stride": [40, 40, 40],  # overlap 0.5: starts 0, 40, ... and n - 80 last (predict.py:155-168)
            "aggregation": "mean of the windows' softmax probabilities (uniform weights) (predict.py:171-187)",
            "missing_modalities": (
                "the input keeps all four sequences; the boolean mask (published order) zeroes the missing "
                "modalities' features inside the region maps and the fusion (layers.py:51-52,75-76,138-139); "
                "the input is never zeroed (predict.py:147-152,184-185)"
            ),
            "grid": "the cropped volume; scored against the cropped label, never uncropped (predict.py:143-195)",
            "postprocessing": (
                "none on the label map; a second ET score ('enhancing_postpro') counts a predicted ET of fewer "
                "than 500 voxels as empty (predict.py:38-46)"
            ),
            "checkpoint": "the last epoch (README 'Note' 1)",
        },
        "training": {
            "optimizer": "Adam, amsgrad=True, betas (0.9, 0.999), eps 1e-8, weight_decay 1e-4 as L2 (train.py:89-91)",
            "lr": 2e-4,  # job.sh (train.py:34 default 1e-4)
            "lr_schedule": "poly per epoch: round(lr * (1 - epoch / epochs) ** 0.9, 8) (lr_scheduler.py:12-16)",
            "epochs": 300,  # job.sh, train.py:36
            "iterations_per_epoch": 150,  # job.sh, train.py:37 (45,000 iterations)
            "batch_size": 2,  # job.sh, on two GPUs with DataParallel (train.py:86)
            "seed": 1024,  # train.py:39,68-72
            "crop": [80, 80, 80],  # RandCrop3D (train.py:45)
            "augmentation": (
                "in order: random 80^3 crop; rotation by an integer angle in [-10, 9] degrees in one of the three "
                "axis planes, nearest neighbour, image corners filled with -1 (uint8 labels: 0 with scipy 1.x here); intensity x * s + t with "
                "s ~ U(0.9, 1.1), t ~ U(-0.1, 0.1) drawn per sequence and per index of the first spatial axis; "
                "flip of each axis with probability 0.5 (train.py:45; transforms.py:85-116,231-246,132-154)"
            ),
            "mask_sampling": "one of the 15 subsets, uniformly, per sample (datasets_nii.py:24-26,78-79)",
            "target": "one-hot over the classes (datasets_nii.py:67-71)",
            "loss": (
                "fused + sum over the 4 separate decoders + sum over the 4 region maps (upsampled to full "
                "resolution), each softmax_weighted_loss + dice_loss on probabilities (train.py:165-182); the fused "
                "term is multiplied by 0 before region_fusion_start_epoch (train.py:184-187)"
            ),
            "region_fusion_start_epoch": 20,  # job.sh (train.py:38 default 100)
            "separate_decoders": "run on every modality whatever the mask (models.py:178-183)",
        },
    }
)


def _conv_block(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1
) -> Convolution:
    """Convolution (bias, reflection padding) -> instance norm (no affine) -> LeakyReLU(0.2), the published
    ``general_conv3d`` (layers.py:17-33).

    MONAI's ``Convolution`` takes no padding mode, so the reflection is set on the built convolution (PyTorch reads
    ``padding_mode`` at call time; a 1x1 convolution has no padding).
    """
    block = Convolution(
        spatial_dims,
        in_channels,
        out_channels,
        strides=stride,
        kernel_size=kernel_size,
        adn_ordering="NA",
        act=("leakyrelu", {"negative_slope": NEGATIVE_SLOPE}),
        norm=("instance", {"affine": False}),
        bias=True,
    )
    block.conv.padding_mode = "reflect"
    return block


def _head(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Module:
    """A bare 1x1 convolution with bias (the class logits)."""
    return Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size=1)


class RFNetEncoder(nn.Module):
    """One modality's encoder: per level a conv block (stride 2 from level 1 on) plus a residual pair.

    ``forward``: ``(B, in_channels, *S)`` -> one ``(B, filters[l], *S / 2**l)`` tensor per level, full resolution
    first.
    """

    def __init__(self, in_channels: int, filters: Sequence[int], spatial_dims: int = SPATIAL_DIMS) -> None:
        super().__init__()
        self.in_channels = in_channels
        stages = []
        for level, channels in enumerate(filters):
            stage = nn.Module()
            prev = in_channels if level == 0 else filters[level - 1]
            stage.down = _conv_block(spatial_dims, prev, channels, stride=1 if level == 0 else 2)
            stage.res = nn.Sequential(
                _conv_block(spatial_dims, channels, channels), _conv_block(spatial_dims, channels, channels)
            )
            stages.append(stage)
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage.down(x)
            x = x + stage.res(x)
            out.append(x)
        return out


class RFNetDecoder(nn.Module):
    """U-Net decoder of RFNet: per level ``l < L - 1`` the stage ``stages[l]`` holds ``up`` (3x3 block after
    upsampling, ``filters[l + 1] -> filters[l]``), ``merge`` (3x3 block on the concatenation, ``2 filters[l] ->
    filters[l]``) and ``out`` (1x1 block); ``head`` is the 1x1 class convolution.

    Used twice: as the shared decoder after the fusion (driven level by level by :class:`RFNet`) and, through
    :meth:`forward`, as the separate decoder of single modalities.
    """

    def __init__(self, filters: Sequence[int], out_channels: int, spatial_dims: int = SPATIAL_DIMS) -> None:
        super().__init__()
        stages = []
        for level in range(len(filters) - 1):
            stage = nn.Module()
            stage.up = _conv_block(spatial_dims, filters[level + 1], filters[level])
            stage.merge = _conv_block(spatial_dims, 2 * filters[level], filters[level])
            stage.out = _conv_block(spatial_dims, filters[level], filters[level], kernel_size=1)
            stages.append(stage)
        self.stages = nn.ModuleList(stages)
        self.upsample = UpSample(
            spatial_dims, scale_factor=2, mode="nontrainable", interp_mode="linear", align_corners=True
        )
        self.head = _head(spatial_dims, filters[0], out_channels)

    def up(self, level: int, x: torch.Tensor) -> torch.Tensor:
        """Level ``level + 1`` features -> level ``level`` (upsample, conv block)."""
        return self.stages[level].up(self.upsample(x))

    def merge(self, level: int, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The two ``filters[level]``-channel maps concatenated (in this order) -> ``filters[level]`` channels."""
        stage = self.stages[level]
        return stage.out(stage.merge(torch.cat((first, second), dim=1)))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Plain U-Net decoding of one modality: features ``(B, filters[l], *S_l)`` per level -> logits
        ``(B, out_channels, *S)``. The upsampled state comes first in each concatenation (models.py:70-78)."""
        x = features[-1]
        for level in reversed(range(len(self.stages))):
            x = self.merge(level, self.up(level, x), features[level])
        return self.head(x)


class RegionMapHead(nn.Module):
    """Region map of one level: softmax-able logits ``(B, R, *S_l)`` over the classes.

    ``embed`` (1x1, 3x3, 1x1 blocks: ``M C -> C/4 -> C/4 -> C``) reads the available features concatenated
    modality-major ``(B, M C, *S_l)``; below the bottleneck ``classify`` (1x1 block to ``hidden`` channels, 1x1
    convolution to ``R``) reads the decoder's state concatenated before the embedding (layers.py:35-80).
    """

    def __init__(
        self,
        channels: int,
        num_modalities: int,
        num_classes: int,
        hidden: int,
        *,
        with_decoder: bool,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        quarter = channels // 4
        self.with_decoder = with_decoder
        self.embed = nn.Sequential(
            _conv_block(spatial_dims, num_modalities * channels, quarter, kernel_size=1),
            _conv_block(spatial_dims, quarter, quarter),
            _conv_block(spatial_dims, quarter, channels, kernel_size=1),
        )
        self.classify = nn.Sequential(
            _conv_block(spatial_dims, (2 if with_decoder else 1) * channels, hidden, kernel_size=1),
            _head(spatial_dims, hidden, num_classes),
        )

    def forward(self, available: torch.Tensor, decoded: torch.Tensor | None = None) -> torch.Tensor:
        """``available`` ``(B, M, C, *S_l)`` (missing modalities zero), ``decoded`` ``(B, C, *S_l)`` -> logits."""
        embedded = self.embed(available.flatten(1, 2))
        if self.with_decoder:
            if decoded is None:
                raise ValueError("this region map reads the decoder state; pass decoded")
            embedded = torch.cat((decoded, embedded), dim=1)
        return self.classify(embedded)


class RegionAwareFusion(nn.Module):
    """Fuse ``M`` modalities' features region by region (layers.py:82-165).

    For region ``r`` with map ``p_r`` (softmax probability, ``(B, *S)``): the region-averaged features of modality
    ``m`` are ``mean(f_m p_r) / (mean(p_r) + 1e-7)`` (``C`` values); ``modality_weights[r]`` (Linear ``M C + 1 ->
    hidden``, LeakyReLU(0.2), Linear ``hidden -> M``, sigmoid) turns all of them plus ``mean(p_r) + 1e-7`` into one
    weight ``w_rm`` per modality, and the region's fused map is ``sum_m w_rm f_m p_r``. ``regions`` (1x1, 3x3, 1x1
    blocks: ``R C -> C -> C -> C/2``) merges the ``R`` fused maps (region-major); ``shortcut`` (same blocks on the
    ``M C`` features, modality-major) adds the unweighted features; the output concatenates both: ``C`` channels.

    The published code multiplies out ``f_m p_r`` for every (modality, region) pair; here the averages come from
    one contraction and ``p_r`` multiplies the weighted sum, the same values with ``R`` times less memory.
    """

    def __init__(
        self, channels: int, num_modalities: int, num_classes: int, hidden: int, spatial_dims: int = SPATIAL_DIMS
    ) -> None:
        super().__init__()
        self.modality_weights = nn.ModuleList(
            nn.Sequential(
                nn.Linear(num_modalities * channels + 1, hidden),
                nn.LeakyReLU(NEGATIVE_SLOPE),
                nn.Linear(hidden, num_modalities),
            )
            for _ in range(num_classes)
        )
        self.regions = nn.Sequential(
            _conv_block(spatial_dims, num_classes * channels, channels, kernel_size=1),
            _conv_block(spatial_dims, channels, channels),
            _conv_block(spatial_dims, channels, channels // 2, kernel_size=1),
        )
        self.shortcut = nn.Sequential(
            _conv_block(spatial_dims, num_modalities * channels, channels, kernel_size=1),
            _conv_block(spatial_dims, channels, channels),
            _conv_block(spatial_dims, channels, channels // 2, kernel_size=1),
        )

    def modality_weight(self, available: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Sigmoid weights ``(B, R, M)`` of each modality in each region.

        Args:
            available: ``(B, M, C, *S)`` features, missing modalities zero.
            probs: ``(B, R, *S)`` region maps (probabilities).
        """
        batch, num_mod, channels = available.shape[:3]
        flat_f = available.flatten(3)
        flat_p = probs.flatten(2)
        voxels = flat_p.shape[-1]
        region_mean = flat_p.mean(dim=-1) + REGION_EPS  # (B, R)
        region_feat = torch.einsum("bmcs,brs->brmc", flat_f, flat_p) / voxels  # mean of f_m p_r
        region_feat = region_feat / region_mean[:, :, None, None]
        weights = [
            mlp(torch.cat((region_feat[:, r].reshape(batch, num_mod * channels), region_mean[:, r : r + 1]), dim=1))
            for r, mlp in enumerate(self.modality_weights)
        ]
        return torch.sigmoid(torch.stack(weights, dim=1))

    def forward(self, available: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """``available`` ``(B, M, C, *S)`` (missing modalities zero), ``probs`` ``(B, R, *S)`` -> ``(B, C, *S)``."""
        weights = self.modality_weight(available, probs)
        weighted = torch.einsum("brm,bmc...->brc...", weights, available)  # sum_m w_rm f_m, per region
        fused = (weighted * probs.unsqueeze(2)).flatten(1, 2)  # (B, R C, *S), region-major
        return torch.cat((self.regions(fused), self.shortcut(available.flatten(1, 2))), dim=1)


class RFNetOutput(NamedTuple):
    """Training outputs of :class:`RFNet` (``forward(..., return_aux=True)``).

    Attributes:
        logits: ``(B, R, *S)`` logits of the fused path (what ``forward`` returns).
        sep_logits: ``M`` tensors ``(B, R, *S)``, modality order: the separate decoder's logits from each modality
            alone (every modality, whatever the mask, as the published training does).
        region_probs: ``L`` tensors ``(B, R, *S)``, full-resolution level first: the region maps' softmax
            probabilities, level ``l`` upsampled ``2**l`` times (linear, ``align_corners=True``), what the published
            loss reads (models.py:145).
    """

    logits: torch.Tensor
    sep_logits: tuple[torch.Tensor, ...]
    region_probs: tuple[torch.Tensor, ...]


class RFNet(nn.Module):
    """RFNet (see the module docstring for the parts, shapes and orders).

    The defaults are the published network (8,984,960 parameters, 288 state-dict tensors); smaller ``filters`` and
    hidden widths give CPU-sized variants.

    Args:
        in_modalities: number of modalities ``M`` (one encoder each).
        out_channels: classes ``R`` (4 for BraTS2018/2020: background, NCR/NET, ED, ET; the published code uses 5
            for BraTS2015); also the number of regions the fusion distinguishes.
        filters: channels per level, full resolution first; each an even int >= 4 (the region maps embed into
            ``C / 4`` channels and the fusion's two halves have ``C / 2`` each). Published: 16, 32, 64, 128.
        fusion_hidden: hidden width of the per-region modality-weight MLP (published 128, layers.py:87).
        region_hidden: hidden width of the region-map classifier (published 16, layers.py:45,69).
        in_channels: input channels of each modality, modality order; ``None`` -> one each.
        spatial_dims: 3 (volumes) or 2 (images).

    Raises:
        ValueError: any invalid argument, with the reason.
    """

    #: Keys of :attr:`hparams` (the constructor's arguments).
    HPARAM_NAMES: ClassVar[tuple[str, ...]] = (
        "in_modalities",
        "out_channels",
        "filters",
        "fusion_hidden",
        "region_hidden",
        "in_channels",
        "spatial_dims",
    )
    #: The output is a softmax over the BraTS classes (:mod:`lckd_med.networks.outputs`): inference turns it into
    #: region probabilities and decides by argmax, as the published code.
    output_kind: ClassVar[str] = "classes"
    #: Voxel budgets of one :meth:`decode_subsets` pass (those of the other networks).
    SUBSET_BATCH_VOXELS: int = MissingModalityNet.SUBSET_BATCH_VOXELS
    SUBSET_BATCH_VOXELS_CPU: int = MissingModalityNet.SUBSET_BATCH_VOXELS_CPU

    def __init__(
        self,
        *,
        in_modalities: int = NUM_MODALITIES,
        out_channels: int = 4,
        filters: Sequence[int] = RFNET_FILTERS,
        fusion_hidden: int = 128,
        region_hidden: int = 16,
        in_channels: Sequence[int] | None = None,
        spatial_dims: int = SPATIAL_DIMS,
    ) -> None:
        super().__init__()
        self.in_modalities = positive_int(in_modalities, "in_modalities")
        self.out_channels = positive_int(out_channels, "out_channels")
        if self.out_channels < 2:
            raise ValueError(
                f"out_channels must be at least 2 (softmax classes, background included), got {out_channels}"
            )
        self.filters = check_filters(filters)
        if len(self.filters) < 2:
            raise ValueError(f"filters needs at least 2 levels, got {list(self.filters)}")
        bad = [f for f in self.filters if f < 4 or f % 2]
        if bad:
            raise ValueError(
                f"filters must be even ints >= 4 (C/4 and C/2 channels are used), got {list(self.filters)}"
            )
        self.fusion_hidden = positive_int(fusion_hidden, "fusion_hidden")
        self.region_hidden = positive_int(region_hidden, "region_hidden")
        self.in_channels = MissingModalityNet._check_in_channels(in_channels, self.in_modalities)
        self.spatial_dims = check_spatial_dims(spatial_dims)

        dims, num_mod, num_cls = self.spatial_dims, self.in_modalities, self.out_channels
        self.encoders = nn.ModuleList(RFNetEncoder(c, self.filters, dims) for c in self.in_channels)
        self.region_maps = nn.ModuleList(
            RegionMapHead(
                c, num_mod, num_cls, self.region_hidden, with_decoder=level < self.num_levels - 1, spatial_dims=dims
            )
            for level, c in enumerate(self.filters)
        )
        self.fusions = nn.ModuleList(
            RegionAwareFusion(c, num_mod, num_cls, self.fusion_hidden, dims) for c in self.filters
        )
        self.decoder = RFNetDecoder(self.filters, num_cls, dims)
        self.separate_decoder = RFNetDecoder(self.filters, num_cls, dims)
        self.region_upsample = nn.ModuleList(
            nn.Identity()
            if level == 0
            else UpSample(dims, scale_factor=2**level, mode="nontrainable", interp_mode="linear", align_corners=True)
            for level in range(self.num_levels)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The published initialisation: Kaiming-normal weights (fan in, gain sqrt(2)) for every convolution and
        for the modality-weight layers (1x1x1 convolutions there, models.py:160-162); PyTorch's default biases.
        Skipped on the ``meta`` device (shapes only)."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)) and not module.weight.is_meta:
                module.reset_parameters()
                nn.init.kaiming_normal_(module.weight)

    # ------------------------------------------------------------------ configuration
    @property
    def hparams(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable; :meth:`from_hparams` inverts it."""
        return {
            "in_modalities": self.in_modalities,
            "out_channels": self.out_channels,
            "filters": list(self.filters),
            "fusion_hidden": self.fusion_hidden,
            "region_hidden": self.region_hidden,
            "in_channels": list(self.in_channels),
            "spatial_dims": self.spatial_dims,
        }

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> RFNet:
        """An untrained network from :attr:`hparams` (missing keys take the defaults).

        Raises:
            TypeError: ``hparams`` is not a mapping.
            ValueError: unknown keys or invalid values.
        """
        if not isinstance(hparams, Mapping):
            raise TypeError(f"hparams must be a mapping, got {type(hparams).__name__}")
        allowed = set(cls.HPARAM_NAMES)
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ValueError(f"unknown RFNet hparams {unknown}; allowed: {sorted(allowed)}")
        return cls(**hparams)

    @property
    def num_levels(self) -> int:
        return len(self.filters)

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """Every spatial size must be a multiple of this (``2 ** (L - 1)`` per axis) and at least twice it."""
        return (2 ** (self.num_levels - 1),) * self.spatial_dims

    @property
    def total_channels(self) -> int:
        return sum(self.in_channels)

    # ------------------------------------------------------------------ checks
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        axes = ", ".join("HWD"[: self.spatial_dims])
        if not isinstance(x, torch.Tensor) or x.dim() != 2 + self.spatial_dims or x.shape[1] != self.total_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input must be (B, {self.total_channels}, {axes}), got {shape}")
        spatial = tuple(x.shape[2:])
        div = self.size_divisor[0]
        if any(n % div or n < 2 * div for n in spatial):
            raise ValueError(
                f"spatial size {spatial} must be multiples of {div} and at least {2 * div} "
                "(reflection padding needs 2 voxels at the bottleneck); pad or crop the input"
            )
        return x if type(x) is torch.Tensor else x.as_subclass(torch.Tensor)

    # same feature layout as the other networks: their check, borrowed (it reads num_levels, filters,
    # in_modalities and spatial_dims only)
    _check_features = MissingModalityNet._check_features

    # ------------------------------------------------------------------ encoder
    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Encode each modality with its own encoder.

        Args:
            x: ``(B, sum(in_channels), *S)``, modality order.
            mask: optional ``(B, M)`` bool; missing (sample, modality) pairs are not encoded and hold zeros.

        Returns:
            One ``(B, M, filters[l], *S_l)`` tensor per level, full resolution first.
        """
        x = self._check_input(x)
        batch = x.shape[0]
        todo = None if mask is None else check_mask(mask, batch, self.in_modalities, require_any=False).to(x.device)
        starts = [0]
        for c in self.in_channels:
            starts.append(starts[-1] + c)
        per_mod: list[list[torch.Tensor] | None] = []
        for m, enc in enumerate(self.encoders):
            channels = slice(starts[m], starts[m + 1])
            if todo is None or bool(todo[:, m].all()):
                per_mod.append(enc(x[:, channels]))
                continue
            idx = torch.nonzero(todo[:, m]).flatten()
            if idx.numel() == 0:
                per_mod.append(None)
                continue
            # encode the available samples only; the others stay zero (differentiable scatter)
            per_mod.append([f.new_zeros((batch, *f.shape[1:])).index_copy(0, idx, f) for f in enc(x[idx, channels])])
        ref = next((p for p in per_mod if p is not None), None)
        shapes = self._feature_shapes(batch, x.shape[2:])
        return [
            torch.stack(
                [
                    p[level] if p is not None else x.new_zeros(shapes[level], dtype=ref[level].dtype if ref else None)
                    for p in per_mod
                ],
                dim=1,
            )
            for level in range(self.num_levels)
        ]

    def _feature_shapes(self, batch: int, spatial: Sequence[int]) -> list[tuple[int, ...]]:
        return [(batch, c, *(n // 2**level for n in spatial)) for level, c in enumerate(self.filters)]

    # ------------------------------------------------------------------ fusion + decoder
    def _decode(self, features: Sequence[torch.Tensor], mask: torch.Tensor, deep: bool = False) -> torch.Tensor:
        """Fused logits (``mask`` validated; ``deep`` is unused: RFNet has no deep supervision)."""
        return self._fuse_decode(features, mask)[0]

    def _fuse_decode(
        self, features: Sequence[torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Fused logits ``(B, R, *S)`` and the region-map logits per level (native resolution, full res first)."""
        shape = (*mask.shape, *([1] * (features[0].dim() - 2)))
        available = [torch.where(mask.view(shape), f, 0.0) for f in features]
        top = self.num_levels - 1
        region_logits: list[torch.Tensor] = [None] * self.num_levels  # type: ignore[list-item]
        region_logits[top] = self.region_maps[top](available[top])
        x = self.fusions[top](available[top], F.softmax(region_logits[top], dim=1).detach())
        for level in reversed(range(top)):
            decoded = self.decoder.up(level, x)
            region_logits[level] = self.region_maps[level](available[level], decoded)
            fused = self.fusions[level](available[level], F.softmax(region_logits[level], dim=1).detach())
            x = self.decoder.merge(level, fused, decoded)
        return self.decoder.head(x), region_logits

    def decode(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Fuse the available modalities and decode.

        Args:
            features: output of :meth:`encode`, one ``(B, M, C_l, *S_l)`` tensor per level; missing slots may hold
                anything (they are replaced by zeros, as the published code does).
            mask: ``(B, M)`` bool (``(M,)`` broadcasts); every sample needs one available modality.

        Returns:
            ``(B, R, *S)`` logits.
        """
        batch = self._check_features(features)
        mask = check_mask(mask, batch, self.in_modalities).to(features[0].device)
        return self._decode(features, mask)

    #: One encoding decoded under ``K`` masks ``(K, M)`` -> logits ``(B, K, R, *S)``, ``[:, k] ==
    #: decode(features, masks[k])``; masks are batched ``chunk_size`` at a time (the other networks' method, borrowed:
    #: it calls :meth:`_decode`). Instance norm and the fusion's averages are per sample, so the result does not
    #: depend on ``chunk_size``.
    decode_subsets = MissingModalityNet.decode_subsets

    # ------------------------------------------------------------------ forward
    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, *, return_aux: bool = False
    ) -> torch.Tensor | RFNetOutput:
        """Segment ``x`` given which sequences are available.

        Args:
            x: ``(B, sum(in_channels), *S)``, modality order. Missing channels may hold anything.
            mask: ``(B, M)`` bool (``(M,)`` broadcasts); ``None`` = all available.
            return_aux: also run the separate decoder on every modality and return the upsampled region maps
                (training). Every modality is then encoded, as in the published training.

        Returns:
            ``(B, R, *S)`` logits, or an :class:`RFNetOutput`.
        """
        x = self._check_input(x)
        batch = x.shape[0]
        if mask is None:
            mask = torch.ones(batch, self.in_modalities, dtype=torch.bool, device=x.device)
        mask = check_mask(mask, batch, self.in_modalities).to(x.device)
        features = self.encode(x, None if return_aux else mask)
        logits, region_logits = self._fuse_decode(features, mask)
        if not return_aux:
            return logits
        num_mod = self.in_modalities
        # one pass over all modalities: instance norm is per sample, so folding M into the batch changes nothing
        sep = self.separate_decoder([f.flatten(0, 1) for f in features])
        sep = sep.reshape(batch, num_mod, *sep.shape[1:])
        region_probs = tuple(up(F.softmax(r, dim=1)) for up, r in zip(self.region_upsample, region_logits, strict=True))
        return RFNetOutput(logits, tuple(sep.unbind(1)), region_probs)
