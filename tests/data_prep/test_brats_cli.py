"""``python -m data_prep.brats`` end to end on tiny NIfTI trees built on the fly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from data_prep.brats import main
from lckd_med.constants import MODALITIES, RELEASE_FILE_SUFFIXES, brats_affine
from lckd_med.data.datalist import SPLITS, load_datalist
from tests.testkit import mri_like

SHAPE = (16, 16, 10)
REPO = Path(__file__).resolve().parents[2]


def write_case(folder: Path, sep: str = "_", scheme: str = "legacy", et: int = 4, skip: tuple[str, ...] = ()) -> None:
    """One tiny valid case in ``folder`` (its name is the case id)."""
    folder.mkdir(parents=True)
    for i, (key, suffix) in enumerate(RELEASE_FILE_SUFFIXES[scheme].items()):
        if key not in skip:
            data = mri_like(SHAPE, 10 * len(folder.name) + i)
            nib.save(nib.Nifti1Image(data, brats_affine()), str(folder / f"{folder.name}{sep}{suffix}.nii.gz"))
    lab = np.zeros(SHAPE, np.uint8)
    lab[4:10, 4:10, 3:7] = 2
    lab[6:8, 6:8, 4:6] = et
    nib.save(nib.Nifti1Image(lab, brats_affine()), str(folder / f"{folder.name}{sep}seg.nii.gz"))


@pytest.fixture(scope="module")
def brats2018(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 HGG + 4 LGG cases; one corrupt, one without T1/T2."""
    root = tmp_path_factory.mktemp("brats18") / "MICCAI_BraTS_2018_Data_Training"
    for grade, n in (("HGG", 8), ("LGG", 4)):
        for i in range(n):
            write_case(
                root / grade / f"Brats18_{grade}_{i:02d}_1", skip=("t1", "t2") if (grade, i) == ("LGG", 0) else ()
            )
    (root / "HGG" / "Brats18_HGG_03_1" / "Brats18_HGG_03_1_t1ce.nii.gz").write_bytes(b"\x1f\x8b\x08garbage")
    (root / "survival_data.csv").write_text("BraTS18ID,Age\n")
    (root / "stray.bin").write_bytes(b"x")
    return root


