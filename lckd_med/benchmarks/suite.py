"""Side-by-side benchmark of every registered method (each under every network preset) and MONAI peers.

``python -m lckd_med.benchmarks.suite [--device auto] [--roi 64 64 32] [--batch 1] [--case_shape 240 240 155]
[--json suite.json] [--md suite.md]``

For every method of :data:`lckd_med.methods.METHODS` (its network, its own ``compute_loss``) under every preset of
:mod:`lckd_med.networks.presets`, and for MONAI's nnU-Net-like ``DynUNet`` (filters 32..320, early fusion of the
four sequences) and the model-zoo BraTS ``SegResNet``:

* hardware-independent: parameters, MFLOP per input voxel (training step, one-subset inference, 15-subset sweep;
  :mod:`lckd_med.benchmarks.flops`) and the activations of one training step, as the counted bytes of the tensors
  autograd saves for backward (:func:`~lckd_med.benchmarks.flops.saved_activation_bytes`; not a measured peak);
* timed in the same run, as ratios: training step time relative to DynUNet on the same crop and batch, and the
  15-subset sweep of one window relative to 15 separate forward passes;
* on CUDA (bf16 autocast) also: step time, Mvox/s, model-FLOP utilisation against the bf16 matmul peak measured
  in the same run, peak GPU memory, and a whole ``--case_shape`` case by sliding window (1/3 overlap) under one
  subset and under all 15. On CPU the whole-case timing runs only when ``--case_shape`` is given.

Writes JSON (every number) and a Markdown table (``--md``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import DynUNet, SegResNet

from lckd_med.benchmarks.flops import encodes_once, fit_window, flops_per_voxel, saved_activation_bytes
from lckd_med.benchmarks.sweep import separate_passes, time_call
from lckd_med.benchmarks.train_step import PEER, benchmark_step, make_batch, training_loss
from lckd_med.constants import FULL_SUBSET, NUM_MODALITIES, NUM_REGIONS, SUBSET_NAMES
from lckd_med.methods import METHODS
from lckd_med.networks import DEFAULT_NORM
from lckd_med.prediction import autocast_context, resolve_device, subset_masks, sweep_subsets
from lckd_med.utils.io import write_text_atomic

__all__ = ["MODELS", "BASELINE", "build_models", "run_suite", "markdown_tables", "measure_bf16_peak", "main"]

#: Name of the model every step time is divided by.
BASELINE = "DynUNet 32..320"


def _dynunet() -> torch.nn.Module:
    # nnU-Net-like 3D full-resolution U-Net, the four sequences stacked as input channels (early fusion); affine
    # instance norm as nnU-Net, in its batch-1-safe form so tiny smoke crops with a 1x1x1 bottleneck run
    return DynUNet(
        3,
        NUM_MODALITIES,
        NUM_REGIONS,
        kernel_size=[3] * 5,
        strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 4,
        filters=[32, 64, 128, 256, 320],
        norm_name=DEFAULT_NORM,
    )


def _segresnet() -> torch.nn.Module:
    # the MONAI model-zoo brats_mri_segmentation network
    return SegResNet(
        blocks_down=[1, 2, 2, 4],
        blocks_up=[1, 1, 1],
        init_filters=16,
        in_channels=NUM_MODALITIES,
        out_channels=NUM_REGIONS,
        dropout_prob=0.2,
    )


def _project(preset: str, method: str) -> Callable[[], torch.nn.Module]:
    return lambda: METHODS[method].build_network(preset)


#: Model name (``"<method label> <preset>"``) -> (kind for :func:`~lckd_med.benchmarks.train_step.training_loss`:
#: the registered method name, or ``"peer"``; builder).
MODELS: dict[str, tuple[str, Callable[[], torch.nn.Module]]] = {
    **{
        f"{cls.label} {preset}{' (default)' if preset == cls.default_preset else ''}": (name, _project(preset, name))
        for name, cls in METHODS.items()
        for preset in cls.presets
    },
    BASELINE: (PEER, _dynunet),
    "SegResNet (model zoo)": (PEER, _segresnet),
}


def build_models(names: Sequence[str] | None = None) -> dict[str, tuple[str, torch.nn.Module]]:
    """The models to benchmark (all of :data:`MODELS` by default), freshly initialised with seed 0."""
    names = list(MODELS) if names is None else list(names)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(MODELS)}")
    out = {}
    for name in names:
        torch.manual_seed(0)
        kind, build = MODELS[name]
        out[name] = (kind, build())
    return out


def measure_bf16_peak(device: torch.device, n: int = 8192, repeats: int = 5) -> float:
    """Dense bf16 matmul throughput (FLOP/s) of ``device``: the denominator of the model-FLOP utilisation."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds, _ = time_call(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def _forward_predictor(net: torch.nn.Module, kind: str, mask: torch.Tensor, amp: bool) -> Callable:
    def predict(w: torch.Tensor) -> torch.Tensor:
        w = w * mask.view(1, -1, 1, 1, 1).to(w.dtype)
        with autocast_context(w.device, amp):
            out = net(w) if kind == PEER else net(w, mask.expand(w.shape[0], -1))
        return out.float()

    return predict


