"""``lckd-med``: the toolkit's commands for people who do not want to write a bundle config.

Each sub-command is a thin wrapper over the library call the bundles use:

* ``lckd-med predict``: every case found below a folder (``-i DIR -o DIR``, cases discovered as ``prepare`` finds
  them), or one case from its sequence files (``--flair F ... -o seg.nii.gz``), through
  :class:`lckd_med.inference.BatchInference` (the inference bundle's runner; one case is a one-row manifest), which
  predicts with :class:`lckd_med.inference.Segmenter`, the one prediction path;
* ``lckd-med prepare``: ``python -m data_prep.brats`` (discover, validate, write the datalist with splits);
* ``lckd-med evaluate-folder``: score a folder of label maps against BraTS labels
  (:func:`lckd_med.reports.folder_scores.score_folder`);
* ``lckd-med export-safetensors`` / ``import-safetensors``: network weights of ``model.pt`` to and from a
  ``.safetensors`` file (:mod:`lckd_med.engines.safetensors_io`);
* ``lckd-med import-checkpoint --from rfnet|mmformer FILE -o model.pt``: a released RFNet or mmFormer checkpoint
  as this project's checkpoint (:mod:`lckd_med.engines.published_import`).

Declared in ``pyproject.toml`` (``[project.scripts] lckd-med = "lckd_med.cli:main"``); ``python -m lckd_med.cli``
is the same. Exit status: 0 success, 1 the work failed (message on stderr), 2 bad arguments, 130 Ctrl-C.

Every flag is parsed into its type (:mod:`lckd_med.utils.parse`) and a bad value is one line; no command replaces a
file it did not write unless ``--overwrite`` is given, and never one of its inputs
(:mod:`lckd_med.utils.outputs`); errors are one ``lckd-med: error:`` line (``LCKD_DEBUG=1`` shows the traceback).

Start-up is light: this module and every command's ``--help`` and argument errors import neither torch nor MONAI
(a command imports what it needs when it runs; ``python -m lckd_med.benchmarks.startup`` measures it).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from lckd_med.constants import GRID_RULES, MODALITIES, label_convention
from lckd_med.utils.errors import EXIT_INTERRUPTED
from lckd_med.utils.errors import run_guarded as guarded
from lckd_med.utils.parse import OneLineArgumentParser, arg_type, parse_float, parse_int, parse_text

__all__ = [
    "build_parser",
    "main",
    "default_checkpoint",
    "predict",
    "evaluate_folder",
    "prepare",
    "import_checkpoint",
    "run_guarded",
]

EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGS = 0, 1, 2
_PROG = "lckd-med"
#: Prefix of the working folder ``predict`` makes beside its output (removed after; stale ones at the next run).
PREDICT_WORK_PREFIX = ".lckd_predict_"


def default_checkpoint() -> Path:
    """``model.pt`` where the lckd bundle's training writes it (``bundles/lckd/runs/models/model.pt``)."""
    from lckd_med.engines.workflow import bundle_dir

    return Path(bundle_dir("lckd")) / "runs" / "models" / "model.pt"


def _err(msg: str) -> None:
    print(f"{_PROG}: error: {msg}", file=sys.stderr)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


PREDICT_EXAMPLE = """example:
  lckd-med predict -i /data/MICCAI_BraTS_2018_Data_Training -o /data/segs --ckpt model.pt --png
  lckd-med predict --flair BraTS2021_00008_flair.nii.gz --t1ce BraTS2021_00008_t1ce.nii.gz \\
      -o BraTS2021_00008_seg.nii.gz --ckpt bundles/lckd/runs/models/model.pt --png

-i DIR: every case folder found below DIR as `lckd-med prepare` finds them (BraTS 2018 HGG/LGG, 2020-2021 flat,
2023 t2f/t1n/t1c/t2w names); -o DIR gets <case_id>.nii.gz, inference_report.csv (and <case_id>.png, probabilities/).
One case: give any non-empty subset of the four sequences; the others count as missing. --ckpt takes model.pt or a
.safetensors export. Inputs must be skull-stripped and co-registered, as BraTS (README: What inputs must look like).
Sequences stored in another orientation or voxel size of the same world space are resampled onto the reference
sequence (--grid: t1ce, else flair, t2, t1 by default; a sequence name; coarsest or finest), whose grid and header
the label map takes, so it overlays that input.
Labels: 1 NCR, 2 ED, 4 ET (3 for BraTS 2023+ checkpoints or --label_convention brats2023)."""