def run(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_end_to_end_brats2018(brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", brats2018, "--output", out, "--workers", "1") == 0
    text = capsys.readouterr().out
    assert "layout:     brats2018 (detected)" in text and "cases found: 11" not in text
    assert "cases found: 12" in text and "usable:      11" in text and "rejected:    1" in text
    assert "usable with missing sequences: 1" in text and "Brats18_LGG_00_1: missing t1, t2" in text
    assert "Brats18_HGG_03_1_t1ce.nii.gz" in text and "stray.bin" in text
    d = json.loads(out.read_text())
    assert d["meta"]["layout"] == "brats2018" and d["meta"]["release"] == 2018
    assert d["meta"]["dataset_dir"] == str(brats2018.resolve())
    assert sum(len(d[s]) for s in SPLITS) == 11
    assert [r["case_id"] for r in d["rejected"]] == ["Brats18_HGG_03_1"]
    assert d["rejected"][0]["file"].endswith("Brats18_HGG_03_1_t1ce.nii.gz")
    partial = next(e for s in SPLITS for e in d[s] if e["case_id"] == "Brats18_LGG_00_1")
    assert partial["t1"] is None and partial["t2"] is None and partial["grade"] == "LGG"
    assert {e["grade"] for e in load_datalist(out, "training")} == {"HGG", "LGG"}
    for split in SPLITS:
        assert f"  {split:<10}" in text


def test_same_seed_same_splits_and_workers_do_not_matter(brats2018: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert run("--dataset_dir", brats2018, "--output", a, "--workers", "1", "--seed", "3") == 0
    assert run("--dataset_dir", brats2018, "--output", b, "--workers", "2", "--seed", "3") == 0
    assert run("--dataset_dir", brats2018, "--output", c, "--workers", "1", "--seed", "4") == 0
    da, db, dc = (json.loads(p.read_text()) for p in (a, b, c))
    assert da == db
    assert {s: [e["case_id"] for e in da[s]] for s in SPLITS} != {s: [e["case_id"] for e in dc[s]] for s in SPLITS}


def test_no_test_fold(brats2018: Path, tmp_path: Path) -> None:
    out = tmp_path / "dl.json"
    assert (
        run("--dataset_dir", brats2018, "--output", out, "--test_fold", "none", "--val_fold", "0", "--workers", "1")
        == 0
    )
    d = json.loads(out.read_text())
    assert d["testing"] == [] and d["meta"]["test_fold"] is None and len(d["validation"]) > 0


def test_brats2023_layout_and_label_convention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "gli"
    for i in range(3):
        write_case(root / f"BraTS-GLI-{i:05d}-000", sep="-", scheme="2023", et=3)
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", root, "--output", out, "--workers", "1") == 0
    assert "ET = 3" in capsys.readouterr().out
    d = json.loads(out.read_text())
    assert (d["meta"]["layout"], d["meta"]["label_convention"], d["meta"]["release"]) == (
        "brats2023",
        "brats2023",
        2023,
    )
    entry = d["training"][0] if d["training"] else d["validation"][0]
    assert entry["flair"].endswith("-t2f.nii.gz") and entry["t1ce"].endswith("-t1c.nii.gz")


def test_release_override_rejects_other_convention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "flat"
    for i in range(3):
        write_case(root / f"BraTS2021_{i:05d}")
    assert run("--dataset_dir", root, "--output", tmp_path / "dl.json", "--release", "2023", "--workers", "1") == 1
    captured = capsys.readouterr()
    assert "not allowed by convention brats2023" in captured.out and "no usable case" in captured.err
    assert not (tmp_path / "dl.json").exists()


def test_subprocess_module_entry_point(brats2018: Path, tmp_path: Path) -> None:
    out = tmp_path / "dl.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "data_prep.brats", "--dataset_dir", str(brats2018), "--output", str(out)]
    proc = subprocess.run(cmd + ["--workers", "2"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "datalist written" in proc.stdout
    assert len(load_datalist(out, "testing")) > 0


def test_missing_dataset_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--dataset_dir", tmp_path / "nope", "--output", tmp_path / "dl.json") == 1
    assert "does not exist" in capsys.readouterr().err


def test_empty_dataset_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert run("--dataset_dir", tmp_path / "empty", "--output", tmp_path / "dl.json") == 1
    err = capsys.readouterr().err
    assert "no BraTS case found" in err and "brats2018" in err and "brats2023" in err
    assert "python -m data_prep.synthetic" in err
    assert not (tmp_path / "dl.json").exists()


def test_forced_layout_without_cases(brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--dataset_dir", brats2018, "--output", tmp_path / "dl.json", "--layout", "brats2023") == 1
    assert "no BraTS case found" in capsys.readouterr().err


def test_all_cases_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "bad"
    write_case(root / "BraTS2021_00000")
    (root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz").unlink()
    assert run("--dataset_dir", root, "--output", tmp_path / "dl.json", "--workers", "1") == 1
    captured = capsys.readouterr()
    assert "segmentation file missing" in captured.out and "no usable case" in captured.err
    assert run("--dataset_dir", root, "--output", tmp_path / "dl.json", "--allow_unlabelled", "--workers", "1") == 0
    d = json.loads((tmp_path / "dl.json").read_text())
    assert [e["label"] for s in SPLITS for e in d[s]] == [None]


BAD_ARGS = [
    ("folds_one", ["--folds", "1"], "folds must be >= 3"),
    ("folds_not_int", ["--folds", "five"], "argument --folds: must be a whole number, got 'five'"),
    ("seed_negative", ["--seed", "-1"], "seed must be >= 0"),
    ("test_fold_out_of_range", ["--test_fold", "5"], "test_fold must be in"),
    ("test_fold_not_int", ["--test_fold", "first"], "fold number or 'none'"),
    ("val_fold_out_of_range", ["--val_fold", "9"], "val_fold must be in"),
    ("test_equals_val", ["--test_fold", "1", "--val_fold", "1"], "must differ"),
    ("layout_unknown", ["--layout", "brats2016"], "invalid choice"),
    ("release_unknown", ["--release", "latest"], "release must be a BraTS year"),
    ("workers_zero", ["--workers", "0"], "argument --workers: must be a whole number >= 1, got '0'"),
]


@pytest.mark.parametrize("extra, match", [c[1:] for c in BAD_ARGS], ids=[c[0] for c in BAD_ARGS])
def test_bad_argument(
    brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], match: str
) -> None:
    assert run("--dataset_dir", brats2018, "--output", tmp_path / "dl.json", *extra) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "dl.json").exists()


def test_missing_required_argument(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--output", tmp_path / "dl.json") == 2
    assert "--dataset_dir" in capsys.readouterr().err


def test_output_is_a_folder(brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--dataset_dir", brats2018, "--output", tmp_path) == 2
    assert "--output is a folder" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "brats2023" in capsys.readouterr().out and all(m in MODALITIES for m in ("flair", "t1ce"))


def test_parent_folder_finds_the_dataset_and_reports_subtrees(
    brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", brats2018.parent, "--output", out, "--workers", "1") == 0
    text = capsys.readouterr().out
    assert f"found {brats2018}: 12 case(s), layout brats2018, BraTS 2018" in text and "cases found: 12" in text


def test_two_editions_exit_1_naming_both(brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "old").symlink_to(brats2018, target_is_directory=True)
    write_case(parent / "BraTS2021" / "BraTS2021_00001")
    assert run("--dataset_dir", parent, "--output", tmp_path / "dl.json") == 1
    err = capsys.readouterr().err
    assert "2 BraTS editions (2018, 2021)" in err and "BraTS2021" in err
    assert not (tmp_path / "dl.json").exists()


@pytest.mark.parametrize("env, shown", [({"LCKD_MED_PROGRESS": "1"}, True), ({"CI": "true"}, False)])
def test_progress_bar_on_request_quiet_in_ci(
    brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env, shown
) -> None:
    monkeypatch.delenv("LCKD_MED_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert run("--dataset_dir", brats2018, "--output", tmp_path / "dl.json", "--workers", "1") == 0
    err = capsys.readouterr().err
    assert ("validate" in err and "12/12" in err) is shown


def test_output_that_is_an_existing_scan_is_refused_and_kept(
    brats2018: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scan = tmp_path / "my_scan.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(SHAPE, np.float32), brats_affine()), str(scan))
    before = scan.read_bytes()
    assert run("--dataset_dir", brats2018, "--output", scan) == 2
    assert "is not a datalist" in capsys.readouterr().err
    assert scan.read_bytes() == before
    # an earlier datalist is ours to regenerate
    out = tmp_path / "datalist.json"
    assert run("--dataset_dir", brats2018, "--output", out) == 0
    assert run("--dataset_dir", brats2018, "--output", out, "--seed", "3") == 0


def test_symlinked_duplicate_and_non_utf8_case_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "flat"
    for i in range(6):
        write_case(root / f"BraTS20_Training_{i:03d}")
    (root / "BraTS20_Training_999").symlink_to(root / "BraTS20_Training_000", target_is_directory=True)
    weird = os.fsencode(root) + b"/BraTS20_Training_\xe9"
    os.mkdir(weird)
    with open(os.fsencode(root) + b"/BraTS20_Training_001/notes_\xe8.bin", "wb") as f:  # stray file, odd name
        f.write(b"x")
    out = tmp_path / "datalist.json"
    assert run("--dataset_dir", root, "--output", out) == 0
    printed = capsys.readouterr()
    ids = {e["case_id"] for split in SPLITS for e in load_datalist(out, split)}
    assert ids == {f"BraTS20_Training_{i:03d}" for i in range(6)}  # the linked copy is not a second case
    assert "same folder as" in printed.out + printed.err and "BraTS20_Training_000" in printed.out + printed.err
    assert "not valid UTF-8" in printed.out + printed.err and "\\xe9" in printed.out + printed.err
    assert "notes_\\udce8.bin: ignored: not a NIfTI file" in printed.out  # printed, not a UnicodeEncodeError


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unreadable_case_folder_is_named_not_misdescribed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "flat"
    for i in range(6):
        write_case(root / f"BraTS20_Training_{i:03d}")
    (root / "BraTS20_Training_005").chmod(0)
    try:
        assert run("--dataset_dir", root, "--output", tmp_path / "dl.json") == 0
    finally:
        (root / "BraTS20_Training_005").chmod(0o755)
    assert "cannot read case folder" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ split protocols
@pytest.fixture(scope="module")
def some_lckd_cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    """Three validation-list cases, three train-only cases and one case no list names, in the 2018 layout."""
    from lckd_med.data.splits import protocol_lists

    lists = protocol_lists("lckd2018")
    val = lists["validation"][:3]
    train_only = [c for c in lists["training"] if c not in lists["validation"]][:3]
    root = tmp_path_factory.mktemp("lckd18") / "MICCAI_BraTS_2018_Data_Training"
    for cid in (*val, *train_only, "Brats18_NotListed_1"):
        write_case(root / "HGG" / cid)
    return root, {"val": val, "train_only": train_only}


def test_protocol_lckd2018_names_missing_cases_and_writes_the_rest(some_lckd_cases, tmp_path, capsys):
    root, ids = some_lckd_cases
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", root, "--output", out, "--workers", "1", "--protocol", "lckd2018") == 0
    text = capsys.readouterr().out
    assert "training   listed  285, written    6, missing on disk 279" in text
    assert "validation listed   57, written    3, missing on disk 54" in text
    assert "none of the testing cases is in this folder" in text and "Brats18_CBICA_AAM_1" in text
    from lckd_med.data.splits import protocol_lists

    first_missing = next(c for c in protocol_lists("lckd2018")["training"] if c not in ids["val"] + ids["train_only"])
    assert first_missing in text  # a missing case is named
    assert "on disk but in no list (1, left out): Brats18_NotListed_1" in text
    d = json.loads(out.read_text())
    assert sorted(e["case_id"] for e in d["training"]) == sorted(ids["val"] + ids["train_only"])
    assert sorted(e["case_id"] for e in d["validation"]) == sorted(ids["val"])  # also training: the reference
    assert d["testing"] == [] and d["meta"]["validation_in_training"] is True
    assert d["meta"]["split_lists"]["source"] == "lckd2018"
    assert len(d["meta"]["split_lists"]["missing"]["training"]) == 279
    assert d["meta"]["split_lists"]["not_listed"] == ["Brats18_NotListed_1"]
    assert len(load_datalist(out, "validation")) == 3  # the overlapping file loads


def test_protocol_disjoint_keeps_validation_out_of_training(some_lckd_cases, tmp_path, capsys):
    root, ids = some_lckd_cases
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", root, "--output", out, "--workers", "1", "--protocol", "lckd2018_disjoint") == 0
    d = json.loads(out.read_text())
    assert sorted(e["case_id"] for e in d["training"]) == sorted(ids["train_only"])
    assert sorted(e["case_id"] for e in d["validation"]) == sorted(ids["val"])
    assert d["meta"]["validation_in_training"] is False


def test_split_lists_txt_and_csv(some_lckd_cases, tmp_path, capsys):
    root, ids = some_lckd_cases
    (tmp_path / "train.txt").write_text("\n".join(ids["train_only"] + ["Brats18_Gone_1"]) + "\n")
    (tmp_path / "test.csv").write_text("path,grade\n" + "".join(f"HGG/{c},HGG\n" for c in ids["val"]))
    out = tmp_path / "dl.json"
    args = ["training=" + str(tmp_path / "train.txt"), "testing=" + str(tmp_path / "test.csv")]
    assert run("--dataset_dir", root, "--output", out, "--workers", "1", "--split_lists", *args) == 0
    text = capsys.readouterr().out
    assert "missing: Brats18_Gone_1" in text and "Brats18_NotListed_1" in text
    d = json.loads(out.read_text())
    assert sorted(e["case_id"] for e in d["testing"]) == sorted(ids["val"])
    assert d["validation"] == [] and d["meta"]["split_lists"]["source"] == "split_lists"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--split_lists", "train=x.txt"], "unknown split"),
        (["--split_lists", "training=/nonexistent/list.txt"], "split list not found"),
        (["--protocol", "lckd2018", "--split_lists", "training=a.txt"], "not allowed with"),
    ],
    ids=["unknown_split", "missing_file", "both"],
)
def test_split_list_bad_arguments(some_lckd_cases, tmp_path, capsys, extra, match):
    root, _ = some_lckd_cases
    assert run("--dataset_dir", root, "--output", tmp_path / "dl.json", *extra) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "dl.json").exists()


def test_split_lists_without_any_listed_case_on_disk_writes_nothing(some_lckd_cases, tmp_path, capsys):
    root, _ = some_lckd_cases
    (tmp_path / "train.txt").write_text("Brats18_Elsewhere_1\n")
    out = tmp_path / "dl.json"
    assert run("--dataset_dir", root, "--output", out, "--split_lists", f"training={tmp_path / 'train.txt'}") == 1
    assert "no case of the training list" in capsys.readouterr().err and not out.exists()
