"""Bundle glue: datalist preparation and its error message, splits, optimizers, epochs, device, logging."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.workflow import (
    DatalistMismatchError,
    DatasetNotFoundError,
    bundle_datalist,
    bundle_dir,
    datalist_meta,
    ensure_synthetic,
    epochs_for,
    load_split,
    make_optimizer,
    prepare_datalist,
    recipe_of,
    setup_logging,
    user_error_of,
)
from tests.testkit import save_tiny_checkpoint


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow_data")
    write_dataset(root, 6, seed=5, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


BUNDLE = Path(bundle_dir("lckd"))


def test_bundle_dir_points_at_the_repository_bundle():
    root = Path(bundle_dir("lckd"))
    assert (root / "train.json").is_file() and (root / "metadata.json").is_file()


def test_prepare_datalist_writes_folds_from_dataset(tmp_path, dataset):
    out = prepare_datalist(dataset, tmp_path / "dl" / "datalist.json", folds=3, seed=1)
    assert out == str(tmp_path / "dl" / "datalist.json")
    meta = datalist_meta(out)
    assert meta["release"] == 2018 and meta["label_convention"] == "brats2018"
    assert (meta["folds"], meta["seed"]) == (3, 1)
    cases = [e["case_id"] for s in ("training", "validation", "testing") for e in load_split(out, s)]
    assert len(cases) == len(set(cases)) == 6


def test_prepare_datalist_keeps_an_existing_datalist(tmp_path, dataset):
    path = tmp_path / "datalist.json"
    prepare_datalist(dataset, path)
    stamp = path.stat().st_mtime_ns
    assert prepare_datalist(tmp_path / "does_not_matter", path) == str(path)
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("state", ["missing", "empty", "no_case"])
def test_prepare_datalist_without_data_names_both_ways_out(tmp_path, state):
    dataset = tmp_path / "brats"
    if state != "missing":
        dataset.mkdir()
    if state == "no_case":
        (dataset / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetNotFoundError) as info:
        prepare_datalist(dataset, tmp_path / "datalist.json")
    msg = str(info.value)
    assert str(dataset) in msg and "--dataset_dir" in msg and "python -m data_prep.synthetic" in msg
    assert isinstance(info.value, FileNotFoundError)
    assert not (tmp_path / "datalist.json").exists()


def test_bundle_datalist_exits_with_the_message_only(tmp_path, dataset):
    with pytest.raises(SystemExit, match=r"^error: dataset_dir does not exist") as info:
        bundle_datalist(tmp_path / "nowhere", tmp_path / "datalist.json", folds=3)
    assert info.value.__cause__ is None and "--dataset_dir" in str(info.value)
    assert bundle_datalist(dataset, tmp_path / "datalist.json", folds=3, seed=1) == str(tmp_path / "datalist.json")
    assert datalist_meta(tmp_path / "datalist.json")["folds"] == 3


def test_load_split_max_cases_and_errors(tmp_path, dataset):
    path = prepare_datalist(dataset, tmp_path / "datalist.json")
    assert len(load_split(path, "training", max_cases=1)) == 1
    with pytest.raises(ValueError, match="max_cases"):
        load_split(path, "training", max_cases=0)
    data = json.loads(Path(path).read_text())
    data["validation"] = []
    Path(path).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="'validation' split"):
        load_split(path, "validation")


def test_datalist_meta_requires_meta(tmp_path):
    path = tmp_path / "dl.json"
    path.write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="meta"):
        datalist_meta(path)


def test_ensure_synthetic_writes_once_and_never_touches_existing(tmp_path):
    target = tmp_path / "demo"
    assert ensure_synthetic(target, cases=2, spacing=4.0) == str(target)
    files = sorted(p.relative_to(target) for p in target.rglob("*.nii.gz"))
    assert len(files) == 2 * 5
    (target / "marker").write_text("x")
    ensure_synthetic(target, cases=5, spacing=4.0)
    assert sorted(p.relative_to(target) for p in target.rglob("*.nii.gz")) == files


@pytest.mark.parametrize(
    "name, cls, extra",
    [
        ("sgd", torch.optim.SGD, {"nesterov": True, "momentum": 0.99}),
        ("AdamW", torch.optim.AdamW, {}),
        ("adam", torch.optim.Adam, {"amsgrad": False, "betas": (0.9, 0.999), "eps": 1e-8}),
        # RFNet's and mmFormer's published optimiser (train.py:89-91 of both)
        ("adam", torch.optim.Adam, {"amsgrad": True, "betas": (0.9, 0.999), "eps": 1e-8}),
    ],
)
def test_make_optimizer(name, cls, extra):
    amsgrad = {"amsgrad": extra["amsgrad"]} if "amsgrad" in extra else {}
    opt = make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=0.01, **amsgrad)
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 3e-5
    for k, v in extra.items():
        assert group[k] == v


@pytest.mark.parametrize("name, lr, match", [("adamax", 0.01, "unknown optimizer"), ("sgd", 0.0, "positive")])
def test_make_optimizer_bad(name, lr, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize("n, length, epochs", [(8, 4, 2), (9, 4, 3), (1, 250, 1), (115000, 250, 460)])
def test_epochs_for(n, length, epochs):
    assert epochs_for(n, length) == epochs


@pytest.mark.parametrize("n, length", [(0, 4), (4, 0)])
def test_epochs_for_bad(n, length):
    with pytest.raises(ValueError, match="must be >= 1"):
        epochs_for(n, length)


@pytest.mark.parametrize(
    "method_settings",
    [
        {"method": "lckd", "kd_weight": 0.1, "election_interval": 10},
        {"method": "omd", "mmd_weight": 0.1, "kl_weight": 1, "kl_temperature": 2.0, "real_seg_weight": 1.0},
        {"kd_levels": (-1, np.int64(2)), "weights": np.float32(0.5), "first_election": None, "flag": True},
    ],
    ids=["lckd", "omd", "numpy_and_lists"],
)
def test_recipe_of_is_json_able(method_settings):
    recipe = recipe_of((16, 16, 8), 2, 100, 50, "sgd", 0.01, 0, **method_settings)
    assert json.loads(json.dumps(recipe)) == recipe
    assert recipe["roi_size"] == [16, 16, 8] and recipe["phase1_iterations"] == 50 and recipe["seed"] == 0
    assert set(recipe) - set(method_settings) == {
        "roi_size", "batch_size", "num_iterations", "phase1_iterations", "optimizer", "learning_rate", "seed"
    }  # fmt: skip


def test_recipe_of_refuses_a_setting_that_is_not_json():
    with pytest.raises(TypeError, match="kd_loss"):
        recipe_of((16, 16, 8), 2, 100, 50, "sgd", 0.01, 0, kd_loss=object())


def test_setup_logging_sets_levels():
    names = ("lckd_med", "monai", "ignite")
    before = {n: logging.getLogger(n).level for n in names}
    setup_logging("WARNING")
    try:
        assert all(logging.getLogger(n).level == logging.WARNING for n in names)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)


# ---------------------------------------------------------------------------------- one-line input errors


def _chained(inner: BaseException) -> RuntimeError:
    """``inner`` wrapped the way MONAI's config parser wraps it."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("Failed to instantiate component") from e
    except RuntimeError as outer:
        return outer