EVALUATE_EXAMPLE = """example:
  lckd-med evaluate-folder --pred_dir runs/seg --labels /data/MICCAI_BraTS_2018_Data_Training -o runs/scores

--labels is a BraTS dataset folder (any edition's layout) or a folder of <case_id>[_seg].nii.gz files.
Predictions are <case_id>.nii.gz; batch inference's inference_report.csv beside them gives each case's subset.
Writes subset_metrics.csv, subset_summary.csv, subset_summary.md and subset_dice_heatmap.png."""

PREPARE_EXAMPLE = """example:
  lckd-med prepare --dataset_dir /data/BraTS --output bundles/lckd/runs/output/datalist.json

Same options as python -m data_prep.brats (listed above)."""

EXPORT_EXAMPLE = """example:
  lckd-med export-safetensors --ckpt bundles/lckd/runs/models/model.pt -o bundles/lckd/runs/models/model.safetensors

The .safetensors file holds the network weights and, as text metadata, the network name and hyper-parameters,
modality/region order and label convention: enough to rebuild the network, and no code can ride along.
lckd-med predict --ckpt takes it as it is."""

IMPORT_EXAMPLE = """example:
  lckd-med import-safetensors --weights model.safetensors -o bundles/lckd/runs/imported/model.pt

Writes an inference checkpoint (model.pt: network weights and description, no optimiser state) for the bundles'
ckpt_dir (evaluation, inference); training does not resume from it. lckd-med predict takes the .safetensors file
directly."""

IMPORT_CHECKPOINT_EXAMPLE = """example:
  lckd-med import-checkpoint --from rfnet model_last.pth -o models/rfnet_brats2018/model.pt
  lckd-med predict --flair F.nii.gz --t1ce C.nii.gz -o seg.nii.gz --ckpt models/rfnet_brats2018/model.pt

FILE is a checkpoint as the authors of RFNet (github.com/dyh127/RFNet) or mmFormer (github.com/YaoZhang93/mmFormer)
released it ({'epoch', 'state_dict', 'optim_dict'}, 'module.' keys; read with torch.load(weights_only=True)).
model.pt records what their code assumed and predict, batch inference and evaluation apply it: modality order,
their normalisation (brain box widened to 128, z-score over the brain mask on every voxel), the window (RFNet 80^3,
mmFormer 128^3) at overlap 0.5 with averaged class probabilities, argmax over the four classes, labels 0/1/2/4."""

#: ``--from`` values of ``import-checkpoint`` (lckd_med.engines.published_import.PUBLISHED_MODELS, kept here so that
#: parsing the flags imports no torch).
PUBLISHED_SOURCES: tuple[str, ...] = ("rfnet", "mmformer")


_DEVICE_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?|xpu(:\d+)?)$")