@torch.no_grad()
def whole_case_seconds(
    net: torch.nn.Module,
    kind: str,
    shape: Sequence[int],
    roi: Sequence[int],
    device: torch.device,
    amp: bool,
    repeats: int,
) -> dict[str, float]:
    """Seconds for one ``(1, 4, *shape)`` case by sliding window (1/3 overlap) under one subset and all 15.

    The project's networks run :func:`~lckd_med.prediction.sweep.sweep_subsets` (each window encoded once); the
    peers run one sliding window per subset with the missing channels zeroed.
    """
    gen = torch.Generator().manual_seed(1)
    image = torch.randn(1, NUM_MODALITIES, *shape, generator=gen).to(device)
    net = net.to(device).eval()
    roi = tuple(int(r) for r in roi)
    if encodes_once(net):

        def run(subsets: Sequence[str]) -> torch.Tensor:
            return sweep_subsets(net, image, roi, subsets=subsets, amp=amp)

    else:

        def run(subsets: Sequence[str]) -> torch.Tensor:
            outs = [
                sliding_window_inference(image, roi, 1, _forward_predictor(net, kind, m.to(device), amp), overlap=1 / 3)
                for m in subset_masks(subsets)
            ]
            return torch.stack([torch.as_tensor(o) for o in outs], dim=1)

    one, _ = time_call(lambda: run([FULL_SUBSET]), device, repeats)
    all15, _ = time_call(lambda: run(SUBSET_NAMES), device, repeats)
    return {"case_1_subset_s": round(one, 4), "case_15_subsets_s": round(all15, 4)}


@torch.no_grad()
def window_sweep_seconds(
    net: torch.nn.Module, roi: Sequence[int], device: torch.device, amp: bool, repeats: int
) -> dict[str, float]:
    """One window, all 15 subsets: encode once + 15 decodes vs 15 separate forward passes (seconds, ratio)."""
    net = net.to(device).eval()
    x, _ = make_batch(1, roi, device)
    masks = subset_masks().to(device)

    def sweep() -> torch.Tensor:
        with autocast_context(device, amp):
            return net.decode_subsets(net.encode(x), masks)

    sweep_s, _ = time_call(sweep, device, repeats)
    passes_s, _ = time_call(lambda: separate_passes(net, x, roi, 0.0, amp), device, repeats)
    return {
        "window_sweep15_s": round(sweep_s, 4),
        "window_passes15_s": round(passes_s, 4),
        "sweep_vs_passes": round(sweep_s / passes_s, 3),
    }


