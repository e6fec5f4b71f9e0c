"""What a training method is: a small strategy object the one trainer (:class:`lckd_med.engines.MethodTrainer`) runs.

A method owns its network choice (the checkpoint registry name), its extra losses and
:meth:`TrainingMethod.compute_loss`, which turns one :class:`TrainBatch` into ``(loss, prediction, terms)``.
The trainer does everything else the same way for every method: phases, modality dropout, bf16 autocast, the
optimizer step, and logging of whatever ``terms`` the method returns.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch

__all__ = ["TrainBatch", "TrainingMethod", "float_logits"]


class TrainBatch(NamedTuple):
    """One training batch on the engine's device, after the phase's modality dropout.

    Attributes:
        image: ``(B, M, *S)`` as loaded (modality order; channels of missing sequences are zeros).
        dropped_image: ``image`` with the channels dropped by the modality dropout zeroed (``image`` in phase 1).
        label: ``(B, 3, *S)`` region targets (ET, TC, WT).
        available: ``(B, M)`` bool, the sequences the case has.
        mask: ``(B, M)`` bool, the sequences kept after the dropout (a subset of ``available``).
    """

    image: torch.Tensor
    dropped_image: torch.Tensor
    label: torch.Tensor
    available: torch.Tensor
    mask: torch.Tensor


def float_logits(logits: Any) -> Any:
    """fp32 copy of plain or deep-supervision (list) logits, for a loss computed outside autocast precision."""
    return [t.float() for t in logits] if isinstance(logits, (list, tuple)) else logits.float()


class TrainingMethod(ABC):
    """A missing-modality training method (see the module docstring).

    The trainer calls :meth:`bind` once with its network (possibly DDP-wrapped) and segmentation loss, then
    :meth:`compute_loss` every iteration inside autocast.
    """

    #: The network it trains: a key of :data:`lckd_med.networks.presets.METHODS` (``build_preset``'s ``method``).
    network_family: ClassVar[str] = "lckd"
    #: ``False``: the trainer never enters the modality-dropout phase (the "all sequences only" baseline).
    drops_modalities: ClassVar[bool] = True

    def __init__(self) -> None:
        self.network: torch.nn.Module | None = None
        self.seg_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None

    def bind(self, network: torch.nn.Module, seg_loss: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        """Attach the trainer's network (bare or DDP-wrapped) and segmentation loss; subclasses check the network."""
        self.network = network
        self.seg_loss = seg_loss

    def status(self) -> dict[str, str]:
        """Method state shown on every progress line (e.g. LCKD's current teachers); empty by default."""
        return {}

    @abstractmethod
    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        """``(loss, prediction, terms)`` of one batch.

        Args:
            batch: the batch after the phase's dropout.
            phase: 1 (all sequences) or 2 (modality dropout).

        Returns:
            the scalar loss to back-propagate; the prediction ``(B, 3, *S)`` logits (or deep-supervision list) under
            ``batch.mask``; named scalar loss terms (detached by the trainer) for the logs.
        """