def _device(text: str, name: str) -> str:
    """A device name, checked without importing torch unless it names a GPU (whose presence only torch knows)."""
    value = parse_text(text, name).strip()
    if not _DEVICE_NAME.match(value):
        raise ValueError(f"{name}: device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    if value.startswith(("cuda", "xpu", "mps")):
        from lckd_med.prediction.device import resolve_device

        try:
            resolve_device(value)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
    return value


def _grid(text: str, name: str) -> str:
    value = parse_text(text, name).strip().lower()
    if value not in (*MODALITIES, *GRID_RULES):
        raise ValueError(
            f"{name}: must be a sequence ({', '.join(MODALITIES)}) or {' / '.join(GRID_RULES)}, got {text!r}"
        )
    return value


def _png(text: str, name: str) -> str:
    value = parse_text(text, name).strip()
    if not value.lower().endswith(".png"):
        raise ValueError(f"{name}: must name a .png file, got {text!r}")
    return value


def _published_source(text: str, name: str) -> str:
    value = parse_text(text, name).strip().lower()
    if value not in PUBLISHED_SOURCES:
        raise ValueError(f"{name}: must be one of {' / '.join(PUBLISHED_SOURCES)}, got {text!r}")
    return value


def _convention(text: str, name: str) -> str:
    try:
        return label_convention(text).name
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def _command(sub: Any, name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """One sub-command: ``summary`` in ``lckd-med --help``, ``description`` and the ``epilog`` example in its own."""
    return sub.add_parser(name, help=summary, description=description, epilog=epilog, formatter_class=_formatter)


def build_parser() -> argparse.ArgumentParser:
    """The ``lckd-med`` parser with its sub-commands."""
    p = OneLineArgumentParser(
        prog=_PROG,
        description="lckd_med: brain-tumour segmentation with missing MRI sequences (LCKD, OMD).",
        formatter_class=_formatter,
        epilog="example:\n  lckd-med predict --flair F.nii.gz --t1ce C.nii.gz -o seg.nii.gz\n"
        "Run 'lckd-med <command> --help' for each command's options.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>")

    pr = _command(
        sub,
        "predict",
        "segment every case below a folder, or one case from its sequence files",
        "Segment every case found below a folder (-i DIR -o DIR), or one case from whichever of its four MRI "
        "sequences you have.",
        PREDICT_EXAMPLE,
    )
    pr.add_argument(
        "-i",
        "--input",
        metavar="DIR",
        default=None,
        help="folder of cases (found at any depth, as prepare finds them) or a CSV manifest case_id,flair,t1,t1ce,t2; "
        "-o is then a folder",
    )
    for m in MODALITIES:
        pr.add_argument(f"--{m}", metavar="FILE", default=None, help=f"{m} NIfTI file of one case (optional)")
    pr.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="label map to write (.nii.gz or .nii), or a folder with -i",
    )
    pr.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output (never an input); with -i: redo cases that are up to date",
    )
    pr.add_argument(
        "--ckpt",
        metavar="FILE",
        default=None,
        help="model.pt or .safetensors export (default: the lckd bundle's model.pt)",
    )
    pr.add_argument(
        "--device",
        default="auto",
        type=arg_type(_device, "--device"),
        help="auto (CUDA when available), cpu, cuda or cuda:N",
    )
    pr.add_argument("--no_amp", action="store_true", help="no bf16 autocast on CUDA")
    pr.add_argument(
        "--overlap",
        type=arg_type(parse_float, "--overlap", low=0.0, high=1.0, high_open=True),
        default=None,
        help="sliding-window overlap in [0, 1) (default: the checkpoint's recorded one, else 1/3)",
    )
    pr.add_argument(
        "--threshold",
        type=arg_type(parse_float, "--threshold", low=0.0, high=1.0, low_open=True, high_open=True),
        default=0.5,
        help="threshold per region probability, in (0, 1) (default 0.5; a softmax model decides by argmax)",
    )
    pr.add_argument(
        "--roi_size",
        type=arg_type(parse_int, "--roi_size", minimum=1),
        nargs=3,
        default=None,
        metavar="N",
        help="window (default: training's)",
    )
    pr.add_argument(
        "--label_convention",
        type=arg_type(_convention, "--label_convention"),
        default=None,
        help="brats2018 (ET=4) or brats2023 (ET=3); default: the checkpoint's",
    )
    pr.add_argument(
        "--grid",
        type=arg_type(_grid, "--grid"),
        default=None,
        help="output grid: a sequence (t1ce, flair, t2, t1) or coarsest / finest voxels (default: t1ce, else flair, "
        "t2, t1)",
    )
    pr.add_argument(
        "--png",
        type=arg_type(_png, "--png"),
        nargs="?",
        const=True,
        default=None,
        metavar="FILE",
        help="also write a picture: 3 slices through the tumour, labels overlaid (default file: beside --output, "
        ".png; with -i: <output>/<case_id>.png)",
    )
    pr.add_argument(
        "--save_probabilities",
        action="store_true",
        help="also write the region probabilities (ET, TC, WT) as a 4-D NIfTI: <output stem>_probabilities.nii.gz, "
        "with -i: <output>/probabilities/<case_id>.nii.gz",
    )
    pr.add_argument("--no_progress", action="store_true", help="no progress bars")

    sub.add_parser(
        "prepare",
        help="validate a BraTS folder and write the datalist (python -m data_prep.brats)",
        add_help=False,
    )

    ev = _command(
        sub,
        "evaluate-folder",
        "score a folder of label maps against BraTS labels",
        "Dice and HD95 (legacy BraTS rules) of every prediction in a folder, per-subset reports.",
        EVALUATE_EXAMPLE,
    )
    ev.add_argument(
        "--pred_dir",
        required=True,
        help="folder of <case_id>.nii.gz label maps, or of <subset>/ sub-folders (the evaluate bundle's predictions/)",
    )
    ev.add_argument("--labels", required=True, help="BraTS dataset folder or folder of label files")
    ev.add_argument("-o", "--output_dir", required=True, help="folder for the reports")
    ev.add_argument(
        "--overwrite", action="store_true", help="replace same-named report files lckd_med did not write there"
    )
    ev.add_argument("--subset", default=None, help="subset of the predictions, e.g. t1ce+t2 (default: all four)")
    ev.add_argument(
        "--release",
        type=arg_type(_convention, "--release"),
        default=None,
        help="BraTS year of the labels (2023+: ET=3); default: detected",
    )
    ev.add_argument(
        "--postprocess_min_et",
        type=arg_type(parse_int, "--postprocess_min_et", minimum=0),
        default=None,
        help="ET post-processing threshold, mm^3 (0: none)",
    )
    ev.add_argument("--no_progress", action="store_true", help="no progress bar")

    ex = _command(
        sub,
        "export-safetensors",
        "write the network weights of model.pt as .safetensors",
        "Export the network weights of an lckd_med checkpoint to a safetensors file.",
        EXPORT_EXAMPLE,
    )
    ex.add_argument("--ckpt", required=True, help="checkpoint (model.pt)")
    ex.add_argument("-o", "--output", default=None, help="file to write (default: beside --ckpt, .safetensors)")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --output (never --ckpt)")
    im = _command(
        sub,
        "import-safetensors",
        "make an inference checkpoint from a .safetensors file",
        "Write an lckd_med checkpoint (model.pt) from a safetensors file made by export-safetensors.",
        IMPORT_EXAMPLE,
    )
    im.add_argument("--weights", required=True, help=".safetensors file")
    im.add_argument("-o", "--output", required=True, help="checkpoint to write (model.pt)")
    im.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --output (a training checkpoint there loses its optimiser and election state)",
    )
    ic = _command(
        sub,
        "import-checkpoint",
        "make a checkpoint from a released RFNet or mmFormer checkpoint",
        "Write an lckd_med checkpoint (model.pt) from a checkpoint released by the RFNet or mmFormer authors.",
        IMPORT_CHECKPOINT_EXAMPLE,
    )
    ic.add_argument(
        "--from",
        dest="source",
        required=True,
        type=arg_type(_published_source, "--from"),
        metavar="|".join(PUBLISHED_SOURCES),
        help="which method released FILE",
    )
    ic.add_argument("file", metavar="FILE", help="the released checkpoint (.pth)")
    ic.add_argument("-o", "--output", required=True, help="checkpoint to write (.pt, e.g. model.pt)")
    ic.add_argument("--overwrite", action="store_true", help="replace an existing --output (never FILE)")
    return p


