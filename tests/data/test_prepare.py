from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lckd_med.data.layouts import LayoutError
from lckd_med.data.prepare import NoUsableCaseError, build_datalist
from lckd_med.data.synthetic import write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepare_data")
    write_dataset(root, 6, seed=5, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


def test_writes_the_same_datalist_as_the_command(dataset, tmp_path):
    from data_prep.brats import main

    out, d = build_datalist(dataset, tmp_path / "lib.json", folds=3, seed=1)
    assert (
        main(["--dataset_dir", str(dataset), "--output", str(tmp_path / "cli.json"), "--folds", "3", "--seed", "1"])
        == 0
    )
    cli = json.loads((tmp_path / "cli.json").read_text())
    lib = json.loads(out.read_text())
    assert lib["meta"].pop("content_sha256") and lib == d
    for split in ("training", "validation", "testing"):
        assert [e["case_id"] for e in lib[split]] == [e["case_id"] for e in cli[split]]
    assert lib["meta"]["folds"] == 3 and lib["meta"]["seed"] == 1


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_datalist(tmp_path / "absent", tmp_path / "dl.json")


def test_folder_without_cases(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "readme.txt").write_text("nothing")
    with pytest.raises((LayoutError, NoUsableCaseError)):
        build_datalist(tmp_path / "data", tmp_path / "dl.json")
    assert not (tmp_path / "dl.json").exists()


def test_every_case_rejected_names_the_reason(dataset, tmp_path):
    root = tmp_path / "bad"
    write_dataset(root, 2, seed=1, spacing=4.0, release=2018)
    for seg in root.rglob("*_seg.nii.gz"):  # labels outside the convention: every case rejected
        img = nib.load(seg)
        nib.save(nib.Nifti1Image(np.full(img.shape, 9, np.uint8), img.affine), seg)
    with pytest.raises(NoUsableCaseError, match="no usable case among the 2"):
        build_datalist(root, tmp_path / "dl.json")
    assert not (tmp_path / "dl.json").exists()


@pytest.mark.parametrize(("kwargs", "match"), [({"folds": 1}, "folds"), ({"val_fold": 0}, "fold")])
def test_bad_split_arguments(dataset, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_datalist(dataset, tmp_path / "dl.json", **kwargs)
