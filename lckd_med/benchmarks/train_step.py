"""One training step (forward, loss, backward, SGD step) of any benchmarked network, timed, with its peak memory.

``python -m lckd_med.benchmarks.train_step [--preset lean] [--method lckd|<any registered method>] [--filters ...]
[--roi 160 160 80] [--batch 2] [--device auto] [--steps 10] [--precision bf16 fp32]``

Prints seconds per step, voxels per second (batch x patch volume / step time: the fair way to compare
networks of different patch sizes) and, on CUDA, peak allocated memory, for each precision asked for. The same
step (:func:`training_loss`) is what :mod:`lckd_med.benchmarks.flops` counts and :mod:`lckd_med.benchmarks.suite`
times side by side with MONAI's networks. A method's step is its own ``compute_loss``
(:mod:`lckd_med.methods`), so every registered method is benchmarked the way it trains.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.engines.workflow import make_optimizer
from lckd_med.losses import segmentation_loss
from lckd_med.methods import METHODS, TeacherState, TrainBatch, build_method, build_network, get_method
from lckd_med.networks import DEFAULT_PRESET, PRESETS
from lckd_med.prediction import autocast_context, resolve_device

__all__ = ["PEER", "STEP_SETTINGS", "PHASE2_MASK", "make_batch", "training_loss", "benchmark_step", "main"]

#: The kind of a network that is not a method's: one early-fusion network (the four sequences as input channels),
#: segmentation loss only. Every other kind is a registered method name (:data:`lckd_med.methods.METHODS`).
PEER = "peer"
#: Settings of every benchmarked method beside its defaults (:func:`lckd_med.methods.build_method` passes each
#: method those it takes): T1ce teaches, as LCKD's elections pick it for ET and TC.
STEP_SETTINGS = {"teacher_state": TeacherState(["t1ce"])}
#: Availability of the two samples of a phase-2 step (one sequence kept each): the worst case for the
#: zero-input encodings of ``fill_levels="bottleneck"`` (every modality missing somewhere in the batch).
PHASE2_MASK = ((False, False, True, False), (True, False, False, False))


def make_batch(batch: int, roi: Sequence[int], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random ``(batch, 4, *roi)`` image and a sparse ``(batch, 3, *roi)`` binary region target."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, NUM_MODALITIES, *roi, generator=gen)
    y = (torch.rand(batch, NUM_REGIONS, *roi, generator=gen) > 0.9).float()
    return x.to(device), y.to(device)


def _phase2_mask(batch: int, device: torch.device) -> torch.Tensor:
    rows = [PHASE2_MASK[i % len(PHASE2_MASK)] for i in range(batch)]
    return torch.tensor(rows, dtype=torch.bool, device=device)


def training_loss(
    net: torch.nn.Module, kind: str, x: torch.Tensor, y: torch.Tensor, phase2: bool = False
) -> torch.Tensor:
    """Forward pass and loss of one training step (the caller runs backward).

    Args:
        net: the network: the method's ``network_class`` for a method, any ``(B, 4, *S) -> (B, 3, *S)`` network for
            :data:`PEER`.
        kind: a registered method name (its :meth:`~lckd_med.methods.TrainingMethod.compute_loss` with its defaults
            and :data:`STEP_SETTINGS`) or :data:`PEER`.
        x: ``(B, 4, *S)`` image; y: ``(B, 3, *S)`` target.
        phase2: the dropout phase with the sequences of :data:`PHASE2_MASK` kept (the dropped channels zeroed in
            ``dropped_image``, still in ``image``), for a method that drops sequences. Peers ignore it.
    """
    if kind != PEER and kind not in METHODS:
        raise ValueError(f"kind must be {PEER!r} or a registered method {list(METHODS)}, got {kind!r}")
    seg = segmentation_loss()
    if kind == PEER:
        return seg(net(x).float(), y)
    method = build_method(kind, **STEP_SETTINGS)
    method.bind(net, seg)
    batch = x.shape[0]
    full = torch.ones(batch, NUM_MODALITIES, dtype=torch.bool, device=x.device)
    phase = 2 if phase2 and method.drops_modalities else 1
    mask = _phase2_mask(batch, x.device) if phase == 2 else full
    dropped = x * mask.view(batch, -1, *([1] * (x.dim() - 2))).to(x.dtype)
    loss, _, _ = method.compute_loss(TrainBatch(x, dropped, y, full, mask), phase)
    return loss


def benchmark_step(
    net: torch.nn.Module,
    kind: str,
    roi: Sequence[int],
    batch: int,
    device: torch.device,
    bf16: bool,
    steps: int,
    warmup: int = 2,
) -> dict[str, float]:
    """Median step time (s), voxels/s and peak memory (GiB, CUDA only) of ``steps`` steps after ``warmup``."""
    net = net.to(device).train()
    opt = make_optimizer("sgd", net.parameters(), lr=1e-2)
    x, y = make_batch(batch, roi, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + warmup):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, bf16):
            loss = training_loss(net, kind, x, y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    out = {"step_s": round(step, 4), "voxels_per_s": round(batch * float(torch.tensor(roi).prod()) / step)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.train_step", description=__doc__)
    presets = sorted({*PRESETS, *(q for cls in METHODS.values() for q in cls.presets)})
    p.add_argument(
        "--preset",
        default=None,
        choices=presets,
        help=f"network preset (default: the method's, {DEFAULT_PRESET} for LCKD)",
    )
    p.add_argument("--method", default="lckd", choices=list(METHODS))
    p.add_argument("--filters", type=int, nargs="+", default=None, help="override the preset's channels")
    p.add_argument("--roi", type=int, nargs=3, default=[160, 160, 80])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "roi": args.roi,
        "batch": args.batch,
        "preset": args.preset or get_method(args.method).default_preset,
        "method": args.method,
    }
    for prec in args.precision:
        bf16 = prec == "bf16"
        if bf16 and device.type != "cuda":
            results[prec] = "skipped: bf16 autocast is used on CUDA only"
            continue
        torch.manual_seed(0)
        # img_size: the window of a fixed-window network (mmFormer) is the crop; the others ignore it
        net = build_network(args.method, args.preset, filters=args.filters, img_size=args.roi)
        results[prec] = benchmark_step(net, args.method, args.roi, args.batch, device, bf16, args.steps)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