def _check_predict_args(args: argparse.Namespace) -> str | None:
    """Why the combination of ``predict`` flags is wrong (before anything heavy is imported), or None."""
    paths = [getattr(args, m) for m in MODALITIES]
    if args.input is not None:
        if any(paths):
            return (
                "give either -i/--input (a folder of cases) or sequence files (--flair, --t1, --t1ce, --t2), not both"
            )
        if isinstance(args.png, str):
            return "with -i, --png takes no file name: each case's picture is <output>/<case_id>.png"
        if Path(args.output).name.lower().endswith((".nii.gz", ".nii")):
            return f"with -i, --output is a folder (for <case_id>.nii.gz files), got {args.output}"
        return None
    if not any(paths):
        return "give -i/--input (a folder of cases) or at least one sequence: --flair, --t1, --t1ce and/or --t2"
    if not Path(args.output).name.lower().endswith((".nii.gz", ".nii")):
        return f"--output must end in .nii.gz or .nii, got {Path(args.output).expanduser()}"
    return None


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


@contextlib.contextmanager
def _messages_on_stdout() -> Iterator[None]:
    """lckd_med's INFO log lines (what is being done, the output size, per case results) on standard output while a
    command runs, written around the progress bars (which go to standard error)."""
    from lckd_med.utils.progress import ProgressLogHandler

    log = logging.getLogger("lckd_med")
    handler = ProgressLogHandler()
    level = log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def predict(args: argparse.Namespace) -> int:
    """``lckd-med predict``: every case below ``-i`` (:meth:`BatchInference.run`), or one case through
    :meth:`~lckd_med.inference.BatchInference.run_case` on a one-row manifest, written to ``-o``.

    One case runs in a working folder beside the output (so the final rename is atomic), marked as this process's
    (:func:`~lckd_med.utils.outputs.make_work_dir`); one left by a killed run is removed at the next run.
    """
    problem = _check_predict_args(args)
    if problem:
        _err(problem)
        return EXIT_BAD_ARGS
    ckpt = Path(args.ckpt).expanduser() if args.ckpt else default_checkpoint()
    with _messages_on_stdout():
        if args.input is not None:
            return _predict_folder(args, ckpt)
        return _predict_case(args, ckpt)


