"""Datalist: fold assignment (deterministic, stratified, balanced, order-free), JSON contract, read/write."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lckd_med.constants import MODALITIES, REGIONS
from lckd_med.data.datalist import (
    ENTRY_KEYS,
    SPLITS,
    assign_folds,
    check_split_args,
    datalist_spec,
    load_datalist,
    make_datalist,
    read_datalist,
    split_counts,
    validate_datalist,
    write_datalist,
)
from lckd_med.data.layouts import BratsCase, Issue
from lckd_med.data.validation import CaseCheck
from lckd_med.modalities import BRATS, ModalitySpec

GRADES = {f"Brats18_H{i:02d}": "HGG" for i in range(23)} | {f"Brats18_L{i:02d}": "LGG" for i in range(9)}
GRADES |= {f"BraTS20_U{i:02d}": None for i in range(6)}


def fake_check(case_id: str, grade: str | None, root: Path, ok: bool = True, drop: tuple[str, ...] = ()) -> CaseCheck:
    """A validation result without files on disk (the datalist only reads paths and grades)."""
    folder = root / case_id
    paths = {m: None if m in drop else folder / f"{case_id}_{m}.nii.gz" for m in MODALITIES}
    case = BratsCase(case_id, folder, grade, paths, folder / f"{case_id}_seg.nii.gz", "brats2018")
    reasons = () if ok else (Issue(str(paths["t1"]), "cannot read as NIfTI"), Issue(None, "segmentation file missing"))
    return CaseCheck(case=case, ok=ok, reasons=reasons, missing_modalities=case.missing_modalities)


def checks_for(grades: dict[str, str | None], root: Path) -> list[CaseCheck]:
    return [fake_check(cid, g, root) for cid, g in grades.items()]


def datalist(checks: list[CaseCheck], root: Path, **kw: Any) -> dict[str, Any]:
    return make_datalist(checks, release=2018, layout="brats2018", dataset_dir=root, **kw)


# ---------------------------------------------------------------- argument checks (one test per bad argument)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"folds": 1}, ValueError, "folds must be >= 3"),
        ({"folds": 2}, ValueError, "folds must be >= 3"),
        ({"folds": 1, "test_fold": None, "val_fold": 0}, ValueError, "folds must be >= 2"),
        ({"folds": 5.0}, TypeError, "folds must be an int"),
        ({"folds": "5"}, TypeError, "folds must be an int"),
        ({"folds": True}, TypeError, "folds must be an int"),
        ({"seed": -1}, ValueError, "seed must be >= 0"),
        ({"seed": 0.5}, TypeError, "seed must be an int"),
        ({"test_fold": 5}, ValueError, "test_fold must be in"),
        ({"test_fold": -1}, ValueError, "test_fold must be in"),
        ({"test_fold": "0"}, TypeError, "test_fold must be an int or None"),
        ({"val_fold": 7}, ValueError, "val_fold must be in"),
        ({"val_fold": -1}, ValueError, "val_fold must be in"),
        ({"val_fold": None}, TypeError, "val_fold must be an int"),
        ({"test_fold": 2, "val_fold": 2}, ValueError, "must differ"),
    ],
)
def test_check_split_args_rejects(kwargs: dict[str, Any], error: type, match: str) -> None:
    args = {"folds": 5, "seed": 0, "test_fold": 0, "val_fold": 1} | kwargs
    with pytest.raises(error, match=match):
        check_split_args(**args)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"folds": 2}, ValueError, "folds"),
        ({"release": "soon"}, ValueError, "release"),
        ({"layout": "brats2016"}, ValueError, "layout"),
    ],
)
def test_make_datalist_rejects_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], error: type, match: str) -> None:
    args = {"release": 2018, "layout": "brats2018", "dataset_dir": tmp_path} | kwargs
    with pytest.raises(error, match=match):
        make_datalist(checks_for({"a": "HGG"}, tmp_path), **args)


def test_make_datalist_rejects_duplicate_case_ids(tmp_path: Path) -> None:
    checks = [fake_check("a", "HGG", tmp_path), fake_check("a", "LGG", tmp_path / "x")]
    with pytest.raises(ValueError, match=r"more than once: \['a'\]"):
        datalist(checks, tmp_path)


def test_make_datalist_rejects_non_checks(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="CaseCheck"):
        datalist([{"case_id": "a"}], tmp_path)  # type: ignore[list-item]


@pytest.mark.parametrize("folds, seed", [(0, 0), (3, -1)])
def test_assign_folds_rejects(folds: int, seed: int) -> None:
    with pytest.raises(ValueError):
        assign_folds({"a": None}, folds, seed)


# ---------------------------------------------------------------- fold assignment


@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_folds_are_deterministic_and_order_free(seed: int) -> None:
    items = list(GRADES.items())
    first = assign_folds(dict(items), 5, seed)
    random.Random(seed).shuffle(items)
    assert assign_folds(dict(items), 5, seed) == first
    assert assign_folds(dict(reversed(items)), 5, seed) == first


@pytest.mark.parametrize(
    "seed, expected",
    [
        (0, {"Brats18_C": 0, "Brats18_A": 1, "Brats18_B": 2, "Brats18_D": 0, "Brats18_E": 1, "X": 2}),
        (1, {"Brats18_B": 0, "Brats18_A": 1, "Brats18_C": 2, "Brats18_E": 0, "Brats18_D": 1, "X": 2}),
    ],
)
def test_folds_are_pinned(seed: int, expected: dict[str, int]) -> None:
    # pinned values: published splits must not move when the code or a library changes
    grades = {
        "Brats18_A": "HGG",
        "Brats18_B": "HGG",
        "Brats18_C": "HGG",
        "Brats18_D": "LGG",
        "Brats18_E": "LGG",
        "X": None,
    }
    assert assign_folds(grades, 3, seed) == expected


def test_different_seeds_give_different_folds() -> None:
    assert assign_folds(GRADES, 5, 0) != assign_folds(GRADES, 5, 1)


@pytest.mark.parametrize("folds", [3, 5, 7])
def test_folds_are_balanced_and_stratified(folds: int) -> None:
    fold_of = assign_folds(GRADES, folds, 3)
    sizes = Counter(fold_of.values())
    assert set(sizes) == set(range(folds)) and max(sizes.values()) - min(sizes.values()) <= 1
    for grade in ("HGG", "LGG", None):
        per_fold = Counter(f for cid, f in fold_of.items() if GRADES[cid] == grade)
        counts = [per_fold.get(k, 0) for k in range(folds)]
        assert max(counts) - min(counts) <= 1, (grade, counts)


# ---------------------------------------------------------------- datalist dictionary


def test_datalist_contract(tmp_path: Path) -> None:
    checks = checks_for(GRADES, tmp_path) + [fake_check("Brats18_BAD", "HGG", tmp_path, ok=False)]
    d = datalist(checks, tmp_path, folds=5, seed=0, test_fold=0, val_fold=1)
    assert list(d) == ["meta", "training", "validation", "testing", "rejected"]
    meta = d["meta"]
    assert meta == {
        "release": 2018,
        "label_convention": "brats2018",
        "modalities": list(MODALITIES),
        "modality_spec": BRATS.to_dict(),
        "regions": list(REGIONS),
        "folds": 5,
        "seed": 0,
        "test_fold": 0,
        "val_fold": 1,
        "dataset_dir": str(tmp_path.resolve()),
        "layout": "brats2018",
        "tool": "data_prep.brats",
        "version": meta["version"],
    }
    assert isinstance(meta["version"], str) and meta["version"]
    assert {e["fold"] for e in d["testing"]} == {0} and {e["fold"] for e in d["validation"]} == {1}
    assert {e["fold"] for e in d["training"]} == {2, 3, 4}
    entries = [e for s in SPLITS for e in d[s]]
    assert sorted(e["case_id"] for e in entries) == sorted(GRADES)
    for e in entries:
        assert tuple(e) == ENTRY_KEYS
        assert all(Path(e[m]).is_absolute() for m in MODALITIES) and Path(e["label"]).is_absolute()
        assert e["grade"] == GRADES[e["case_id"]]
    assert d["rejected"] == [
        {
            "case_id": "Brats18_BAD",
            "file": str(tmp_path / "Brats18_BAD" / "Brats18_BAD_t1.nii.gz"),
            "reason": "cannot read as NIfTI",
        },
        {"case_id": "Brats18_BAD", "file": None, "reason": "segmentation file missing"},
    ]
    json.dumps(d)  # serialisable as is


def test_missing_sequence_is_null_in_entry(tmp_path: Path) -> None:
    d = datalist(
        [fake_check("a", "HGG", tmp_path, drop=("t1", "t2"))] + checks_for({"b": None, "c": None}, tmp_path), tmp_path
    )
    entry = next(e for s in SPLITS for e in d[s] if e["case_id"] == "a")
    assert entry["t1"] is None and entry["t2"] is None and entry["flair"] is not None


def test_datalist_invariant_to_discovery_order(tmp_path: Path) -> None:
    checks = checks_for(GRADES, tmp_path)
    shuffled = checks[:]
    random.Random(7).shuffle(shuffled)
    assert datalist(checks, tmp_path, seed=4) == datalist(shuffled, tmp_path, seed=4)


def test_no_test_fold_puts_everything_in_training_or_validation(tmp_path: Path) -> None:
    d = datalist(checks_for(GRADES, tmp_path), tmp_path, folds=4, test_fold=None, val_fold=3)
    assert d["testing"] == [] and d["meta"]["test_fold"] is None
    assert len(d["training"]) + len(d["validation"]) == len(GRADES)
    assert {e["fold"] for e in d["validation"]} == {3}


def test_convention_follows_release(tmp_path: Path) -> None:
    d = make_datalist(checks_for({"a": None}, tmp_path), release=2023, layout="brats2023", dataset_dir=tmp_path)
    assert d["meta"]["label_convention"] == "brats2023" and d["meta"]["release"] == 2023


def test_split_counts(tmp_path: Path) -> None:
    d = datalist(checks_for(GRADES, tmp_path), tmp_path)
    counts = split_counts(d)
    assert sum(c["total"] for c in counts.values()) == len(GRADES)
    assert sum(c["HGG"] for c in counts.values()) == 23 and sum(c["unknown"] for c in counts.values()) == 6


# ---------------------------------------------------------------- write / read


def test_write_then_load_round_trip(tmp_path: Path) -> None:
    d = datalist(checks_for(GRADES, tmp_path), tmp_path)
    out = write_datalist(d, tmp_path / "sub" / "datalist.json")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["datalist.json"]  # no temp file left
    for split in SPLITS:
        assert load_datalist(out, split) == d[split]
    back = read_datalist(out)
    assert back["meta"].pop("content_sha256") and back == d  # the content hash marks the file as lckd_med's


def test_write_replaces_an_existing_datalist(tmp_path: Path) -> None:
    path = tmp_path / "dl.json"
    write_datalist(datalist(checks_for({"a": None}, tmp_path), tmp_path), path)
    write_datalist(datalist(checks_for({"a": None, "b": None}, tmp_path), tmp_path), path)
    assert json.loads(path.read_text())["meta"]["tool"] == "data_prep.brats"


@pytest.mark.parametrize(
    "content", [b"old", b"\x1f\x8b\x08 a scan", b'{"not": "a datalist"}'], ids=["text", "gz", "json"]
)
def test_write_never_replaces_a_file_that_is_not_a_datalist(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "dl.json"
    path.write_bytes(content)
    with pytest.raises(FileExistsError, match="is not a datalist"):
        write_datalist(datalist(checks_for({"a": None}, tmp_path), tmp_path), path)
    assert path.read_bytes() == content


def test_write_refuses_invalid_datalist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="meta"):
        write_datalist({"training": []}, tmp_path / "dl.json")
    assert not (tmp_path / "dl.json").exists()


def test_write_refuses_folder(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        write_datalist(datalist(checks_for({"a": None}, tmp_path), tmp_path), tmp_path)


def test_relative_paths_resolve_against_datalist_folder(tmp_path: Path) -> None:
    d = datalist(checks_for({"a": None, "b": None, "c": None}, tmp_path), tmp_path)
    for s in SPLITS:
        for e in d[s]:
            e["flair"] = f"cases/{e['case_id']}_flair.nii.gz"
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(d))
    entries = [e for s in SPLITS for e in load_datalist(path, s)]
    assert {e["flair"] for e in entries} == {str(tmp_path / "cases" / f"{c}_flair.nii.gz") for c in "abc"}


def _valid(tmp_path: Path) -> dict[str, Any]:
    return datalist(checks_for({"a": "HGG", "b": "LGG", "c": None, "d": None, "e": None}, tmp_path), tmp_path)


def _first_entry(d: dict[str, Any]) -> dict[str, Any]:
    return next(e for s in SPLITS for e in d[s])


BAD_FILES = [
    ("no_meta", lambda d: d.pop("meta"), "missing 'meta'"),
    ("modality_order", lambda d: d["meta"].update(modalities=["t1", "flair", "t1ce", "t2"]), "meta.modalities"),
    ("region_order", lambda d: d["meta"].update(regions=["WT", "TC", "ET"]), "meta.regions"),
    ("bad_convention", lambda d: d["meta"].update(label_convention="brats1999x"), "label_convention"),
    ("split_not_list", lambda d: d.update(training={}), "'training' must be a list"),
    ("entry_missing_key", lambda d: _first_entry(d).pop("t1ce"), "missing keys \\['t1ce'\\]"),
    ("entry_no_case_id", lambda d: _first_entry(d).pop("case_id"), "'case_id'"),
    ("entry_bad_path", lambda d: _first_entry(d).update(t2=3), "'t2' must be a path string or null"),
    ("entry_no_sequence", lambda d: _first_entry(d).update(dict.fromkeys(MODALITIES)), "no sequence path"),
    ("entry_bad_grade", lambda d: _first_entry(d).update(grade="GBM"), "'grade'"),
    ("entry_bad_fold", lambda d: _first_entry(d).update(fold="1"), "'fold'"),
    ("overlap", lambda d: d["testing"].append(dict(_first_entry(d))), "splits must not overlap"),
    ("bad_rejected", lambda d: d.update(rejected=[{"file": None}]), "'rejected'"),
]


@pytest.mark.parametrize("mutate, match", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_load_rejects_invalid_file(tmp_path: Path, mutate: Any, match: str) -> None:
    d = _valid(tmp_path)
    mutate(d)
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match) as info:
        load_datalist(path, "training")
    assert str(path) in str(info.value)


def test_extra_top_level_keys_are_ignored(tmp_path: Path) -> None:
    d = _valid(tmp_path) | {"description": "decathlon-style extra key"}
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(d))
    assert load_datalist(path, "training") == d["training"]


def test_load_rejects_unknown_split(tmp_path: Path) -> None:
    path = write_datalist(_valid(tmp_path), tmp_path / "dl.json")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        load_datalist(path, "train")


def test_load_rejects_absent_split(tmp_path: Path) -> None:
    d = _valid(tmp_path)
    del d["testing"]
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="no 'testing' split"):
        load_datalist(path, "testing")


def test_load_rejects_non_json(tmp_path: Path) -> None:
    path = tmp_path / "dl.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid JSON"):
        load_datalist(path, "training")


def test_load_rejects_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="datalist file not found"):
        load_datalist(tmp_path / "nope.json", "training")


# ---------------------------------------------------------------- modality spec
RGBD = ModalitySpec(["rgb", "depth"], [3, 1], spatial_dims=2)


def _rgbd_datalist(**entry: Any) -> dict[str, Any]:
    e = {"case_id": "c0", "rgb": "c0_rgb.nii.gz", "depth": None, "label": "c0_seg.nii.gz", **entry}
    return {"meta": {"modalities": ["rgb", "depth"], "modality_spec": RGBD.to_dict()}, "training": [e]}


def test_datalist_spec_default_is_brats_and_another_spec_keys_the_entries(tmp_path: Path) -> None:
    d = datalist(checks_for(GRADES, tmp_path), tmp_path, folds=5, seed=0, test_fold=0, val_fold=1)
    assert datalist_spec(d) == BRATS
    del d["meta"]["modality_spec"]
    assert datalist_spec(d) == BRATS  # written before specs existed
    validate_datalist(_rgbd_datalist())
    assert datalist_spec(_rgbd_datalist()) == RGBD
    path = write_datalist(_rgbd_datalist(), tmp_path / "rgbd.json")
    assert read_datalist(path)["training"][0]["rgb"] == str((tmp_path / "c0_rgb.nii.gz").resolve())


@pytest.mark.parametrize(
    ("d", "match"),
    [
        ({**_rgbd_datalist(), "meta": {"modalities": ["rgb"], "modality_spec": RGBD.to_dict()}}, "meta.modalities"),
        ({**_rgbd_datalist(), "meta": {"modalities": [], "modality_spec": {"names": []}}}, "meta.modality_spec"),
        (_rgbd_datalist(flair="x.nii.gz", depth=None, rgb=None), "no sequence path"),
        ({"meta": _rgbd_datalist()["meta"], "training": [{"case_id": "c", "rgb": "x", "label": None}]}, "'depth'"),
    ],
    ids=["names_differ", "bad_spec", "no_path", "missing_key"],
)
def test_bad_spec_datalists(d: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_datalist(d, source="toy.json")
