"""The network interface the engines, the subset sweep, teacher election, evaluation and inference rely on.

Shapes and orders: input ``x`` ``(B, M, H, W, D)`` with channel ``i`` = :data:`~lckd_med.constants.MODALITIES`
``[i]`` (FLAIR, T1, T1ce, T2); availability masks ``(B, M)`` bool in the same order (``(M,)`` broadcasts); logits
``(B, 3, H, W, D)`` of independent sigmoid channels in :data:`~lckd_med.constants.REGIONS` order (ET, TC, WT), or,
for a network whose class declares ``output_kind = "classes"`` (RFNet, mmFormer), ``(B, 4, H, W, D)`` logits of a
softmax over the BraTS classes; :mod:`lckd_med.networks.outputs` maps either to region probabilities.
Features: one ``(B, M, C_l, H_l, W_l, D_l)`` tensor per level, full resolution first. With another
:class:`~lckd_med.modalities.ModalitySpec` the input has ``spec.total_channels`` channels (``M`` modalities of
``spec.channels`` each) and ``spec.spatial_dims`` spatial axes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["SegmentationNetwork"]


@runtime_checkable
class SegmentationNetwork(Protocol):
    """What a missing-modality segmentation network offers (:class:`~lckd_med.networks.LCKDNet`,
    :class:`~lckd_med.networks.OMDNet`, any :class:`~lckd_med.networks.model.MissingModalityNet`).

    A checkpoint stores the network's registry name and :attr:`hparams`; ``from_hparams`` rebuilds it.
    """

    in_modalities: int
    #: input channels of each modality (modality order); the image has ``sum(in_channels)`` channels
    in_channels: tuple[int, ...]
    #: 2 (images) or 3 (volumes)
    spatial_dims: int
    out_channels: int

    @property
    def hparams(self) -> dict[str, Any]:
        """Every constructor argument, JSON-serialisable."""
        ...

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> SegmentationNetwork:
        """An untrained network built from :attr:`hparams`."""
        ...

    @property
    def size_divisor(self) -> tuple[int, ...]:
        """Per spatial dimension, the number every input size must be a multiple of."""
        ...

    def encode(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``x (B, M, *S)`` -> per-level features ``(B, M, C_l, *S_l)``; masked-out slots are not encoded."""
        ...

    def decode(self, features: Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Features + mask ``(B, M)`` -> logits ``(B, 3, *S)`` (a deep-supervision list when training with it)."""
        ...

    def decode_subsets(
        self, features: Sequence[torch.Tensor], masks: torch.Tensor, chunk_size: int | None = None
    ) -> torch.Tensor:
        """One encoding under ``K`` masks ``(K, M)`` -> logits ``(B, K, 3, *S)``; ``[:, k] == decode(f, masks[k])``."""
        ...

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> Any:
        """``forward``: ``x (B, M, *S)`` and mask ``(B, M)`` -> logits ``(B, 3, *S)``; equals
        ``decode(encode(x), mask)`` whatever the masked-out channels hold."""
        ...
