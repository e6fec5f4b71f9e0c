"""Reliability of the command-line tools (``lckd-med``, ``python -m data_prep.brats``, ``python -m data_prep.synthetic``):
every flag with a bad value is one line, nothing a command did not write is replaced, garbage is refused, Ctrl-C and
file-system errors are one line, and working folders of killed runs are cleaned."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import data_prep.brats
import data_prep.synthetic
from lckd_med import cli
from lckd_med.data.synthetic import case_id_for, write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME
from lckd_med.reports.subset_report import REPORT_FILES
from lckd_med.utils.outputs import OWNER_MARKER
from tests.testkit import mri_like, published_rfnet_checkpoint, save_tiny_checkpoint, tiny_rfnet, write_nifti

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (24, 22, 16)
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume(seed: int = 0) -> np.ndarray:
    data = np.zeros(SHAPE, np.float32)
    data[3:21, 3:19, 2:14] = mri_like((18, 16, 12), seed, 1.0, 3.0)
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    ckpt = save_tiny_checkpoint(root / "models" / "model.pt")
    labels = root / "labels"
    gt = np.zeros(SHAPE, np.uint8)
    gt[5:15, 5:15, 3:10] = 2
    gt[8:12, 8:12, 5:8] = 4
    write_nifti(labels / "a_seg.nii.gz", gt, AFFINE)
    write_nifti(root / "preds" / "a.nii.gz", gt, AFFINE)
    write_dataset(root / "brats", 3, seed=1, spacing=4.0, release=2021)
    released = root / "released" / "rfnet_model_last.pth"
    released.parent.mkdir()
    torch.save(published_rfnet_checkpoint(tiny_rfnet()), released)
    return {
        "released": released,
        "root": root,
        "ckpt": ckpt,
        "t1": write_nifti(root / "in" / "x_t1.nii.gz", volume(1), AFFINE),
        "t2": write_nifti(root / "in" / "x_t2.nii.gz", volume(2), AFFINE),
        "labels": labels,
        "preds": root / "preds",
        "brats": root / "brats",
        "folder": root / "in",
    }


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    return lines[0]


# ---------------------------------------------------------------------------------------------- every flag, bad value

# command -> (base arguments, {flag: (bad value(s), exit status, part of the message)}); the base arguments are
# valid, the bad flag comes last and wins. Every flag of every parser must be listed (store_true flags excepted).
F = "FOLDER"
FLAGS: dict[str, tuple[list[str], dict[str, tuple[list[str], int, str]]]] = {
    "predict": (
        ["--t1", "T1", "-o", "OUT/seg.nii.gz", "--ckpt", "CKPT", "--device", "cpu"],
        {
            "--flair": ([F], 1, "is a folder"),
            "--t1": ([F], 1, "is a folder"),
            "--t1ce": ([F], 1, "is a folder"),
            "--t2": ([F], 1, "is a folder"),
            "--output": (["seg.png"], 2, "must end in .nii.gz"),
            "--ckpt": ([F], 1, "is a folder"),
            "--device": (["cuda:7"], 2, "argument --device"),
            "--overlap": (["nan"], 2, "argument --overlap: must be a number in [0, 1)"),
            "--threshold": (["nan"], 2, "argument --threshold: must be a number in (0, 1)"),
            "--roi_size": (["16", "16", "0"], 2, "argument --roi_size: must be a whole number >= 1"),
            "--label_convention": (["brats1999"], 2, "argument --label_convention"),
            "--input": (["MISSING"], 2, "give either -i/--input (a folder of cases) or sequence files"),
            "--grid": (["t3"], 2, "argument --grid: must be a sequence (flair, t1, t1ce, t2) or coarsest / finest"),
            "--png": (["seg.txt"], 2, "argument --png: must name a .png file"),
        },
    ),
    "evaluate-folder": (
        ["--pred_dir", "PREDS", "--labels", "LABELS", "-o", "OUT/r", "--no_progress"],
        {
            "--pred_dir": (["MISSING"], 1, "does not exist"),
            "--labels": (["CKPT"], 1, "does not exist or is not a folder"),
            "--output_dir": (["CKPT"], 1, "is a file"),
            "--subset": (["t3"], 1, "unknown subset"),
            "--release": (["latest"], 2, "argument --release"),
            "--postprocess_min_et": (["-1"], 2, "argument --postprocess_min_et: must be a whole number >= 0"),
        },
    ),
    "export-safetensors": (
        ["--ckpt", "CKPT", "-o", "OUT/m.safetensors"],
        {"--ckpt": ([F], 1, "is a folder"), "--output": (["OUT/m.pt"], 1, "must end in .safetensors")},
    ),
    "import-safetensors": (
        ["--weights", "OUT/none.safetensors", "-o", "OUT/m.pt"],
        {"--weights": ([F], 1, "is a folder"), "--output": ([F], 1, "is a folder")},
    ),
    "import-checkpoint": (
        ["--from", "rfnet", "RELEASED", "-o", "OUT/m.pt"],
        {
            "--from": (["nnunet"], 2, "argument --from: must be one of rfnet / mmformer"),
            "--output": (["OUT/m.pth"], 1, "--output must end in .pt"),
        },
    ),
    "data_prep.brats": (
        ["--dataset_dir", "BRATS", "--output", "OUT/dl.json", "--workers", "1"],
        {
            "--dataset_dir": (["MISSING"], 1, "does not exist"),
            "--output": ([F], 2, "--output is a folder"),
            "--folds": (["five"], 2, "argument --folds: must be a whole number"),
            "--seed": (["-1"], 2, "seed must be >= 0"),
            "--test_fold": (["first"], 2, "fold number or 'none'"),
            "--val_fold": (["x"], 2, "argument --val_fold: must be a whole number"),
            "--protocol": (["lckd1999"], 2, "invalid choice"),
            "--split_lists": (["nonsense"], 2, "SPLIT=FILE"),
            "--layout": (["brats2016"], 2, "invalid choice"),
            "--release": (["latest"], 2, "release must be a BraTS year"),
            "--workers": (["0"], 2, "argument --workers: must be a whole number >= 1"),
        },
    ),
    "data_prep.synthetic": (
        ["--out", "OUT/syn", "--cases", "1", "--spacing", "2"],
        {
            "--out": (["CKPT"], 1, "error:"),
            "--cases": (["0"], 2, "must be >= 1"),
            "--seed": (["-1"], 2, "must be >= 0"),
            "--spacing": (["3"], 2, "must be 1 or 2"),
            "--release": (["1999"], 2, "argument --release"),
            "--lgg_fraction": (["nan"], 2, "expected a number in [0, 1]"),
            "--missing_fraction": (["2"], 2, "must be in [0, 1]"),
        },
    ),
}


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "data_prep.brats":
        return data_prep.brats.build_parser()
    if command == "data_prep.synthetic":
        return data_prep.synthetic.build_parser()
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def _run(command: str, argv: list[str]) -> int:
    if command == "data_prep.brats":
        return data_prep.brats.main(argv)
    if command == "data_prep.synthetic":
        try:
            return data_prep.synthetic.main(argv)
        except SystemExit as e:
            return int(e.code or 0)
    return cli.main([command, *argv])


def test_the_table_lists_every_flag_of_every_command():
    for command, (_, bad) in FLAGS.items():
        flags = {
            a.option_strings[-1]
            for a in _parser(command)._actions
            if a.option_strings and not isinstance(a, (argparse._HelpAction, argparse._StoreTrueAction))
        }
        assert flags == set(bad), f"{command}: flags without a bad-value case: {flags - set(bad)}"


CASES = [(cmd, flag) for cmd, (_, bad) in FLAGS.items() for flag in bad]


@pytest.mark.parametrize(("command", "flag"), CASES, ids=[f"{c}{f}" for c, f in CASES])
def test_a_bad_value_of_every_flag_is_one_line(files, tmp_path, capsys, command, flag):
    base, bad = FLAGS[command]
    values, status, expected = bad[flag]
    subst = {
        "T1": str(files["t1"]),
        "CKPT": str(files["ckpt"]),
        "RELEASED": str(files["released"]),
        "PREDS": str(files["preds"]),
        "LABELS": str(files["labels"]),
        "BRATS": str(files["brats"]),
        F: str(files["folder"]),
        "MISSING": str(tmp_path / "missing"),
    }
    argv = [subst.get(a, a.replace("OUT", str(tmp_path))) for a in [*base, flag, *values]]
    assert _run(command, argv) == status
    line = _one_error_line(capsys.readouterr().err)
    assert expected in line, line


# ---------------------------------------------------------------------------------------------- nothing replaced


def _user_file(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"the user's own file")
    return path.read_bytes()


def test_predict_never_replaces_a_file_it_did_not_write(files, tmp_path, capsys):
    out = tmp_path / "seg.nii.gz"
    kept = _user_file(out)
    args = ["predict", "--t1", str(files["t1"]), "--ckpt", str(files["ckpt"]), "--device", "cpu", "-o", str(out)]
    assert cli.main(args) == 1
    assert "seg.nii.gz exists; it was left untouched" in _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == kept
    assert cli.main([*args, "--overwrite"]) == 0 and nib.load(out).shape == SHAPE
    # the output is an input: refused even with --overwrite, the scan untouched
    scan = files["t2"].read_bytes()
    same = ["predict", "--t2", str(files["t2"]), "--ckpt", str(files["ckpt"]), "-o", str(files["t2"]), "--overwrite"]
    assert cli.main(same) == 1
    assert "is also an input" in _one_error_line(capsys.readouterr().err)
    assert files["t2"].read_bytes() == scan and sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_safetensors_commands_never_replace_a_file_they_did_not_write(files, tmp_path, capsys):
    ckpt = tmp_path / "model.pt"
    shutil.copy(files["ckpt"], ckpt)
    default = ckpt.with_suffix(".safetensors")
    kept = _user_file(default)
    assert cli.main(["export-safetensors", "--ckpt", str(ckpt)]) == 1
    assert "left untouched" in _one_error_line(capsys.readouterr().err) and default.read_bytes() == kept
    assert cli.main(["export-safetensors", "--ckpt", str(ckpt), "--overwrite"]) == 0
    assert oct(default.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # like any other output, not 0600
    # import over a training checkpoint: refused (its optimiser and election state would be lost)
    before = ckpt.read_bytes()
    assert cli.main(["import-safetensors", "--weights", str(default), "-o", str(ckpt)]) == 1
    assert "model.pt exists; it was left untouched" in _one_error_line(capsys.readouterr().err)
    assert ckpt.read_bytes() == before
    assert cli.main(["import-safetensors", "--weights", str(default), "-o", str(ckpt), "--overwrite"]) == 0
    assert load_checkpoint(ckpt)["imported_from"] == str(default.resolve())
    assert cli.main(["import-safetensors", "--weights", str(default), "-o", str(default), "--overwrite"]) == 1
    assert "is also an input" in _one_error_line(capsys.readouterr().err)
    capsys.readouterr()


def test_import_checkpoint_never_replaces_a_file_it_did_not_write(files, tmp_path, capsys):
    out = tmp_path / "model.pt"
    kept = _user_file(out)
    argv = ["import-checkpoint", "--from", "rfnet", str(files["released"]), "-o", str(out)]
    assert cli.main(argv) == 1
    assert "model.pt exists; it was left untouched" in _one_error_line(capsys.readouterr().err)
    assert out.read_bytes() == kept
    assert cli.main([*argv, "--overwrite"]) == 0 and load_checkpoint(out)["network"]["name"] == "RFNet"
    # the output is the input: refused even with --overwrite, the released file untouched
    released = tmp_path / "released.pt"
    shutil.copy(files["released"], released)
    before = released.read_bytes()
    assert cli.main(["import-checkpoint", "--from", "rfnet", str(released), "-o", str(released), "--overwrite"]) == 1
    assert "is also an input" in _one_error_line(capsys.readouterr().err) and released.read_bytes() == before
    capsys.readouterr()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("report", sorted(REPORT_FILES.values()))
def test_evaluate_folder_never_replaces_a_report_it_did_not_write(files, tmp_path, capsys, report):
    out = tmp_path / "r"
    kept = _user_file(out / report)
    args = ["evaluate-folder", "--pred_dir", str(files["preds"]), "--labels", str(files["labels"]), "-o", str(out)]
    assert cli.main([*args, "--no_progress"]) == 1
    assert f"{report} exists and was not written by lckd_med" in _one_error_line(capsys.readouterr().err)
    assert (out / report).read_bytes() == kept and sorted(p.name for p in out.iterdir()) == [report]
    assert cli.main([*args, "--no_progress", "--overwrite"]) == 0
    assert cli.main([*args, "--no_progress"]) == 0  # its own reports: replaced without --overwrite
    capsys.readouterr()


def test_prepare_never_replaces_a_file_it_did_not_write(files, tmp_path, capsys):
    out = tmp_path / "dl.json"
    base = ["prepare", "--dataset_dir", str(files["brats"]), "--workers", "1", "--folds", "3", "--output", str(out)]
    assert cli.main(base) == 0
    assert cli.main(base) == 0  # its own datalist, unchanged: regenerated
    edited = json.loads(out.read_text())
    edited["meta"]["note"] = "checked by hand"
    out.write_text(json.dumps(edited))
    kept = out.read_bytes()
    assert cli.main(base) == 2
    assert "edited since lckd_med wrote it" in _one_error_line(capsys.readouterr().err) and out.read_bytes() == kept
    assert cli.main([*base, "--overwrite"]) == 0 and out.read_bytes() != kept
    scan = next(files["brats"].rglob("*_t1.nii.gz"))
    data = scan.read_bytes()
    argv = ["prepare", "--dataset_dir", str(files["brats"]), "--workers", "1", "--output", str(scan), "--overwrite"]
    assert cli.main(argv) == 2
    assert "is a file of the dataset" in _one_error_line(capsys.readouterr().err) and scan.read_bytes() == data


def test_synthetic_data_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--cases", "1", "--spacing", "2", "--release", "2021"]
    case = case_id_for(2021, 0)
    target = tmp_path / case / f"{case}_t1.nii.gz"
    kept = _user_file(target)
    assert data_prep.synthetic.main(argv) == 1
    assert f"{case}_t1.nii.gz exists" in _one_error_line(capsys.readouterr().err)
    assert target.read_bytes() == kept and sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert data_prep.synthetic.main([*argv, "--overwrite"]) == 0 and target.read_bytes() != kept


# ---------------------------------------------------------------------------------------------- garbage in


def _garbage(kind: str) -> np.ndarray:
    rng = np.random.default_rng(0)
    if kind == "binary_mask":
        return (volume() > 2).astype(np.float32)
    if kind == "constant":
        return np.full(SHAPE, 7.0, np.float32)
    if kind == "noise":
        return rng.random(SHAPE, dtype=np.float32) + 0.5
    if kind == "one_voxel":
        data = np.zeros(SHAPE, np.float32)
        data[5, 5, 5] = 1.0
        return data
    return np.ones((1, 1, 1), np.float32)


@pytest.mark.parametrize("kind", ["binary_mask", "constant", "noise", "one_voxel", "1x1x1"])
def test_predict_refuses_what_cannot_be_a_head_mri(files, tmp_path, capsys, kind):
    bad = write_nifti(tmp_path / "x_flair.nii.gz", _garbage(kind), AFFINE)
    out = tmp_path / "seg.nii.gz"
    args = ["--flair", str(bad), "--t1", str(files["t1"]), "--ckpt", str(files["ckpt"]), "--device", "cpu"]
    assert cli.main(["predict", *args, "-o", str(out)]) == 1
    line = _one_error_line(capsys.readouterr().err)
    assert "does not look like an MRI of a head" in line and str(bad) in line and not out.exists()


@pytest.mark.parametrize("how", ["same_path", "symlink", "copy", "two_patients"])
def test_predict_refuses_one_scan_as_two_sequences_and_two_patients(files, tmp_path, capsys, how):
    t1 = files["t1"]
    if how == "same_path":
        other = t1
    elif how == "symlink":
        other = tmp_path / "x_t2.nii.gz"
        other.symlink_to(t1)
    elif how == "copy":
        other = shutil.copy(t1, tmp_path / "x_t2.nii.gz")
    else:
        other = shutil.copy(files["t2"], tmp_path / "y_t2.nii.gz")  # prefix y, t1's is x
    out = tmp_path / "seg.nii.gz"
    args = ["--t1", str(t1), "--t2", str(other), "--ckpt", str(files["ckpt"]), "--device", "cpu", "-o", str(out)]
    assert cli.main(["predict", *args]) == 1
    line = _one_error_line(capsys.readouterr().err)
    expected = (
        "name different cases" if how == "two_patients" else ("is the t1 file" if how != "copy" else "same content")
    )
    assert expected in line and not out.exists()


# ---------------------------------------------------------------------------------------------- signals, file systems


def test_ctrl_c_in_predict_and_prepare_is_one_line_and_status_130(files, tmp_path, capsys, monkeypatch):
    from lckd_med.inference.batch import BatchInference

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchInference, "run_case", interrupted)
    out = tmp_path / "seg.nii.gz"
    args = ["predict", "--t1", str(files["t1"]), "--ckpt", str(files["ckpt"]), "--device", "cpu", "-o", str(out)]
    assert cli.main(args) == 130
    assert "interrupted (Ctrl-C)" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # no output, no working folder
    monkeypatch.setattr(data_prep.brats, "validate_cases", interrupted)
    argv = ["prepare", "--dataset_dir", str(files["brats"]), "--output", str(tmp_path / "dl.json"), "--workers", "1"]
    assert cli.main(argv) == 130
    assert "interrupted (Ctrl-C); no datalist was written" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "dl.json").exists()


class _OsWith:
    """``os`` with some functions replaced, for one module."""

    def __init__(self, **replaced) -> None:
        self._replaced = replaced

    def __getattr__(self, name):
        return self._replaced.get(name) or getattr(os, name)


@pytest.mark.parametrize(("errno", "strerror"), [(30, "Read-only file system"), (28, "No space left on device")])
def test_file_system_errors_are_one_line(files, tmp_path, capsys, monkeypatch, errno, strerror):
    out = tmp_path / "seg.nii.gz"
    args = ["predict", "--t1", str(files["t1"]), "--ckpt", str(files["ckpt"]), "--device", "cpu", "-o"]
    # -o under an existing file
    (tmp_path / "file").write_text("x")
    assert cli.main([*args, str(tmp_path / "file" / "seg.nii.gz")]) == 1
    assert "file is a file, not a folder" in _one_error_line(capsys.readouterr().err)

    # a read-only or full file system at the final rename
    def failing(src, dst):
        raise OSError(errno, strerror, str(dst))

    monkeypatch.setattr(cli, "os", _OsWith(replace=failing))
    assert cli.main([*args, str(out)]) == 1
    assert _one_error_line(capsys.readouterr().err) == f"lckd-med: error: {out}: {strerror}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # the working folder is gone too


def test_a_working_folder_of_a_killed_predict_is_removed_at_the_next_run(files, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = tmp_path / ".lckd_predict_killed"
    stale.mkdir()
    (stale / OWNER_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    theirs = tmp_path / ".lckd_predict_theirs"  # no owner marker: not provably ours
    theirs.mkdir()
    args = ["predict", "--t1", str(files["t1"]), "--ckpt", str(files["ckpt"]), "--device", "cpu"]
    assert cli.main([*args, "-o", str(tmp_path / "seg.nii.gz")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lckd_predict_theirs", "seg.nii.gz"]


def test_predict_says_which_split_and_weights_its_dice_come_from(files, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(files["ckpt"].parent, models)
    ckpt = load_checkpoint(models / "model.pt")
    source = {"split": "validation", "datalist": "/d/datalist.json", "n_cases": 7, "iteration": 0}
    scores = {"subset_dice": {"t1": {"ET": 0.1, "TC": 0.2, "WT": 0.3}}}
    (models / SUBSET_DICE_NAME).write_text(json.dumps({**scores, "source": {**source, "weights_sha256": "0" * 64}}))
    args = ["predict", "--t1", str(files["t1"]), "--ckpt", str(models / "model.pt"), "--device", "cpu", "-o"]
    assert cli.main([*args, str(tmp_path / "a.nii.gz")]) == 0
    assert "Dice of this subset" not in capsys.readouterr().out  # measured with other weights: not shown
    source["weights_sha256"] = ckpt["weights_sha256"]
    (models / SUBSET_DICE_NAME).write_text(json.dumps({**scores, "source": source}))
    assert cli.main([*args, str(tmp_path / "b.nii.gz")]) == 0
    text = capsys.readouterr().out
    assert "Dice of this subset on the validation split of datalist.json (7 cases), measured with these weights" in text
    assert "ET 0.100" in text


def test_prepare_rejects_a_case_with_a_sequence_that_cannot_be_a_head_mri(tmp_path, capsys):
    write_dataset(tmp_path / "data", 3, seed=1, spacing=4.0, release=2021)
    flair = next((tmp_path / "data").rglob("*_flair.nii.gz"))
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.full(image.shape, 300, np.int16), image.affine), str(flair))
    out = tmp_path / "dl.json"
    assert cli.main(["prepare", "--dataset_dir", str(tmp_path / "data"), "--output", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "rejected:    1" in text and "does not look like an MRI of a head" in text
    rejected = json.loads(out.read_text())["rejected"]
    assert len(rejected) == 1 and "does not look like an MRI of a head" in json.dumps(rejected)