def test_user_error_of_finds_the_lckd_med_error_under_the_parser_wrapper(tmp_path):
    from lckd_med.engines.checkpoint import load_checkpoint

    try:
        load_checkpoint(tmp_path / "none.pt")
    except FileNotFoundError as e:
        ours = e
    assert user_error_of(_chained(ours)) is ours
    try:
        int("x")  # a library/builtin error keeps its traceback
    except ValueError as e:
        assert user_error_of(_chained(e)) is None
    (tmp_path / "file").write_text("x")
    try:
        os.makedirs(tmp_path / "file" / "sub")  # an OS error naming a path: the user's to fix
    except OSError as e:
        assert user_error_of(_chained(e)) is e


_MANIFEST_HEADER = "case_id,flair,t1,t1ce,t2\n"
CLI_CASES = {
    # case: (checkpoint bytes or None for a valid one, manifest bytes or None, output is a file, expected message)
    "bad_checkpoint": (b"not a checkpoint", None, False, "not a readable lckd_med checkpoint"),
    "manifest_duplicate": (None, (_MANIFEST_HEADER + "a,x.nii.gz,,,\na,y.nii.gz,,,\n").encode(), False, "twice"),
    "manifest_latin1": (None, (_MANIFEST_HEADER + "caf\u00e9,x.nii.gz,,,\n").encode("latin-1"), False, "not UTF-8"),
    "manifest_missing_column": (None, b"case_id,flair\na,x.nii.gz\n", False, "lacks column"),
    "output_is_a_file": (None, None, True, "is a file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_bundle_cli_input_errors_are_one_line(tmp_path, case):
    ckpt_bytes, manifest, output_is_file, expected = CLI_CASES[case]
    models, out = tmp_path / "models", tmp_path / "out"
    models.mkdir()
    if ckpt_bytes is None:
        save_tiny_checkpoint(models / "model.pt")
    else:
        (models / "model.pt").write_bytes(ckpt_bytes)
    if output_is_file:
        out.write_text("mine")
    args = ["--input_dir", str(tmp_path), "--output_dir", str(out), "--ckpt_dir", str(models), "--device", "cpu"]
    if manifest is not None:
        (tmp_path / "m.csv").write_bytes(manifest)
        args += ["--manifest", str(tmp_path / "m.csv")]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", str(BUNDLE / "inference.json")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    if output_is_file:
        assert out.read_text() == "mine"


@pytest.mark.slow
def test_training_with_a_file_as_ckpt_dir_is_one_line(tmp_path):
    (tmp_path / "models").write_text("mine")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(BUNDLE / "train.json")]
    args = ["--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    args += ["--ckpt_dir", str(tmp_path / "models")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "models") in errors[0], proc.stderr[-3000:]
    assert (tmp_path / "models").read_text() == "mine"


def test_a_datalist_of_another_dataset_or_other_folds_is_refused_not_reused(tmp_path, dataset):
    """An evaluation that finds a datalist in output_dir must not silently score it for another --dataset_dir or
    --folds."""
    path = tmp_path / "datalist.json"
    prepare_datalist(dataset, path, folds=3, seed=1)
    other = tmp_path / "other"
    shutil.copytree(dataset, other)
    with pytest.raises(DatalistMismatchError, match=f"made with dataset_dir {dataset}, not {other}"):
        prepare_datalist(other, path, folds=3, seed=1)
    with pytest.raises(DatalistMismatchError, match="folds 3, not 5; seed 1, not 0"):
        prepare_datalist(dataset, path)
    assert prepare_datalist(dataset, path, folds=3, seed=1) == str(path)  # what it was made with
