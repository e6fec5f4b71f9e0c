"""Time one LCKD training step (forward, Dice+BCE+KD, backward, SGD step) and its peak memory.

``python -m lckd_med.benchmarks.train_step [--filters 32 64 128 256 320] [--roi 160 160 80] [--batch 2]
[--device auto] [--steps 10] [--precision bf16 fp32]``

Prints seconds per step, voxels per second (batch x patch volume / step time: the fair way to compare
networks of different patch sizes) and, on CUDA, peak allocated memory, for each precision asked for.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.engines.workflow import make_optimizer, pick_device
from lckd_med.inference.sweep import autocast_context
from lckd_med.losses import CrossModalDistillationLoss, segmentation_loss
from lckd_med.networks import LCKDNet

__all__ = ["benchmark_step", "main"]


def benchmark_step(
    filters: Sequence[int], roi: Sequence[int], batch: int, device: torch.device, bf16: bool, steps: int
) -> dict[str, float]:
    """Median step time (s), voxels/s and peak memory (GiB, CUDA only) of ``steps`` steps after 2 warm-ups."""
    torch.manual_seed(0)
    net = LCKDNet(filters=filters).to(device).train()
    opt = make_optimizer("sgd", net.parameters(), lr=1e-2)
    seg, kd = segmentation_loss(), CrossModalDistillationLoss()
    x = torch.randn(batch, NUM_MODALITIES, *roi, device=device)
    y = (torch.rand(batch, NUM_REGIONS, *roi, device=device) > 0.9).float()
    mask = torch.ones(batch, NUM_MODALITIES, dtype=torch.bool, device=device)
    teachers = torch.tensor([False, False, True, False], device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(steps + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast_context(device, bf16):
            logits, feats = net(x, mask, return_features=True)
            loss = seg(logits.float(), y) + 0.1 * kd([feats[-1].float()], mask, teachers)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    step = sorted(times)[len(times) // 2]
    out = {"step_s": round(step, 4), "voxels_per_s": round(batch * float(torch.tensor(roi).prod()) / step)}
    if device.type == "cuda":
        out["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["params_m"] = round(sum(p.numel() for p in net.parameters()) / 1e6, 2)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.train_step", description=__doc__)
    p.add_argument("--filters", type=int, nargs="+", default=[32, 64, 128, 256, 320])
    p.add_argument("--roi", type=int, nargs=3, default=[160, 160, 80])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    args = p.parse_args(argv)
    device = pick_device(args.device)
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "roi": args.roi,
        "batch": args.batch,
        "filters": args.filters,
    }
    for prec in args.precision:
        bf16 = prec == "bf16"
        if bf16 and device.type != "cuda":
            results[prec] = "skipped: bf16 autocast is used on CUDA only"
            continue
        results[prec] = benchmark_step(args.filters, args.roi, args.batch, device, bf16, args.steps)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
