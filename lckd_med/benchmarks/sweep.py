"""Time the 15-subset sweep (encode once per window) against 15 separate sliding-window forward passes.

``python -m lckd_med.benchmarks.sweep [--ckpt model.pt | --preset lean [--method <registered method>] [--filters ...]]
[--shape 240 240 155] [--roi 128 128 128] [--device auto] [--repeats 3]``

Same model, same random volume, same sliding-window settings; prints seconds per case for both, the speed-up,
the largest absolute difference between the two outputs and, on CUDA, peak memory.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from lckd_med.constants import NUM_MODALITIES, SUBSET_NAMES
from lckd_med.engines.checkpoint import build_network, load_checkpoint
from lckd_med.methods import METHODS
from lckd_med.methods import build_network as method_network
from lckd_med.networks import DEFAULT_PRESET, PRESETS
from lckd_med.prediction import autocast_context, resolve_device, subset_masks, sweep_subsets
from lckd_med.utils.io import write_text_atomic

__all__ = ["separate_passes", "time_call", "main"]


@torch.no_grad()
def separate_passes(
    net: torch.nn.Module,
    image: torch.Tensor,
    roi: Sequence[int],
    overlap: float,
    amp: bool,
    subsets: Sequence[str] = SUBSET_NAMES,
) -> torch.Tensor:
    """``(B, K, 3, *S)`` logits from one independent sliding-window forward pass per subset (the naive way)."""
    outs = []
    for mask in subset_masks(subsets).to(image.device):
        x = image * mask.view(1, -1, 1, 1, 1).to(image.dtype)

        def predictor(w: torch.Tensor, m: torch.Tensor = mask) -> torch.Tensor:
            with autocast_context(w.device, amp):
                return net(w, m.expand(w.shape[0], -1)).float()

        outs.append(sliding_window_inference(x, tuple(roi), 1, predictor, overlap=overlap, mode="constant"))
    return torch.stack([torch.as_tensor(o) for o in outs], dim=1)


def time_call(
    fn: Callable[[], torch.Tensor], device: torch.device, repeats: int, warmup: int = 1
) -> tuple[float, torch.Tensor]:
    """Median seconds of ``repeats`` calls (after ``warmup`` untimed ones) and the last output."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2], out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.sweep", description=__doc__)
    p.add_argument("--ckpt", help="model.pt to benchmark (default: a randomly initialised LCKDNet)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS), help="network (without --ckpt)")
    p.add_argument("--method", default="lckd", choices=list(METHODS), help="whose network (without --ckpt)")
    p.add_argument("--filters", type=int, nargs="+", default=None, help="override the preset's channels")
    p.add_argument("--shape", type=int, nargs=3, default=[160, 192, 144], help="volume (cropped brain box)")
    p.add_argument("--roi", type=int, nargs=3, default=[128, 128, 128])
    p.add_argument("--overlap", type=float, default=1 / 3)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-amp", dest="amp", action="store_false")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    p.add_argument("--subsets", nargs="+", default=list(SUBSET_NAMES), help="subset names (default all 15)")
    p.add_argument("--sweep_only", action="store_true", help="skip the separate passes (time the sweep only)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    if args.ckpt:
        net = build_network(load_checkpoint(args.ckpt))
    else:
        net = method_network(args.method, args.preset, filters=args.filters)
    net = net.to(device).eval()
    torch.manual_seed(0)
    image = torch.randn(1, NUM_MODALITIES, *args.shape, device=device)
    results: dict[str, float | str | list[int]] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "shape": list(args.shape),
        "roi": list(args.roi),
        "amp": bool(args.amp and device.type == "cuda"),
    }
    results["subsets"] = list(args.subsets)
    runs = [("sweep_s", lambda: sweep_subsets(net, image, args.roi, args.subsets, overlap=args.overlap, amp=args.amp))]
    if not args.sweep_only:
        runs.append(("separate_s", lambda: separate_passes(net, image, args.roi, args.overlap, args.amp, args.subsets)))
    for name, fn in runs:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        seconds, out = time_call(fn, device, args.repeats, args.warmup)
        results[name] = round(seconds, 4)
        results[name.replace("_s", "_out")] = out  # type: ignore[assignment]
        if device.type == "cuda":
            results[name.replace("_s", "_peak_gib")] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    sweep_out = results.pop("sweep_out")
    if not args.sweep_only:
        diff = (sweep_out - results.pop("separate_out")).abs().max().item()  # type: ignore[operator]
        results["max_abs_diff"] = diff
        results["speedup"] = round(float(results["separate_s"]) / float(results["sweep_s"]), 2)
    print(json.dumps(results, indent=2))
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
