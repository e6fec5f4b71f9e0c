"""Tests of ``python -m data_prep.synthetic``: naming per release, summary line, missing files, bad arguments."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from data_prep.synthetic import main


def test_writes_cases_and_prints_one_summary_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--cases", "3", "--seed", "3", "--lgg_fraction", "0.34"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("data_prep.synthetic: wrote 3 cases (2 HGG, 1 LGG, 1 without ET, 0 with missing")
    assert len(list(tmp_path.glob("HGG/Brats18_SYN_*_1/*_seg.nii.gz"))) == 2
    assert len(list(tmp_path.glob("LGG/Brats18_SYN_*_1/*_seg.nii.gz"))) == 1


@pytest.mark.parametrize(
    "release, relative_file",
    [
        ("2019", "HGG/Brats19_SYN_001_1/Brats19_SYN_001_1_t1ce.nii.gz"),
        ("2020", "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz"),
        ("2021", "BraTS2021_00001/BraTS2021_00001_seg.nii.gz"),
        ("2023", "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t2f.nii.gz"),
        ("2024", "BraTS-GLI-00000-000/BraTS-GLI-00000-000-t1n.nii.gz"),
    ],
)
def test_release_naming(tmp_path, capsys, release, relative_file):
    assert main(["--out", str(tmp_path), "--cases", "1", "--release", release, "--lgg_fraction", "0"]) == 0
    assert (tmp_path / relative_file).is_file()
    assert len(list(tmp_path.rglob("*.nii.gz"))) == 5
    assert f"release {release}" in capsys.readouterr().out


def test_missing_fraction_leaves_sequences_out(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--cases", "2", "--missing_fraction", "1"]) == 0
    assert "2 with missing sequences" in capsys.readouterr().out
    for case_dir in tmp_path.glob("*/*"):
        files = {p.name for p in case_dir.iterdir()}
        assert f"{case_dir.name}_seg.nii.gz" in files
        assert 3 <= len(files) <= 4


def test_same_seed_same_data(tmp_path):
    for name, seed in (("a", "9"), ("b", "9"), ("c", "10")):
        main(["--out", str(tmp_path / name), "--cases", "1", "--seed", seed, "--lgg_fraction", "0"])
    seg = {
        name: np.asarray(nib.load(tmp_path / name / "HGG/Brats18_SYN_001_1/Brats18_SYN_001_1_seg.nii.gz").dataobj)
        for name in "abc"
    }
    np.testing.assert_array_equal(seg["a"], seg["b"])
    assert not np.array_equal(seg["a"], seg["c"])


def test_module_entry_point(tmp_path):
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_prep.synthetic",
            "--out",
            str(tmp_path / "d"),
            "--cases",
            "1",
            "--release",
            "2023",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.strip().splitlines()) == 1
    bad = subprocess.run(
        [sys.executable, "-m", "data_prep.synthetic", "--out", str(tmp_path / "e"), "--cases", "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "--cases" in bad.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--cases", "0"], "argument --cases: must be >= 1"),
        (["--cases", "-3"], "argument --cases: must be >= 1"),
        (["--cases", "two"], "argument --cases: expected a whole number"),
        (["--cases", "1", "--spacing", "3"], "argument --spacing: must be 1 or 2"),
        (["--cases", "1", "--spacing", "0.5"], "argument --spacing: must be 1 or 2"),
        (["--cases", "1", "--spacing", "fine"], "argument --spacing: expected 1 or 2"),
        (["--cases", "1", "--release", "2017"], "argument --release: must be a BraTS year 2018-"),
        (["--cases", "1", "--release", "1999"], "argument --release: must be a BraTS year 2018-"),
        (["--cases", "1", "--release", "2101"], "argument --release: must be a BraTS year 2018-"),
        (["--cases", "1", "--release", "latest"], "argument --release: must be a BraTS year 2018-"),
        (["--cases", "1", "--lgg_fraction", "1.5"], "argument --lgg_fraction: must be in [0, 1]"),
        (["--cases", "1", "--missing_fraction", "-0.1"], "argument --missing_fraction: must be in [0, 1]"),
        (["--cases", "1", "--missing_fraction", "some"], "argument --missing_fraction: expected a number"),
        (["--cases", "1", "--seed", "-1"], "argument --seed: must be >= 0"),
        (["--cases", "1", "--seed", "x"], "argument --seed: expected a non-negative integer"),
        ([], "the following arguments are required: --cases"),
    ],
)
def test_bad_argument_is_rejected(tmp_path, capsys, args, fragment):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(out), *args])
    assert exc.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not out.exists()


def test_missing_out_is_rejected(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--cases", "1"])
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err
