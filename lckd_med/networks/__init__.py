"""lckd_med.networks: missing-modality segmentation networks (encoders, fusion strategies, shared decoder; the LCKD
reference network; RFNet and mmFormer with the converters of their published checkpoints).

:data:`NETWORKS` (``registry.py``) names the network classes a checkpoint may hold; registering a new class defined
here is one line there.

Importing this package registers :class:`SafeInstanceNorm` in MONAI's ``Norm`` factory as ``"safeinstance"``.
"""

from __future__ import annotations

from lckd_med.networks.decoder import UNetDecoder
from lckd_med.networks.encoder import DEFAULT_ACT, DEFAULT_FILTERS, UNetEncoder, default_strides
from lckd_med.networks.fusion import FILL_LEVELS, MeanFillFusion, ModalityFusion, check_mask, mean_fill
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.mmformer import PUBLISHED_FUSION_ORDER, MMFormerNet, MMFormerOutput
from lckd_med.networks.mmformer_import import mmformer_state_dict_from_published
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
from lckd_med.networks.presets import DEFAULT_PRESET, NETWORK_PRESETS, PRESETS, build_preset, preset_hparams
from lckd_med.networks.protocol import SegmentationNetwork
from lckd_med.networks.reference_net import ReferenceLCKDNet
from lckd_med.networks.registry import NETWORKS
from lckd_med.networks.rfnet import PUBLISHED_RECIPE, RFNET_FILTERS, RFNet, RFNetOutput
from lckd_med.networks.rfnet_import import (
    PUBLISHED_MODALITIES,
    rfnet_hparams_from_published,
    rfnet_state_dict_from_published,
)

__all__ = [
    "SegmentationNetwork",
    "MissingModalityNet",
    "UNetDecoder",
    "MeanFillFusion",
    "RestoreTranslateFusion",
    "LCKDNet",
    "ReferenceLCKDNet",
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
    "NETWORK_PRESETS",
    "DEFAULT_PRESET",
    "build_preset",
    "preset_hparams",
    "RFNet",
    "RFNetOutput",
    "RFNET_FILTERS",
    "PUBLISHED_RECIPE",
    "PUBLISHED_MODALITIES",
    "rfnet_state_dict_from_published",
    "rfnet_hparams_from_published",
    "MMFormerNet",
    "MMFormerOutput",
    "PUBLISHED_FUSION_ORDER",
    "mmformer_state_dict_from_published",
]
