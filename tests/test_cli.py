"""Tests of lckd_med.cli (``lckd-med``): every command's --help, predict on a two-sequence case, evaluate-folder,
safetensors export/import, and the pyproject entry point."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from lckd_med.cli import main
from tests.testkit import save_tiny_checkpoint, write_nifti

REPO = Path(__file__).resolve().parents[1]
SHAPE = (24, 22, 16)
COMMANDS = (
    "predict",
    "prepare",
    "evaluate-folder",
    "export-safetensors",
    "export-torchscript",
    "import-safetensors",
    "import-checkpoint",
)


def lps_affine() -> np.ndarray:
    aff = np.diag([-1.0, -1.0, 1.0, 1.0])
    aff[:3, 3] = [SHAPE[0] - 1 + 3.0, SHAPE[1] - 1 - 8.0, -4.0]
    return aff


def write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    return write_nifti(path, data, lps_affine() if affine is None else affine)


def volume(seed: int) -> np.ndarray:
    data = np.zeros(SHAPE, np.float32)
    data[3:20, 4:18, 2:13] = np.random.default_rng(seed).uniform(1.0, 3.0, size=(17, 14, 11))
    return data


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    subset_dice = {"flair+t1ce": {"ET": 0.5, "TC": 0.6, "WT": 0.7}}
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", subset_dice=subset_dice)


# ---------------------------------------------------------------------------------------------- help and entry point


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command, capsys):
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert f"lckd-med {command}" in text and "example:" in text and f"lckd-med {command} --" in text


def test_top_level_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(c in text for c in COMMANDS)
    assert main([]) == 2


def test_pyproject_entry_point_is_main_and_module_runs():
    # tomllib is 3.11+ and the project supports 3.10: read the one line of the [project.scripts] table
    section = (REPO / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    module, func = re.search(r'^lckd-med\s*=\s*"([\w.]+):(\w+)"', section, re.MULTILINE).groups()
    assert getattr(importlib.import_module(module), func) is main
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "lckd_med.cli", "predict", "--help"], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert done.returncode == 0 and "lckd-med predict" in done.stdout


# ---------------------------------------------------------------------------------------------- predict


def test_predict_two_sequences_overlays_the_reference_input(ckpt, tmp_path, capsys):
    flair = write(tmp_path / "in" / "x_flair.nii.gz", volume(1))
    t1ce = write(tmp_path / "in" / "x_t1ce.nii.gz", volume(2))
    out = tmp_path / "seg" / "x_seg.nii.gz"
    rc = main(
        ["predict", "--flair", str(flair), "--t1ce", str(t1ce), "-o", str(out), "--ckpt", str(ckpt), "--device", "cpu"]
    )
    text = capsys.readouterr().out
    assert rc == 0, text
    assert f"wrote {out} (flair+t1ce" in text and "ET 0.500" in text
    seg, ref = nib.load(out), nib.load(t1ce)
    assert seg.shape == ref.shape and seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(seg.affine, ref.affine)
    assert int(seg.header["sform_code"]) == int(ref.header["sform_code"])
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
    assert not labels[volume(2) == 0].any()  # nothing outside the brain box
    assert sorted(p.name for p in out.parent.iterdir()) == ["x_seg.nii.gz"]  # no temporary leftovers


def test_predict_writes_uncompressed_nifti(ckpt, tmp_path):
    t2 = write(tmp_path / "t2.nii.gz", volume(3))
    out = tmp_path / "seg.nii"
    assert main(["predict", "--t2", str(t2), "-o", str(out), "--ckpt", str(ckpt), "--device", "cpu"]) == 0
    assert nib.load(out).shape == SHAPE


@pytest.mark.parametrize(
    "args, rc, expected",
    [
        (["-o", "seg.nii.gz"], 2, "at least one sequence"),
        (["--t1", "T1", "-o", "seg.png"], 2, "must end in .nii.gz"),
        (["--t1", "T1", "-o", "seg.nii.gz", "--ckpt", "missing.pt"], 1, "no checkpoint"),
        (["--t1", "missing_t1.nii.gz", "-o", "seg.nii.gz", "--ckpt", "CKPT"], 1, "does not exist"),
        (["--t1", "T1", "-o", "seg.nii.gz", "--ckpt", "CKPT", "--threshold", "2"], 2, "threshold"),
    ],
)
def test_predict_bad_input(ckpt, tmp_path, capsys, args, rc, expected):
    t1 = write(tmp_path / "t1.nii.gz", volume(4))
    subst = {"T1": str(t1), "CKPT": str(ckpt)}
    args = [subst.get(a, a) for a in args]
    args = [str(tmp_path / a) if a.endswith((".nii.gz", ".png", ".pt")) and not os.path.isabs(a) else a for a in args]
    assert main(["predict", "--device", "cpu", *args]) == rc
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


# ---------------------------------------------------------------------------------------------- evaluate-folder


def test_evaluate_folder_scores_predictions(tmp_path, capsys):
    labels, preds = tmp_path / "labels", tmp_path / "preds"
    gt = np.zeros(SHAPE, np.uint8)
    gt[5:15, 5:15, 3:10] = 2
    gt[8:12, 8:12, 5:8] = 4
    for cid in ("a", "b"):
        write(labels / f"{cid}_seg.nii.gz", gt)
    write(preds / "a.nii.gz", gt)  # perfect
    half = gt.copy()
    half[half == 4] = 1  # ET called necrosis: ET Dice 0, TC and WT perfect
    write(preds / "b.nii.gz", half)
    write(preds / "stray.nii.gz", gt)  # no label: left out, reported
    rc = main(
        [
            "evaluate-folder",
            "--pred_dir",
            str(preds),
            "--labels",
            str(labels),
            "-o",
            str(tmp_path / "r"),
            "--no_progress",
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and "left out: stray: no label" in text and "2 case(s) scored" in text
    df = pd.read_csv(tmp_path / "r" / "subset_metrics.csv").set_index(["case_id", "region"])
    assert df.loc[("a", "ET"), "dice"] == 1.0 and df.loc[("a", "WT"), "hd95"] == 0.0
    assert df.loc[("b", "ET"), "dice"] == 0.0 and df.loc[("b", "TC"), "dice"] == 1.0
    assert set(df["subset"]) == {"flair+t1+t1ce+t2"}
    assert (tmp_path / "r" / "subset_dice_heatmap.png").is_file()


def test_evaluate_folder_nothing_to_score(tmp_path, capsys):
    (tmp_path / "p").mkdir()
    (tmp_path / "l").mkdir()
    assert (
        main(
            [
                "evaluate-folder",
                "--pred_dir",
                str(tmp_path / "p"),
                "--labels",
                str(tmp_path / "l"),
                "-o",
                str(tmp_path / "r"),
            ]
        )
        == 1
    )
    assert "no prediction" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- safetensors


def test_safetensors_round_trip_through_cli(ckpt, tmp_path, capsys):
    from lckd_med.engines.checkpoint import build_network, load_checkpoint

    st = tmp_path / "model.safetensors"
    assert main(["export-safetensors", "--ckpt", str(ckpt), "-o", str(st)]) == 0
    back = tmp_path / "back.pt"
    assert main(["import-safetensors", "--weights", str(st), "-o", str(back)]) == 0
    a, b = load_checkpoint(ckpt), load_checkpoint(back)
    assert a["network"] == b["network"] and a["label_convention"] == b["label_convention"]
    assert a["subset_dice"] == b["subset_dice"] and a["train_config"] == b["train_config"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(build_network(a).eval()(x), build_network(b).eval()(x), rtol=0, atol=0)


def test_export_torchscript_reproduces_the_network_with_sequences_missing(ckpt, tmp_path, capsys):
    from lckd_med.engines.checkpoint import build_network, load_checkpoint

    ts = tmp_path / "model.ts"
    assert main(["export-torchscript", "--ckpt", str(ckpt), "-o", str(ts), "--input_shape", "1,4,16,16,16"]) == 0
    assert f"wrote {ts}" in capsys.readouterr().out
    x = torch.randn(1, 4, 16, 16, 16)
    x[:, 1] = 0  # T1 missing: an all-zero channel
    mask = torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        expected = build_network(load_checkpoint(ckpt)).eval()(x, mask)
        torch.testing.assert_close(torch.jit.load(str(ts))(x), expected, rtol=1e-4, atol=1e-4)


def test_prepare_runs_data_prep(tmp_path, capsys):
    from lckd_med.data.synthetic import write_dataset

    write_dataset(tmp_path / "downloads" / "brats", 3, seed=1, spacing=4.0, release=2021)
    out = tmp_path / "dl.json"
    assert (
        main(["prepare", "--dataset_dir", str(tmp_path), "--output", str(out), "--workers", "1", "--folds", "3"]) == 0
    )
    text = capsys.readouterr().out
    assert "cases found: 3" in text and f"found {tmp_path / 'downloads' / 'brats'}: 3 case(s)" in text
    assert out.is_file()
    assert main(["prepare", "--dataset_dir", str(tmp_path / "none"), "--output", str(out)]) == 1


# ---------------------------------------------------------------------------------------------- fast start


def test_help_and_argument_errors_import_neither_torch_nor_monai():
    """Every command's --help and an argument error run without importing torch or MONAI (the start-up time is
    measured side by side with `import torch` by python -m lckd_med.benchmarks.startup, not here)."""
    code = (
        "import json, sys\n"
        "from lckd_med.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    try:\n"
        "        main(argv.split())\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(json.dumps(sorted(m for m in ('torch', 'monai') if m in sys.modules)))\n"
    )
    runs = [f"{c} --help" for c in COMMANDS] + ["--help", "predict -o seg.nii.gz", "predict --grid t3 -o s.nii.gz"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, *runs], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:]
    assert "argument --grid" in done.stderr and "give -i/--input" in done.stderr


# ---------------------------------------------------------------------------------------------- folders, extras


def write_cases(root: Path) -> dict[str, Path]:
    """A BraTS 2018 tree (HGG/LGG nesting) and a 2023-named case one level deeper: what prepare finds."""
    cases = {
        "Brats18_A_1": root / "MICCAI_BraTS_2018" / "HGG" / "Brats18_A_1",
        "Brats18_B_1": root / "MICCAI_BraTS_2018" / "LGG" / "Brats18_B_1",
        "BraTS-GLI-00001-000": root / "more" / "2023" / "BraTS-GLI-00001-000",
    }
    for i, (cid, folder) in enumerate(cases.items()):
        names = ("t2f", "t1c") if "GLI" in cid else ("flair", "t1ce")
        sep = "-" if "GLI" in cid else "_"
        for j, suffix in enumerate(names):
            write(folder / f"{cid}{sep}{suffix}.nii.gz", volume(10 * i + j))
    return cases


def test_predict_a_folder_finds_every_case_below_it_as_prepare_does(ckpt, tmp_path, capsys):
    inp, out = tmp_path / "downloads", tmp_path / "segs"
    cases = write_cases(inp)
    args = ["predict", "-i", str(inp), "-o", str(out), "--ckpt", str(ckpt), "--device", "cpu", "--no_progress"]
    assert main([*args, "--png", "--save_probabilities"]) == 0, capsys.readouterr()
    text = capsys.readouterr().out
    assert "3/3 case(s) segmented" in text and "voxels of 1 x 1 x 1 mm" in text  # the output size, with units
    report = pd.read_csv(out / "inference_report.csv").set_index("case_id")
    assert sorted(report.index) == sorted(cases) and (report["status"] == "ok").all()
    for cid in cases:
        assert nib.load(out / f"{cid}.nii.gz").shape == SHAPE
        assert (out / f"{cid}.png").stat().st_size > 0
        assert nib.load(out / "probabilities" / f"{cid}.nii.gz").shape == (*SHAPE, 3)
    # the same command again: every case up to date, the time each took kept (not the skip's)
    assert main([*args, "--png", "--save_probabilities"]) == 0
    again = pd.read_csv(out / "inference_report.csv").set_index("case_id")
    assert again["message"].str.contains("up to date").all()
    assert again["seconds"].to_dict() == report["seconds"].to_dict() and (again["seconds"] > 0).all()
    # the user's own file where a picture would go is never replaced
    (out / "Brats18_A_1.png").write_bytes(b"mine")
    assert main([*args, "--png", "--overwrite"]) == 1
    assert "Brats18_A_1.png exists and was not written by lckd_med" in capsys.readouterr().err
    assert (out / "Brats18_A_1.png").read_bytes() == b"mine"


def test_predict_one_case_with_a_picture_probabilities_a_grid_and_a_safetensors_file(ckpt, tmp_path, capsys):
    st = tmp_path / "model.safetensors"
    assert main(["export-safetensors", "--ckpt", str(ckpt), "-o", str(st)]) == 0
    flair = write(tmp_path / "x_flair.nii.gz", volume(1))
    out = tmp_path / "x_seg.nii.gz"
    args = ["predict", "--flair", str(flair), "-o", str(out), "--ckpt", str(st), "--device", "cpu", "--grid", "finest"]
    assert main([*args, "--png", "--save_probabilities"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {tmp_path / 'x_seg.png'}" in text and f"wrote {tmp_path / 'x_seg_probabilities.nii.gz'}" in text
    assert nib.load(tmp_path / "x_seg_probabilities.nii.gz").shape == (*SHAPE, 3)
    assert "ET 0.500" not in text and "no validation Dice for flair with these weights" in text
    picture = tmp_path / "pictures" / "case.png"
    picture.parent.mkdir()
    picture.write_bytes(b"mine")  # the user's file where the picture would go: refused, kept
    assert main([*args, "-o", str(tmp_path / "z.nii.gz"), "--png", str(picture)]) == 1
    assert "case.png exists; it was left untouched: choose another --png path" in capsys.readouterr().err
    assert picture.read_bytes() == b"mine" and not (tmp_path / "z.nii.gz").exists()
    assert main([*args, "--png", str(picture), "--overwrite"]) == 0 and picture.read_bytes() != b"mine"
    # errors name the flag the user gave
    assert main(["predict", "--flair", str(flair), "-o", str(tmp_path / "y.nii.gz"), "--ckpt", str(tmp_path)]) == 1
    assert "is a folder; give the checkpoint file" in capsys.readouterr().err
    assert main(["predict", "--flair", str(flair), "-o", str(tmp_path / "y.nii.gz"), "--ckpt", "absent.pt"]) == 1
    err = capsys.readouterr().err
    assert "point --ckpt at" in err and "ckpt_dir" not in err


@pytest.mark.parametrize(
    "given, expected",
    [
        ("missing", "--input {} does not exist"),
        ("scan.nii.gz", "--input {} is a file; give a folder of cases"),
        ("empty", "no cases found in {}"),
    ],
)
def test_predict_a_folder_with_a_bad_input_is_one_line(ckpt, tmp_path, capsys, given, expected):
    write(tmp_path / "scan.nii.gz", volume(1))
    (tmp_path / "empty").mkdir()
    source = tmp_path / given
    argv = ["predict", "-i", str(source), "-o", str(tmp_path / "out"), "--ckpt", str(ckpt), "--device", "cpu"]
    assert main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and expected.format(source) in lines[0], lines
    assert not (tmp_path / "out").exists() or given == "empty"


# ---------------------------------------------------------------------------------------------- progress


def _run_on_a_terminal(runs: list[list[str]], env: dict[str, str]) -> str:
    """Run ``lckd-med <argv>`` for each of ``runs`` in one fresh interpreter whose standard error is a
    pseudo-terminal; what they drew there."""
    import fcntl
    import select
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a new pty is 0 x 0, a terminal not
    code = "import json, sys; from lckd_med.cli import main; sys.exit(max(main(a) for a in json.loads(sys.argv[1])))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(runs)], stdout=subprocess.DEVNULL, stderr=slave, env=env, cwd=REPO
    )
    os.close(slave)
    drawn = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            drawn += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=120)
    os.close(master)
    assert proc.returncode == 0, drawn.decode(errors="replace")[-2000:]
    return drawn.decode(errors="replace")


def test_progress_is_drawn_on_a_terminal_per_case_and_window(ckpt, tmp_path):
    """Under a pseudo-terminal: a bar over the cases and one over each case's windows, for a folder and for one
    case (CI stays quiet: tests/inference/test_segmenter.py, tests/utils/test_progress.py)."""
    cases = write_cases(tmp_path / "in")
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "LCKD_MED_PROGRESS")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    args = ["predict", "--ckpt", str(ckpt), "--device", "cpu"]
    batch = [*args, "-i", str(tmp_path / "in"), "-o", str(tmp_path / "a")]
    flair = next(cases["Brats18_A_1"].glob("*_flair.nii.gz"))
    single = [*args, "--flair", str(flair), "-o", str(tmp_path / "one_seg.nii.gz")]
    drawn = _run_on_a_terminal([batch, single], env)
    assert "inference: " in drawn and "3/3" in drawn  # the bar over cases
    assert "Brats18_A_1: " in drawn and "window" in drawn  # a bar over each case's windows
    assert "one_seg: " in drawn  # one case: the bar over its windows


@pytest.mark.parametrize("command", COMMANDS)
def test_every_example_in_the_help_parses(command, capsys):
    """The examples `lckd-med <command> --help` shows take only flags the command accepts (the import-safetensors
    example used to pass --ckpt, which it rejects)."""
    import shlex

    from data_prep import brats
    from lckd_med.cli import build_parser

    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out.replace("\\\n", " ")
    examples = [line.strip() for line in text.splitlines() if line.strip().startswith(f"lckd-med {command} ")]
    assert examples
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    parser = brats.build_parser() if command == "prepare" else sub[command]
    for example in examples:
        parser.parse_args(shlex.split(example)[2:])  # exits (status 2) on a flag it does not take
