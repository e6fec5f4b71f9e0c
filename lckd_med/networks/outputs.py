"""What a network's output means, in one place: its *output kind*, the region probabilities and the decision rule.

A network class declares ``output_kind`` (a class attribute; absent means ``"regions"``):

``"regions"``  (LCKD, OMD, HeMIS) ``(..., 3, *S)`` logits of three independent sigmoids in
               :data:`~lckd_med.constants.REGIONS` order (ET, TC, WT).
``"classes"``  (RFNet, mmFormer) ``(..., 4, *S)`` logits of a softmax over the BraTS classes in
               :data:`CLASS_LABELS` order: 0 background, 1 NCR/NET, 2 ED (oedema), 3 ET (BraTS label 4, the published
               code's ``label 4 as 3``).

Everything downstream of the network (the sliding-window sweep, teacher election, the
:class:`~lckd_med.inference.Segmenter`, evaluation) works on **region probabilities** ``(..., 3, *S)``, which
:func:`region_probabilities` gives for either kind: for ``"classes"`` ET = p(ET), TC = p(NCR) + p(ET),
WT = p(NCR) + p(ED) + p(ET) = 1 - p(background). Regions are linear in the class probabilities, so averaging region
probabilities over overlapping windows equals averaging the class probabilities (what the published RFNet and
mmFormer predict scripts do) and the class probabilities are recovered exactly from the averaged regions
(:func:`class_probabilities`: background = 1 - WT, NCR = TC - ET, ED = WT - TC, ET).

The *decision* turns region probabilities into region masks (:func:`region_masks`): ``"threshold"`` (each region
above a threshold, the sigmoid networks' rule) or ``"argmax"`` (the class of highest probability, the softmax
networks' published rule: ``torch.argmax`` over the four classes). :func:`default_decision` gives each kind's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lckd_med.constants import NUM_REGIONS

__all__ = [
    "OUTPUT_KINDS",
    "DECISIONS",
    "CLASS_NAMES",
    "CLASS_LABELS",
    "output_kind",
    "output_channels",
    "default_decision",
    "check_decision",
    "region_probabilities",
    "region_logits",
    "LOGIT_EPS",
    "class_probabilities",
    "region_masks",
]

#: Known output kinds (see the module docstring).
OUTPUT_KINDS: tuple[str, ...] = ("regions", "classes")
#: Decision rules from region probabilities to region masks.
DECISIONS: tuple[str, ...] = ("threshold", "argmax")
#: Class names of a ``"classes"`` output, in channel order.
CLASS_NAMES: tuple[str, ...] = ("background", "NCR/NET", "ED", "ET")
#: BraTS 2018 label of each ``"classes"`` channel (channel 3 is ET, label 4; the label convention of the output
#: may write 3 instead, see :class:`~lckd_med.constants.LabelConvention`).
CLASS_LABELS: tuple[int, ...] = (0, 1, 2, 4)
_CHANNELS = {"regions": NUM_REGIONS, "classes": len(CLASS_LABELS)}
_DEFAULT_DECISION = {"regions": "threshold", "classes": "argmax"}


def _check_kind(kind: Any) -> str:
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown network output kind {kind!r}; known: {OUTPUT_KINDS}")
    return kind


def output_kind(network: nn.Module) -> str:
    """The output kind a network (or a DDP / compile wrapper of one) declares: its ``output_kind`` attribute, else
    ``"regions"``.

    Raises:
        ValueError: the network declares an unknown kind.
    """
    while True:  # unwrap DDP / DataParallel / torch.compile (engines.checkpoint.unwrap_model sits a layer above)
        inner = getattr(network, "module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(network, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        network = inner
    return _check_kind(getattr(network, "output_kind", "regions"))


def output_channels(kind: str) -> int:
    """Channels of a network output of ``kind`` (3 regions, 4 classes)."""
    return _CHANNELS[_check_kind(kind)]


def default_decision(kind: str) -> str:
    """The decision rule of an output kind: ``"threshold"`` for ``"regions"``, ``"argmax"`` for ``"classes"``."""
    return _DEFAULT_DECISION[_check_kind(kind)]


def check_decision(decision: Any, name: str = "decision") -> str:
    """``decision`` if it is one of :data:`DECISIONS`.

    Raises:
        ValueError: naming ``name`` and the choices.
    """
    if decision not in DECISIONS:
        raise ValueError(f"{name} must be one of {DECISIONS}, got {decision!r}")
    return decision


def region_probabilities(output: torch.Tensor, kind: str = "regions", dim: int = -4) -> torch.Tensor:
    """Network output -> region probabilities in ``REGIONS`` order (ET, TC, WT), float, in ``[0, 1]``.

    Args:
        output: logits with the channel axis at ``dim``: 3 channels (``"regions"``) or 4 (``"classes"``, the
            :data:`CLASS_NAMES` order).
        kind: one of :data:`OUTPUT_KINDS`.
        dim: the channel axis (default ``-4``: ``(..., C, H, W, D)``; ``-3`` for 2-D ``(..., C, H, W)``).

    Returns:
        The same shape with 3 channels at ``dim``. For ``"classes"``: ET = p3, TC = p3 + p1, WT = TC + p2
        (summed in this order, so ET <= TC <= WT holds exactly in floating point), clamped to ``[0, 1]``.

    Raises:
        ValueError: an unknown ``kind`` or a channel count that is not the kind's.
    """
    _check_kind(kind)
    if output.shape[dim] != _CHANNELS[kind]:
        raise ValueError(
            f"a {kind!r} output has {_CHANNELS[kind]} channels on axis {dim}, got shape {tuple(output.shape)}"
        )
    if kind == "regions":
        return torch.sigmoid(output)
    p = torch.softmax(output.float(), dim=dim)
    _, ncr, ed, et = p.unbind(dim)
    tc = et + ncr
    return torch.stack([et, tc, tc + ed], dim=dim).clamp(0.0, 1.0)


#: Region probabilities are clamped to ``[eps, 1 - eps]`` before :func:`region_logits` takes their logit, so that
#: averaging the logits of overlapping windows never meets ``+inf`` and ``-inf`` at one voxel (a NaN).
LOGIT_EPS: float = 1e-7


def region_logits(output: torch.Tensor, kind: str = "regions", dim: int = -4) -> torch.Tensor:
    """Network output -> region logits: ``sigmoid(region_logits(o, k)) == region_probabilities(o, k)`` (for
    ``"classes"`` within :data:`LOGIT_EPS`).

    ``"regions"`` outputs are returned as they are; ``"classes"`` outputs become the (finite) logit of their region
    probabilities, clamped to ``[LOGIT_EPS, 1 - LOGIT_EPS]``.
    """
    if _check_kind(kind) == "regions":
        return output
    return torch.logit(region_probabilities(output, kind, dim), eps=LOGIT_EPS)


def class_probabilities(regions: torch.Tensor, dim: int = -4) -> torch.Tensor:
    """Region probabilities (ET, TC, WT at ``dim``) -> the four class probabilities (:data:`CLASS_NAMES` order):
    background = 1 - WT, NCR/NET = TC - ET, ED = WT - TC, ET = ET. The inverse of
    :func:`region_probabilities` for ``"classes"``; also defined (though not a distribution when regions are not
    nested) for sigmoid outputs."""
    et, tc, wt = regions.unbind(dim)
    return torch.stack([1.0 - wt, tc - et, wt - tc, et], dim=dim)


def region_masks(
    regions: torch.Tensor, decision: str = "threshold", threshold: float = 0.5, dim: int = -4
) -> torch.Tensor:
    """Region probabilities -> boolean region masks (ET, TC, WT at ``dim``), same shape.

    Args:
        regions: region probabilities, channel axis ``dim``.
        decision: ``"threshold"`` (each region ``> threshold``) or ``"argmax"`` (the class of highest probability
            in :func:`class_probabilities`, first class on ties as ``torch.argmax``; ET = class 3, TC = classes 1
            and 3, WT = classes 1-3).
        threshold: the ``"threshold"`` rule's probability (unused by ``"argmax"``).
    """
    if check_decision(decision) == "threshold":
        return regions > threshold
    cls = torch.argmax(class_probabilities(regions, dim), dim=dim)
    return torch.stack([cls == 3, (cls == 1) | (cls == 3), cls > 0], dim=dim)