def _runner_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "device": args.device,
        "amp": not args.no_amp,
        "roi_size": tuple(args.roi_size) if args.roi_size else None,
        "overlap": args.overlap,
        "threshold": args.threshold,
        "label_convention": args.label_convention,
        "grid": args.grid,
        "png": args.png is not None,
        "save_probabilities": args.save_probabilities,
        "progress": not args.no_progress,
        "ckpt_flag": "--ckpt",
    }


def _predict_folder(args: argparse.Namespace, ckpt: Path) -> int:
    from lckd_med.inference.batch import BatchInference

    source = Path(args.input).expanduser()
    if not source.exists():
        raise FileNotFoundError(f"--input {source} does not exist; give a folder of cases or a CSV manifest")
    if source.is_file() and not source.name.lower().endswith(".csv"):
        raise ValueError(
            f"--input {source} is a file; give a folder of cases (found at any depth) or a CSV manifest "
            "case_id,flair,t1,t1ce,t2 (one case: --flair/--t1/--t1ce/--t2 FILE -o seg.nii.gz)"
        )
    manifest = source if source.is_file() else None
    engine = BatchInference(
        ckpt,
        None if manifest is not None else source,
        Path(args.output).expanduser(),
        manifest=manifest,
        overwrite=args.overwrite,
        **_runner_options(args),
    )
    try:
        report = engine.run()
    except SystemExit as e:  # Ctrl-C between cases: the runner said what was done
        return int(e.code) if isinstance(e.code, int) else EXIT_FAILED
    failed = report[report["status"] != "ok"]
    for row in failed.itertuples():
        print(f"{_PROG}: error: {row.case_id}: {row.message}", file=sys.stderr)
    return EXIT_FAILED if len(failed) else EXIT_OK


def _predict_case(args: argparse.Namespace, ckpt: Path) -> int:
    from lckd_med.inference.batch import PROBABILITIES_DIR, BatchInference
    from lckd_med.inference.subset_dice import describe_source
    from lckd_med.utils.io import save_nifti_atomic
    from lckd_med.utils.outputs import check_output_file, make_work_dir, remove_stale_work_dirs

    paths = {m: getattr(args, m) for m in MODALITIES}
    out = Path(args.output).expanduser()
    png = (
        (out.with_name(_stem(out) + ".png") if args.png is True else Path(args.png).expanduser()) if args.png else None
    )
    probs = out.with_name(_stem(out) + "_probabilities.nii.gz") if args.save_probabilities else None
    inputs = [Path(p).expanduser() for p in paths.values() if p] + [ckpt]
    check_output_file(out, inputs=inputs, overwrite=args.overwrite, what="--output")
    if png is not None:
        check_output_file(png, inputs=[*inputs, out], overwrite=args.overwrite, what="--png")
    if probs is not None:
        check_output_file(probs, inputs=[*inputs, out], overwrite=args.overwrite, what="--save_probabilities file")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work_dirs(out.parent, PREDICT_WORK_PREFIX)
    work = make_work_dir(out.parent, PREDICT_WORK_PREFIX)
    name = _stem(out) if _stem(out) not in ("", ".", "..") else "case"  # names the case in messages and the picture
    try:
        manifest = work / "case.csv"
        with open(manifest, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["case_id", *MODALITIES])
            w.writerow([name, *(str(Path(paths[m]).expanduser().resolve()) if paths[m] else "" for m in MODALITIES)])
        engine = BatchInference(ckpt, None, work / "out", manifest=manifest, **_runner_options(args))
        (case,) = engine.cases()
        (work / "out").mkdir()
        row = engine.run_case(case)
        if row["status"] != "ok":
            _err(f"could not segment the case: {row['message']}")
            return EXIT_FAILED
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work / "out" / f"{name}.png", png)
        if probs is not None:
            os.replace(work / "out" / PROBABILITIES_DIR / f"{name}.nii.gz", probs)
        if out.name.lower().endswith(".nii.gz"):
            os.replace(row["output"], out)
        else:
            import nibabel as nib

            save_nifti_atomic(nib.Nifti1Image.from_image(nib.load(row["output"])), out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out} ({row['modalities']}, {row['seconds']:.1f} s)")
    for extra in (png, probs):
        if extra is not None:
            print(f"wrote {extra}")
    for part in str(row["message"] or "").split("; "):
        if part.startswith("warning: "):
            print(part, file=sys.stderr)
        elif part:
            print(f"note: {part}")
    expected = {
        k[len("expected_dice_") :]: v for k, v in row.items() if k.startswith("expected_dice_") and v is not None
    }
    if expected:
        print(
            f"Dice of this subset on {describe_source(engine.subset_dice_source)}, measured with these weights: "
            + ", ".join(f"{r} {v:.3f}" for r, v in expected.items())
        )
    else:
        print(
            f"no validation Dice for {row['modalities']} with these weights: evaluating the checkpoint (python -m "
            "monai.bundle run evaluate ...) writes subset_dice.json beside it, and predict then shows it"
        )
    return EXIT_OK


