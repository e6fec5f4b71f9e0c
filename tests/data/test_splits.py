"""Published split protocols and user case-id lists (lckd_med.data.splits), and the datalist overlap rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lckd_med.data.datalist import validate_datalist
from lckd_med.data.splits import (
    PROTOCOLS,
    check_split_lists,
    parse_split_list_args,
    protocol_lists,
    read_split_list,
)

REPO = Path(__file__).resolve().parents[2]


def test_lckd2018_lists_are_the_reference_protocol():
    lists = protocol_lists("lckd2018")
    train, val, test = (set(lists[s]) for s in ("training", "validation", "testing"))
    assert (len(lists["training"]), len(lists["validation"]), len(lists["testing"])) == (285, 57, 66)
    assert val <= train and not test & train  # elects on training cases; tests on the official validation set
    assert "Brats18_TCIA08_436_1" in train and all(i.startswith("Brats18_") for i in train | val | test)
    disjoint = protocol_lists("lckd2018_disjoint")
    assert set(disjoint["training"]) == train - val and disjoint["validation"] == lists["validation"]
    assert check_split_lists(lists) is True and check_split_lists(disjoint) is False


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown split protocol"):
        protocol_lists("rfnet2018")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_pyproject_ships_the_lists_as_package_data():
    import tomllib

    conf = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["lckd_med.data"]
    shipped = {p for g in globs for p in (REPO / "lckd_med" / "data").glob(g)}
    for protocol in PROTOCOLS.values():
        for rel in protocol.files.values():
            assert REPO / "lckd_med" / "data" / "split_lists" / rel in shipped


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Brats18_A_1\nBrats18_B_1\n", ["Brats18_A_1", "Brats18_B_1"]),
        ("# my split\n\nBrats18_A_1\r\nBrats18_B_1  \n", ["Brats18_A_1", "Brats18_B_1"]),
        ("case_id,age\nBrats18_A_1,60\nBrats18_B_1,55\n", ["Brats18_A_1", "Brats18_B_1"]),
        ("ID\tgrade\nBrats18_A_1\tHGG\n", ["Brats18_A_1"]),
        (
            "path,grade\nHGG/Brats18_A_1,HGG\n/data/LGG/Brats18_B_1/Brats18_B_1_flair.nii.gz,LGG\n",
            ["Brats18_A_1", "Brats18_B_1"],
        ),
        ("HGG/Brats18_A_1\nLGG/Brats18_B_1/\n", ["Brats18_A_1", "Brats18_B_1"]),
    ],
    ids=["plain", "comments_blank_crlf", "csv_case_id", "tsv_id", "csv_path", "paths_per_line"],
)
def test_read_split_list_formats(tmp_path, text, expected):
    f = tmp_path / "list.txt"
    f.write_text(text)
    assert read_split_list(f) == expected


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "no case id"),
        ("# only a comment\n", "no case id"),
        ("A\nB\nA\n", "more than once"),
        ("age,grade\n60,HGG\n", "no case id column"),
        ("case_id,age\n,60\n", "no value"),
    ],
    ids=["empty", "comment_only", "duplicate", "no_column", "blank_id"],
)
def test_read_split_list_bad_files_name_the_file(tmp_path, text, match):
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        read_split_list(f)
    assert "bad.csv" in str(err.value)


def test_read_split_list_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="split list not found"):
        read_split_list(tmp_path / "nope.txt")


@pytest.mark.parametrize(
    "items, match",
    [
        (["training"], "SPLIT=FILE"),
        (["train={f}"], "unknown split"),
        (["training={f}", "training={f}"], "twice"),
        (["validation={f}"], "training list"),
    ],
    ids=["no_equals", "unknown_split", "repeated", "no_training"],
)
def test_parse_split_list_args_errors(tmp_path, items, match):
    f = tmp_path / "l.txt"
    f.write_text("A\n")
    with pytest.raises(ValueError, match=match):
        parse_split_list_args([i.format(f=f) for i in items])


def test_testing_may_not_share_cases_with_training_or_validation():
    with pytest.raises(ValueError, match="testing list shares 1 case"):
        check_split_lists({"training": ["A", "B"], "testing": ["B", "C"]})
    with pytest.raises(ValueError, match="validation list"):
        check_split_lists({"training": ["A"], "validation": ["C"], "testing": ["C"]})


def _datalist(flag: bool | None) -> dict:
    entry = {"case_id": "A", "flair": "/a.nii.gz", "t1": None, "t1ce": None, "t2": None, "label": None}
    meta = {"modalities": ["flair", "t1", "t1ce", "t2"]}
    if flag is not None:
        meta["validation_in_training"] = flag
    return {"meta": meta, "training": [entry], "validation": [dict(entry)], "testing": []}


def test_validation_inside_training_only_when_meta_says_so():
    validate_datalist(_datalist(True))
    for flag in (None, False):
        with pytest.raises(ValueError, match="splits must not overlap"):
            validate_datalist(_datalist(flag))
    d = _datalist(True)
    d["testing"] = [dict(d["training"][0])]
    with pytest.raises(ValueError, match="splits must not overlap"):
        validate_datalist(d)
