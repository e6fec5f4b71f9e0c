"""mmFormer (Zhang et al., MICCAI 2022) as a training method: its network and its published losses.

The published training step (YaoZhang93/mmFormer at ``b18663a``, ``mmformer/train.py:164-188``) is RFNet's: the
whole input goes in (the mask zeroes features only), and ``softmax_weighted_loss + dice_loss``
(:class:`~lckd_med.losses.SoftmaxSegLoss`) scores the fused prediction, each of the four auxiliary per-modality
predictions (summed) and each of the four deep-supervision predictions of decoder levels 1..4, upsampled to full
resolution (summed):

``loss = fuse + sum over the 4 modalities of aux + sum over the 4 levels of deep``,

all weights 1 from the first iteration (``region_fusion_start_epoch = 0``, ``train.py:38,185-188``; the same
option as RFNet's, :attr:`MMFormerMethod.fusion_start_iteration`, default 0). Targets:
:func:`~lckd_med.losses.regions_to_classes` (label 4 -> class 3). Shapes: image ``(B, 4, *img_size)`` (the
training crop is the network's fixed window), logits ``(B, 4, *img_size)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lckd_med.methods.rfnet import AuxiliarySoftmaxMethod
from lckd_med.networks.mmformer import MMFormerNet

__all__ = ["MMFormerMethod"]


class MMFormerMethod(AuxiliarySoftmaxMethod):
    """mmFormer: hybrid encoders, intra- and inter-modal transformers; fused + auxiliary + deep-supervision
    softmax losses.

    Args:
        fusion_start_iteration: see :class:`~lckd_med.methods.rfnet.AuxiliarySoftmaxMethod` (published: 0).
    """

    label = "mmFormer"
    network_class = MMFormerNet

    def __init__(self, fusion_start_iteration: int = 0) -> None:
        super().__init__(fusion_start_iteration)

    def outputs(self, out: Any) -> tuple[torch.Tensor, Sequence[torch.Tensor], Sequence[torch.Tensor]]:
        return out.logits, out.aux_logits.unbind(1), out.deep_probs
