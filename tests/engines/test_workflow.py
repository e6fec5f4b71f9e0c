"""Bundle glue: datalist preparation and its error message, splits, optimizers, epochs, device, logging."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.workflow import (
    DatasetNotFoundError,
    bundle_dir,
    datalist_meta,
    ensure_synthetic,
    epochs_for,
    load_split,
    make_optimizer,
    pick_device,
    prepare_datalist,
    recipe_of,
    setup_logging,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("workflow_data")
    write_dataset(root, 6, seed=5, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


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
    [("sgd", torch.optim.SGD, {"nesterov": True, "momentum": 0.99}), ("AdamW", torch.optim.AdamW, {})],
)
def test_make_optimizer(name, cls, extra):
    opt = make_optimizer(name, [torch.nn.Parameter(torch.zeros(2))], lr=0.01)
    assert isinstance(opt, cls)
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 3e-5
    for k, v in extra.items():
        assert group[k] == v


@pytest.mark.parametrize("name, lr, match", [("adam", 0.01, "unknown optimizer"), ("sgd", 0.0, "positive")])
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


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_recipe_of_is_json_able():
    recipe = recipe_of((16, 16, 8), 2, 100, 50, "sgd", 0.01, 0.1, 10, 0)
    assert json.loads(json.dumps(recipe)) == recipe
    assert recipe["roi_size"] == [16, 16, 8] and recipe["phase1_iterations"] == 50


def test_setup_logging_sets_levels():
    names = ("lckd_med", "monai", "ignite")
    before = {n: logging.getLogger(n).level for n in names}
    setup_logging("WARNING")
    try:
        assert all(logging.getLogger(n).level == logging.WARNING for n in names)
    finally:
        for n, level in before.items():
            logging.getLogger(n).setLevel(level)