def run_suite(
    device: torch.device,
    roi: Sequence[int],
    batch: int,
    steps: int,
    repeats: int,
    flop_roi: Sequence[int] | None = None,
    case_shape: Sequence[int] | None = None,
    sw_roi: Sequence[int] | None = None,
    models: Sequence[str] | None = None,
    channels_last: bool = False,
    compile_model: bool = False,
) -> dict[str, Any]:
    """Every figure for every model (see the module docstring); returns the JSON-able results.

    Args:
        device: where the timed parts run (FLOPs are counted on CPU).
        roi, batch: training crop and batch of the timed step (also the sweep window).
        steps, repeats: timed training steps (median) and repeats of the timed inference calls.
        flop_roi: crop for FLOP counting (default ``roi``): per-voxel counts do not depend on it.
        case_shape: whole case for the sliding-window timings (``None`` skips them).
        sw_roi: sliding-window size of the whole-case timings (default ``roi``).
        models: names from :data:`MODELS` (default all).
        channels_last: run the timed parts in ``torch.channels_last_3d``.
        compile_model: ``torch.compile`` the networks for the timed training step.
    """
    cuda = device.type == "cuda"
    amp = cuda  # bf16 autocast on CUDA, fp32 on CPU
    flop_roi = tuple(flop_roi or roi)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "precision": "bf16 autocast" if amp else "fp32",
        "roi": list(roi),
        "batch": batch,
        "flop_roi": list(flop_roi),
        "case_shape": list(case_shape) if case_shape else None,
        "sw_roi": list(sw_roi or roi),
        "channels_last": channels_last,
        "compile": compile_model,
        "models": {},
    }
    if cuda:
        results["bf16_peak_tflops"] = round(measure_bf16_peak(device) / 1e12, 1)
    for name, (kind, net) in build_models(models).items():
        print(f"[suite] {name}", flush=True)
        net = fit_window(net, roi)  # mmFormer: its window is the crop
        row: dict[str, Any] = {"kind": kind, "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2)}
        if hasattr(net, "hparams"):
            row["hparams"] = net.hparams
        row["mflop_per_voxel"] = flops_per_voxel(net, kind, flop_roi)
        x, y = make_batch(batch, roi, "cpu")
        net.train()
        row["saved_activations_gib"] = round(
            saved_activation_bytes(lambda n=net, k=kind, x=x, y=y: training_loss(n, k, x, y, phase2=k != PEER)) / 2**30,
            3,
        )
        timed = net
        if channels_last:
            timed = timed.to(memory_format=torch.channels_last_3d)
        if compile_model:
            timed = torch.compile(timed)
        row["step"] = benchmark_step(timed, kind, roi, batch, device, amp, steps)
        if cuda:
            mflop = row["mflop_per_voxel"]["train"]
            row["step"]["mvox_per_s"] = round(row["step"]["voxels_per_s"] / 1e6, 2)
            row["step"]["mfu"] = round(
                mflop * 1e6 * row["step"]["voxels_per_s"] / (results["bf16_peak_tflops"] * 1e12), 4
            )
        if encodes_once(net):
            row["window"] = window_sweep_seconds(net, roi, device, amp, repeats)
        if case_shape:
            sw_net = fit_window(net, sw_roi or roi)
            row["case"] = whole_case_seconds(sw_net, kind, case_shape, sw_roi or roi, device, amp, repeats)
        results["models"][name] = row
        net.to("cpu")
        if cuda:
            torch.cuda.empty_cache()
    base = results["models"].get(BASELINE)
    for row in results["models"].values():
        if base is not None:
            row["step"]["vs_dynunet"] = round(row["step"]["step_s"] / base["step"]["step_s"], 3)
    return results


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_tables(results: dict[str, Any]) -> str:
    """Two Markdown tables: compute per voxel (hardware-independent), then the timed figures of this run."""
    models = results["models"]
    lines = [
        "| network | params | train step | train, 1 of 4 kept | inference, 1 subset | 15 subsets | 15 passes | "
        "saved activations |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in models.items():
        f = row["mflop_per_voxel"]
        lines.append(
            f"| {name} | {row['params_m']:.1f} M | {f['train']:.2f} | {_fmt(f.get('train_phase2'))} | "
            f"{f['infer']:.2f} | {f['sweep15']:.2f} | {f['passes15']:.2f} | {row['saved_activations_gib']:.2f} GiB |"
        )
    roi = "x".join(map(str, results["roi"]))
    lines += [
        "",
        f"MFLOP per input voxel (FlopCounterMode; counted on a {'x'.join(map(str, results['flop_roi']))} crop, "
        f"batch {results['batch']} for training); saved activations: tensors autograd keeps for backward in one "
        f"training step at {roi}, batch {results['batch']}.",
        "",
    ]
    cuda = "bf16_peak_tflops" in results
    head = ["network", "step s", "step / DynUNet", "Mvox/s" if cuda else "kvox/s"]
    if cuda:
        head += ["MFU", "peak GiB"]
    head += ["window: 15 subsets s", "sweep / 15 passes"]
    has_case = any("case" in r for r in models.values())
    if has_case:
        head += ["case, 1 subset s", "case, 15 subsets s"]
    lines += ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, row in models.items():
        s, w, c = row["step"], row.get("window", {}), row.get("case", {})
        cells = [name, _fmt(s["step_s"], 3), _fmt(s.get("vs_dynunet"))]
        cells.append(_fmt(s["mvox_per_s"], 1) if cuda else _fmt(s["voxels_per_s"] / 1e3, 1))
        if cuda:
            cells += [f"{100 * s['mfu']:.1f} %", _fmt(s.get("peak_gib"))]
        cells += [_fmt(w.get("window_sweep15_s"), 3), _fmt(w.get("sweep_vs_passes"))]
        if has_case:
            cells += [_fmt(c.get("case_1_subset_s"), 3), _fmt(c.get("case_15_subsets_s"), 3)]
        lines.append("| " + " | ".join(cells) + " |")
    case = results.get("case_shape")
    lines += [
        "",
        f"Timed on {results['device']} ({results['torch_threads']} threads), {results['precision']}; training step "
        f"(forward, loss, backward, SGD) at {roi}, batch {results['batch']}; window = one {roi} crop, 15 subsets "
        "encoded once vs 15 separate forward passes"
        + (
            f"; case = {'x'.join(map(str, case))} by sliding window {'x'.join(map(str, results['sw_roi']))}, "
            "overlap 1/3"
            if case
            else ""
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lckd_med.benchmarks.suite", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--roi", type=int, nargs=3, default=None, help="crop (default: 64 64 32 on CPU, 160 160 80 on CUDA)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 1 on CPU, 2 on CUDA)")
    p.add_argument("--flop_roi", type=int, nargs=3, default=None, help="crop for FLOP counting (default --roi)")
    p.add_argument("--case_shape", type=int, nargs=3, default=None, help="whole case (default 240 240 155 on CUDA)")
    p.add_argument("--sw_roi", type=int, nargs=3, default=None, help="sliding window of the case (default --roi)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default: 3 on CPU, 20 on CUDA)")
    p.add_argument("--repeats", type=int, default=None, help="timed inference repeats (default: 1 on CPU, 5 on CUDA)")
    p.add_argument("--models", nargs="+", default=None, help=f"subset of {list(MODELS)}")
    p.add_argument("--channels_last", action="store_true", help="time in channels_last_3d memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks for the timed step")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--md", default=None, help="write the Markdown tables here")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    roi = args.roi or ([160, 160, 80] if cuda else [64, 64, 32])
    case = args.case_shape or ([240, 240, 155] if cuda else None)
    t0 = time.perf_counter()
    results = run_suite(
        device,
        roi,
        args.batch or (2 if cuda else 1),
        args.steps or (20 if cuda else 3),
        args.repeats or (5 if cuda else 1),
        flop_roi=args.flop_roi,
        case_shape=case,
        sw_roi=args.sw_roi,
        models=args.models,
        channels_last=args.channels_last,
        compile_model=args.compile,
    )
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    table = markdown_tables(results)
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=2) + "\n")
    if args.md:
        write_text_atomic(args.md, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
