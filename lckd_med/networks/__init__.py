"""lckd_med.networks: missing-modality segmentation networks (encoders, fusion strategies, shared decoder).

:data:`NETWORKS` (``registry.py``) names the network classes a checkpoint may hold; registering a new class defined
here is one line there.

Importing this package registers :class:`SafeInstanceNorm` in MONAI's ``Norm`` factory as ``"safeinstance"``.
"""

from __future__ import annotations

from lckd_med.networks.decoder import UNetDecoder
from lckd_med.networks.encoder import DEFAULT_ACT, DEFAULT_FILTERS, UNetEncoder, default_strides
from lckd_med.networks.fusion import FILL_LEVELS, MeanFillFusion, ModalityFusion, check_mask, mean_fill
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.model import MissingModalityNet
from lckd_med.networks.norm import DEFAULT_NORM, SAFE_INSTANCE_NORM, SafeInstanceNorm
from lckd_med.networks.omd_net import (
    CrossTranslation,
    ModalityRestoration,
    OMDFusion,
    OMDNet,
    OMDOutput,
    RestoreTranslateFusion,
)
from lckd_med.networks.presets import DEFAULT_PRESET, PRESETS, build_preset, preset_hparams
from lckd_med.networks.protocol import SegmentationNetwork
from lckd_med.networks.registry import NETWORKS

__all__ = [
    "SegmentationNetwork",
    "MissingModalityNet",
    "UNetDecoder",
    "MeanFillFusion",
    "RestoreTranslateFusion",
    "LCKDNet",
    "UNetEncoder",
    "ModalityFusion",
    "mean_fill",
    "FILL_LEVELS",
    "check_mask",
    "SafeInstanceNorm",
    "SAFE_INSTANCE_NORM",
    "DEFAULT_NORM",
    "DEFAULT_ACT",
    "DEFAULT_FILTERS",
    "default_strides",
    "OMDNet",
    "OMDOutput",
    "OMDFusion",
    "ModalityRestoration",
    "CrossTranslation",
    "NETWORKS",
    "PRESETS",
    "DEFAULT_PRESET",
    "build_preset",
    "preset_hparams",
]
