"""What a training method is: a small strategy object the one trainer (:class:`lckd_med.engines.MethodTrainer`) runs.

A method owns, in its one module:

* its network: :attr:`TrainingMethod.network_class` (a class from :mod:`lckd_med.networks`, or one defined in the
  method's own module, as HeMIS does) and :meth:`TrainingMethod.build_network`, which builds it from a network preset;
* its losses: :meth:`TrainingMethod.compute_loss` turns one :class:`TrainBatch` into ``(loss, prediction, terms)``;
* its own state, if any (LCKD's teachers and election record): :meth:`TrainingMethod.state_dict` /
  :meth:`TrainingMethod.load_state_dict`, which the checkpoint handler saves and restores without knowing the method.

The trainer does everything else the same way for every method: phases, modality dropout, bf16 autocast, the
optimizer step, and logging of whatever ``terms`` the method returns. A method is registered with one line in
:data:`lckd_med.methods.registry.METHODS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch

from lckd_med.networks.presets import DEFAULT_PRESET, PRESETS, build_preset

__all__ = ["TrainBatch", "TrainingMethod", "SegmentationMethod", "float_logits"]


class TrainBatch(NamedTuple):
    """One training batch on the engine's device, after the phase's modality dropout.

    Attributes:
        image: ``(B, C, *S)`` as loaded (modality order; channels of missing sequences are zeros).
        dropped_image: ``image`` with the channels dropped by the modality dropout zeroed (``image`` in phase 1).
        label: ``(B, 3, *S)`` region targets (ET, TC, WT).
        available: ``(B, M)`` bool, the sequences the case has.
        mask: ``(B, M)`` bool, the sequences kept after the dropout (a subset of ``available``).
        iteration: the trainer's 1-based iteration of this batch (0 outside a trainer), for losses whose weights
            follow the schedule (RFNet's fused term from its published epoch on).
    """

    image: torch.Tensor
    dropped_image: torch.Tensor
    label: torch.Tensor
    available: torch.Tensor
    mask: torch.Tensor
    iteration: int = 0


def float_logits(logits: Any) -> Any:
    """fp32 copy of plain or deep-supervision (list) logits, for a loss computed outside autocast precision."""
    return [t.float() for t in logits] if isinstance(logits, (list, tuple)) else logits.float()


class TrainingMethod(ABC):
    """A missing-modality training method (see the module docstring).

    The trainer calls :meth:`bind` once with its network (possibly DDP-wrapped) and segmentation loss, then
    :meth:`compute_loss` every iteration inside autocast. Every constructor argument has a default, so
    ``get_method(name)()`` is the method with its paper's (or this project's) defaults.
    """

    #: Short name for tables and legends (compare, benchmarks).
    label: ClassVar[str]
    #: The network class it trains: :meth:`build_network` builds it, :meth:`bind` checks it, and checkpoints can
    #: rebuild it by its class name (:func:`lckd_med.methods.registry.network_class`).
    network_class: ClassVar[type[torch.nn.Module]]
    #: Other network classes it can train (e.g. one a whole-network preset builds); :meth:`bind` accepts them and
    #: checkpoints can rebuild them, as :attr:`network_class`.
    other_networks: ClassVar[tuple[type[torch.nn.Module], ...]] = ()
    #: ``False``: the trainer never enters the modality-dropout phase (the "all sequences only" baseline).
    drops_modalities: ClassVar[bool] = True
    #: The network presets :meth:`build_network` builds (the benchmark suite counts each; the bundles' setting
    #: ``network_preset`` takes any of them), and the one it builds by default. A method whose network has no
    #: U-Net presets (RFNet, mmFormer) names its own.
    presets: ClassVar[tuple[str, ...]] = tuple(PRESETS)
    default_preset: ClassVar[str] = DEFAULT_PRESET

    def __init__(self) -> None:
        self.network: torch.nn.Module | None = None
        self.seg_loss: Callable[[Any, torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def build_network(cls, preset: str = DEFAULT_PRESET, **options: Any) -> torch.nn.Module:
        """The untrained network of this method: :attr:`network_class` with preset ``preset`` and ``options``.

        Options the network class does not take are ignored (a bundle passes every method's network options, e.g.
        LCKD's ``fill_levels``, so switching ``method_name`` stays a one-key change); ``None`` means "the preset's
        value". A whole-network preset (``"reference"``, :data:`~lckd_med.networks.presets.NETWORK_PRESETS`) builds
        its own network in place of :attr:`network_class` (one of :attr:`other_networks`), or refuses the method's
        class in one line. Methods whose network has no presets override this.

        Raises:
            ValueError: unknown preset or a bad option value.
        """
        accepted = cls.network_class.hparam_names()
        return build_preset(preset, cls.network_class, **{k: v for k, v in options.items() if k in accepted})

    def bind(self, network: torch.nn.Module, seg_loss: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        """Attach the trainer's network (bare or DDP-wrapped) and segmentation loss.

        Raises:
            TypeError: the (unwrapped) network is not a :attr:`network_class` (or one of :attr:`other_networks`).
        """
        bare = network.module if isinstance(getattr(network, "module", None), torch.nn.Module) else network
        if not isinstance(bare, (self.network_class, *self.other_networks)):
            names = " or ".join(c.__name__ for c in (self.network_class, *self.other_networks))
            raise TypeError(f"{type(self).__name__} trains a {names} (possibly DDP-wrapped), got {type(bare).__name__}")
        self.network = network
        self.seg_loss = seg_loss

    def status(self) -> dict[str, str]:
        """Method state shown on every progress line (e.g. LCKD's current teachers); empty by default."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The method's own training state, saved in the checkpoint as ``method_state`` and restored on resume.

        Values must load with ``torch.load(weights_only=True)`` (numbers, strings, lists, dicts, tensors). Empty by
        default: most methods keep everything in the network and optimizer.
        """
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: state given to a method that has none.
        """
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got {sorted(state)}")

    @abstractmethod
    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        """``(loss, prediction, terms)`` of one batch.

        Args:
            batch: the batch after the phase's dropout.
            phase: 1 (all sequences) or 2 (modality dropout).

        Returns:
            the scalar loss to back-propagate; the prediction under ``batch.mask``: ``(B, 3, *S)`` region logits (or
            a deep-supervision list), or ``(B, 4, *S)`` class logits for a network of output kind ``"classes"``
            (RFNet, mmFormer); named scalar loss terms (detached by the trainer) for the logs.
        """


class SegmentationMethod(TrainingMethod):
    """The plain segmentation loss on the dropped-out input: ``loss = seg(network(dropped_image, mask), label)``.

    The base of the methods whose only difference is their network or their phases (subclasses set
    :attr:`~TrainingMethod.network_class` and :attr:`~TrainingMethod.label`).
    """

    def compute_loss(self, batch: TrainBatch, phase: int) -> tuple[torch.Tensor, Any, dict[str, torch.Tensor]]:
        logits = self.network(batch.dropped_image, batch.mask)
        seg = self.seg_loss(float_logits(logits), batch.label).mean()
        return seg, logits, {"seg_loss": seg}
