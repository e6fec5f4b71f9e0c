"""Compute per input voxel, counted with ``torch.utils.flop_counter.FlopCounterMode`` (hardware-independent).

FlopCounterMode counts convolutions and matrix products as ``2 x MACs``, whatever the padding, so the counts of
fully convolutional networks are exactly proportional to the number of voxels: a tiny crop gives the per-voxel
figure of any crop (the tests assert the targets on one). A method's loss may add work that does not scale with the
crop (OMD's MMD compares a fixed number of sampled voxel features): its training figure then depends on the crop. Normalisations, activations and element-wise ops are
not counted (as in every published FLOP figure we quote).

Figures (MFLOP per input voxel; a voxel of the batch x crop):

* ``train``: one training step of the method (:func:`~lckd_med.benchmarks.train_step.training_loss`, its own
  ``compute_loss``, then backward): the costlier of its all-sequences step (phase 1) and its dropout step
  (``train_phase2``), i.e. what a step can cost (LCKD: phase 1; OMD: its one-stage dropout step, since with
  nothing dropped it skips the real-feature path).
* ``train_phase2``: the dropout step with one sequence kept per sample
  (:data:`~lckd_med.benchmarks.train_step.PHASE2_MASK`); for LCKD under ``fill_levels="bottleneck"`` this includes
  the zero-input encodings of the missing sequences. Only for methods that drop sequences.
* ``infer``: one forward pass, all four sequences (one subset).
* ``sweep15``: all 15 subsets of one window: one encoding + 15 decodes for the project's networks (steady state of
  a sliding window, the zero-input encodings cached after the first window), 15 forward passes for the peers.
* ``passes15``: 15 separate forward passes (what the sweep replaces).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from lckd_med.benchmarks.train_step import PEER, make_batch, training_loss
from lckd_med.methods import get_method
from lckd_med.prediction.sweep import subset_masks

__all__ = ["count_flops", "flops_per_voxel", "fit_window", "saved_activation_bytes", "encodes_once"]


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward and backward), counted by ``FlopCounterMode``."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def encodes_once(net: torch.nn.Module) -> bool:
    """Whether ``net`` has the encode-once sweep (``encode`` + ``decode_subsets``): the project's networks."""
    return callable(getattr(net, "encode", None)) and callable(getattr(net, "decode_subsets", None))


def saved_activation_bytes(fn: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors autograd saves for backward while ``fn`` builds its graph.

    A device-independent stand-in for training memory on CPU (activations dominate it); on CUDA the suite also
    reports ``torch.cuda.max_memory_allocated``.
    """
    seen: dict[tuple, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = (t.untyped_storage().data_ptr(), t.device)
        seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def fit_window(net: torch.nn.Module, roi: Sequence[int]) -> torch.nn.Module:
    """``net``, or, for a network whose position embeddings fix its input size (mmFormer's ``img_size``) to another
    size than ``roi``, the same architecture built untrained for ``roi`` (the benchmarks count and time untrained
    networks; the parameter count changes by the position embeddings only)."""
    size = getattr(net, "img_size", None)
    if size is None or tuple(size) == tuple(roi):
        return net
    return type(net).from_hparams({**net.hparams, "img_size": [int(r) for r in roi]})


def flops_per_voxel(
    net: torch.nn.Module, kind: str, roi: Sequence[int], batch: int = 1, phase2: bool = True
) -> dict[str, float]:
    """MFLOP per input voxel of ``net`` (see the module docstring for the figures).

    Args:
        net: the network, on CPU (counting does not need a device).
        kind: a registered method name or ``"peer"`` (see :func:`~lckd_med.benchmarks.train_step.training_loss`).
        roi: crop, divisible by the network's size divisor (a fixed-window network is rebuilt for it,
            :func:`fit_window`).
        batch: samples per training step (the inference figures use one sample).
        phase2: also count ``train_phase2`` (methods that drop sequences) and take it into ``train``.
    """
    net = fit_window(net, roi)
    voxels = math.prod(roi)
    x, y = make_batch(batch, roi, "cpu")
    was_training = net.training
    net.train()

    def step(p2: bool) -> None:
        training_loss(net, kind, x, y, phase2=p2).backward()

    out = {"train": count_flops(lambda: step(False)) / (batch * voxels) / 1e6}
    if phase2 and kind != PEER and get_method(kind).drops_modalities:
        out["train_phase2"] = count_flops(lambda: step(True)) / (batch * voxels) / 1e6
        out["train"] = max(out["train"], out["train_phase2"])
    net.zero_grad(set_to_none=True)
    net.eval()
    one = x[:1]
    with torch.no_grad():
        out["infer"] = count_flops(lambda: net(one)) / voxels / 1e6
        out["passes15"] = 15 * out["infer"]
        if encodes_once(net):
            masks = subset_masks()
            net.decode_subsets(net.encode(one), masks[:1])  # warm the zero-input cache (once per window shape)
            out["sweep15"] = count_flops(lambda: net.decode_subsets(net.encode(one), masks)) / voxels / 1e6
        else:
            out["sweep15"] = out["passes15"]
    net.train(was_training)
    return {k: round(v, 4) for k, v in out.items()}