def evaluate_folder(args: argparse.Namespace) -> int:
    """``lckd-med evaluate-folder``: :func:`~lckd_med.reports.folder_scores.score_folder`, summary to stdout."""
    from lckd_med.constants import ET_MIN_VOXELS
    from lckd_med.reports.folder_scores import score_folder

    res = score_folder(
        args.pred_dir,
        args.labels,
        args.output_dir,
        subset=args.subset,
        release=args.release,
        postprocess_min_et=ET_MIN_VOXELS if args.postprocess_min_et is None else args.postprocess_min_et,
        progress=not args.no_progress,
        overwrite=args.overwrite,
    )
    for p in res.problems:
        print(f"left out: {p}")
    print(res.reports["summary_md"].read_text(encoding="utf-8"))
    print(f"{res.metrics['case_id'].nunique()} case(s) scored; reports in {args.output_dir}")
    return EXIT_OK


def prepare(argv: Sequence[str]) -> int:
    """``lckd-med prepare``: ``python -m data_prep.brats`` with the same options."""
    from data_prep import brats

    if any(a in ("-h", "--help") for a in argv):
        parser = brats.build_parser()
        parser.prog = f"{_PROG} prepare"
        parser.formatter_class = _formatter
        parser.epilog = PREPARE_EXAMPLE + "\n\n" + (parser.epilog or "")
        parser.print_help()
        return EXIT_OK
    return brats.main(list(argv))


def _export(args: argparse.Namespace) -> int:
    from lckd_med.engines.safetensors_io import export_safetensors, import_safetensors

    if args.command == "export-safetensors":
        out = export_safetensors(args.ckpt, args.output, overwrite=args.overwrite)
    else:
        out = import_safetensors(args.weights, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")
    return EXIT_OK


def import_checkpoint(args: argparse.Namespace) -> int:
    """``lckd-med import-checkpoint``: a released RFNet / mmFormer checkpoint -> model.pt."""
    from lckd_med.engines.published_import import import_published_checkpoint

    out = import_published_checkpoint(args.source, args.file, args.output, overwrite=args.overwrite)
    print(f"wrote {out}")
    return EXIT_OK


def run_guarded(work: Callable[[], int]) -> int:
    """Run a command's ``work``: an input or environment error becomes one ``lckd-med: error:`` line (exit status 1),
    Ctrl-C one line (exit status 130); ``LCKD_DEBUG=1`` lets the exception through."""
    return guarded(
        work,
        prefix=f"{_PROG}: error",
        interrupted="interrupted (Ctrl-C); files are written whole or not at all, so nothing half-written was left",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lckd-med``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":
        return prepare(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad argument (2)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_ARGS
    if args.command == "predict":
        return run_guarded(lambda: predict(args))
    if args.command == "evaluate-folder":
        return run_guarded(lambda: evaluate_folder(args))
    if args.command == "import-checkpoint":
        return run_guarded(lambda: import_checkpoint(args))
    return run_guarded(lambda: _export(args))


def _run() -> None:
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before a command's own handler (while importing)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    _run()
