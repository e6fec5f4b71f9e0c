"""Case discovery for the BraTS 2018/2019, 2020/2021 (flat) and 2023+ layouts (file names only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lckd_med.constants import BRATS_2023, BRATS_LEGACY, MODALITIES, RELEASE_FILE_SUFFIXES
from lckd_med.data.layouts import (
    LAYOUTS,
    BratsCase,
    DatasetConflictError,
    LayoutError,
    detect_layout,
    discover_cases,
    guess_release,
    parse_release,
)

# layout -> (separator, naming scheme); discovery reads names only, so files may be empty
SCHEME = {"brats2018": ("_", "legacy"), "flat": ("_", "legacy"), "brats2023": ("-", "2023")}


def touch_case(folder: Path, layout: str, ext: str = ".nii.gz", skip: tuple[str, ...] = ()) -> Path:
    """Empty files named like one case of ``layout`` in ``folder`` (folder name = case id)."""
    sep, scheme = SCHEME[layout]
    folder.mkdir(parents=True, exist_ok=True)
    suffixes = {**RELEASE_FILE_SUFFIXES[scheme], "label": "seg"}
    for key, suffix in suffixes.items():
        if key not in skip:
            (folder / f"{folder.name}{sep}{suffix}{ext}").touch()
    return folder


def make_tree(root: Path, layout: str, ext: str = ".nii.gz") -> dict[str, str | None]:
    """Three cases in ``layout``; returns case id -> expected grade."""
    if layout == "brats2018":
        ids = {"Brats18_A_1": "HGG", "Brats18_B_1": "HGG", "Brats18_C_1": "LGG"}
        for cid, grade in ids.items():
            touch_case(root / grade / cid, layout, ext)
        return ids
    names = ["BraTS2021_00002", "BraTS2021_00000", "BraTS2021_00001"]
    if layout == "brats2023":
        names = ["BraTS-GLI-00002-000", "BraTS-GLI-00000-000", "BraTS-GLI-00001-000"]
    for cid in names:
        touch_case(root / cid, layout, ext)
    return dict.fromkeys(names)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
@pytest.mark.parametrize(
    "layout, release, et", [("brats2018", 2018, 4), ("flat", 2021, 4), ("brats2023", 2023, 3)], ids=lambda v: str(v)
)
def test_each_layout_is_detected_and_discovered(tmp_path: Path, layout: str, release: int, et: int, ext: str) -> None:
    grades = make_tree(tmp_path, layout, ext)
    assert detect_layout(tmp_path) == layout
    res = discover_cases(tmp_path)
    assert (res.layout, res.release, res.convention.et) == (layout, release, et)
    assert [c.case_id for c in res.cases] == sorted(grades)
    assert res.problems == ()
    sep, scheme = SCHEME[layout]
    for case in res.cases:
        assert isinstance(case, BratsCase) and case.layout == layout
        assert case.grade == grades[case.case_id]
        assert list(case.paths) == list(MODALITIES)
        for m in MODALITIES:
            assert case.paths[m] == case.dir / f"{case.case_id}{sep}{RELEASE_FILE_SUFFIXES[scheme][m]}{ext}"
        assert case.label == case.dir / f"{case.case_id}{sep}seg{ext}"
        assert case.missing_modalities == ()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_forced_layout_matches_auto(tmp_path: Path, layout: str) -> None:
    make_tree(tmp_path, layout)
    assert discover_cases(tmp_path, layout=layout).cases == discover_cases(tmp_path, layout="auto").cases


def test_forced_wrong_layout_finds_nothing_and_reports_folders(tmp_path: Path) -> None:
    make_tree(tmp_path, "flat")
    res = discover_cases(tmp_path, layout="brats2023")
    assert res.cases == ()
    assert len(res.problems) == 3 and all("no file named" in p.reason for p in res.problems)


def test_missing_sequence_is_none_not_an_error(tmp_path: Path) -> None:
    touch_case(tmp_path / "BraTS2021_00000", "flat", skip=("t1", "t2"))
    touch_case(tmp_path / "BraTS2021_00001", "flat", skip=("label",))
    a, b = discover_cases(tmp_path).cases
    assert a.paths["t1"] is None and a.paths["t2"] is None and a.paths["flair"] is not None
    assert a.missing_modalities == ("t1", "t2") and a.present_modalities == ("flair", "t1ce")
    assert b.label is None and b.missing_modalities == ()


@pytest.mark.parametrize(
    "case_ids, layout, expected",
    [
        (["Brats18_CBICA_AAB_1"], "brats2018", 2018),
        (["BraTS19_2013_0_1"], "brats2018", 2019),
        (["BraTS20_Training_001"], "flat", 2020),
        (["BraTS2021_00008"], "flat", 2021),
        (["case_1"], "flat", 2021),
        (["BraTS-GLI-00000-000"], "brats2023", 2023),
        (["BraTS2021_00008"], "brats2023", 2023),  # a legacy name cannot make a 2023 layout legacy
    ],
)
def test_guess_release(case_ids: list[str], layout: str, expected: int) -> None:
    assert guess_release(case_ids, layout) == expected


def test_guess_release_rejects_unknown_layout() -> None:
    with pytest.raises(ValueError, match="unknown layout"):
        guess_release(["x"], "brats2099")


def test_release_override_changes_convention(tmp_path: Path) -> None:
    make_tree(tmp_path, "flat")
    assert discover_cases(tmp_path).convention is BRATS_LEGACY
    res = discover_cases(tmp_path, release=2023)
    assert res.release == 2023 and res.convention is BRATS_2023


@pytest.mark.parametrize("value, expected", [(2018, 2018), ("2023", 2023), ("brats2021", 2021)])
def test_parse_release(value: int | str, expected: int) -> None:
    assert parse_release(value) == expected


@pytest.mark.parametrize("value", ["twenty", True, "", 1999.5, 3000])
def test_parse_release_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_release(value)  # type: ignore[arg-type]


def test_bad_release_argument(tmp_path: Path) -> None:
    make_tree(tmp_path, "flat")
    with pytest.raises(ValueError, match="release"):
        discover_cases(tmp_path, release="latest")


def test_bad_layout_argument(tmp_path: Path) -> None:
    make_tree(tmp_path, "flat")
    with pytest.raises(ValueError, match="unknown layout"):
        discover_cases(tmp_path, layout="brats2016")


def test_name_mapping_grades(tmp_path: Path) -> None:
    for cid in ("BraTS20_Training_001", "BraTS20_Training_002", "BraTS20_Training_003"):
        touch_case(tmp_path / cid, "flat")
    (tmp_path / "name_mapping.csv").write_text(
        "Grade,BraTS_2019_subject_ID,BraTS_2020_subject_ID\n"
        "HGG,BraTS19_2013_2_1,BraTS20_Training_001\nLGG,BraTS19_2013_0_1,BraTS20_Training_002,extra_cell\n"
        "GBM,x,BraTS20_Training_003\n"
    )
    res = discover_cases(tmp_path)
    assert [c.grade for c in res.cases] == ["HGG", "LGG", None]
    assert res.release == 2020 and res.problems == ()


def test_name_mapping_without_grade_column_is_reported(tmp_path: Path) -> None:
    touch_case(tmp_path / "BraTS20_Training_001", "flat")
    (tmp_path / "name_mapping.csv").write_text("ID,Other\nBraTS20_Training_001,x\n")
    res = discover_cases(tmp_path)
    assert res.cases[0].grade is None
    assert any("Grade" in p.reason for p in res.problems)


def test_stray_files_and_folders_are_ignored_but_reported(tmp_path: Path) -> None:
    make_tree(tmp_path, "flat")
    (tmp_path / "notes.bin").write_bytes(b"x")
    (tmp_path / "survival_info.csv").write_text("a,b\n")  # metadata: silent
    (tmp_path / ".DS_Store").write_bytes(b"x")  # hidden: silent
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "scan.nii.gz").touch()
    case_dir = tmp_path / "BraTS2021_00000"
    (case_dir / "W39_1998.09.19_Segm.nii").touch()
    (case_dir / "readme.doc").touch()
    (case_dir / "extra").mkdir()
    res = discover_cases(tmp_path)
    assert len(res.cases) == 3
    reported = {Path(p.file).name for p in res.problems}
    assert reported == {"notes.bin", "empty_folder", "odd", "W39_1998.09.19_Segm.nii", "readme.doc", "extra"}


def test_brats2018_stray_entries_are_reported(tmp_path: Path) -> None:
    make_tree(tmp_path, "brats2018")
    touch_case(tmp_path / "Brats18_Z_1", "brats2018")  # case outside HGG/LGG
    (tmp_path / "HGG" / "stray.txt.gz").touch()
    res = discover_cases(tmp_path)
    assert [c.case_id for c in res.cases] == ["Brats18_A_1", "Brats18_B_1", "Brats18_C_1"]
    assert res.cases[0].grade == "HGG"
    reasons = " | ".join(str(p) for p in res.problems)
    assert "Brats18_Z_1: ignored: brats2018 layout expects only HGG/ and LGG/" in reasons and "stray.txt.gz" in reasons


def test_two_copies_of_one_case_are_refused(tmp_path: Path) -> None:
    make_tree(tmp_path, "brats2018")
    touch_case(tmp_path / "LGG" / "Brats18_A_1", "brats2018")  # same id as an HGG case, another folder
    with pytest.raises(DatasetConflictError, match=r"Brats18_A_1 in .*HGG/Brats18_A_1, .*LGG/Brats18_A_1"):
        discover_cases(tmp_path)


def test_prefers_compressed_when_both_copies_exist(tmp_path: Path) -> None:
    folder = touch_case(tmp_path / "BraTS2021_00000", "flat")
    (folder / "BraTS2021_00000_t1.nii").touch()
    res = discover_cases(tmp_path)
    assert res.cases[0].paths["t1"].name == "BraTS2021_00000_t1.nii.gz"
    assert any("several files for 't1'" in p.reason for p in res.problems)


def test_file_with_other_prefix_is_accepted(tmp_path: Path) -> None:
    folder = touch_case(tmp_path / "BraTS2021_00000", "flat", skip=("label",))
    (folder / "renamed_seg.nii.gz").touch()
    assert discover_cases(tmp_path).cases[0].label == folder / "renamed_seg.nii.gz"


def test_empty_folder_raises_layout_error_naming_layouts(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match=r"no BraTS case found.*brats2018.*flat.*brats2023"):
        discover_cases(tmp_path)


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        detect_layout(tmp_path / "nope")


def test_file_instead_of_folder_raises(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(NotADirectoryError):
        discover_cases(tmp_path / "f.txt")


def test_single_case_folder_gets_a_hint(tmp_path: Path) -> None:
    folder = touch_case(tmp_path / "BraTS2021_00000", "flat")
    with pytest.raises(LayoutError, match="single case"):
        detect_layout(folder)


def test_dataset_below_the_given_folder_is_found(tmp_path: Path) -> None:
    grades = make_tree(tmp_path / "MICCAI_BraTS_2018_Data_Training", "brats2018")
    assert detect_layout(tmp_path) == "brats2018"
    res = discover_cases(tmp_path)
    assert [c.case_id for c in res.cases] == sorted(grades) and res.release == 2018
    assert [(st.root.name, st.layout, st.release, len(st.case_ids)) for st in res.subtrees] == [
        ("MICCAI_BraTS_2018_Data_Training", "brats2018", 2018, 3)
    ]


def write_decoys(root: Path) -> None:
    """Folders a real disk holds beside BraTS data: none of them is a case."""
    (root / "other_study" / "sub-01" / "anat").mkdir(parents=True)
    (root / "other_study" / "sub-01" / "anat" / "sub-01_T1w.nii.gz").touch()  # BIDS name, not BraTS
    (root / "scratch").mkdir()
    (root / "scratch" / "mni_t1.nii.gz").touch()  # one sequence-like name, prefix is not the folder: not a case
    (root / "scratch" / "notes.txt").write_text("x")
    (root / "empty").mkdir()
    touch_case(root / ".trash" / "BraTS2021_09999", "flat")  # hidden: never looked at
    (root / "papers").mkdir()
    (root / "papers" / "lckd.pdf").touch()


def test_discovery_from_a_parent_folder_finds_exactly_the_cases_below_it(tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    grades = make_tree(downloads / "brats18" / "MICCAI_BraTS_2018_Data_Training", "brats2018")
    more = tmp_path / "more_2018"  # a second sub-tree of the same edition, flat, its own cases
    touch_case(more / "Brats18_D_1", "flat")
    write_decoys(tmp_path)
    write_decoys(downloads)
    res = discover_cases(tmp_path)
    assert [c.case_id for c in res.cases] == sorted([*grades, "Brats18_D_1"])
    assert res.release == 2018 and res.layout == "brats2018"
    assert [(st.root, st.layout, len(st.case_ids)) for st in res.subtrees] == [
        (downloads / "brats18" / "MICCAI_BraTS_2018_Data_Training", "brats2018", 3),
        (more, "flat", 1),
    ]
    ignored = {Path(p.file).relative_to(tmp_path).as_posix(): p.reason for p in res.problems}
    for base in ("", "downloads/"):
        assert "not a BraTS case folder" in ignored[f"{base}other_study/sub-01/anat"]
        assert "mni_t1.nii.gz" in ignored[f"{base}scratch"]
        assert "not a BraTS case folder" in ignored[f"{base}empty"]
    assert not any(".trash" in k for k in ignored)


def test_symlinked_case_folder_is_the_same_case_not_a_copy(tmp_path: Path) -> None:
    make_tree(tmp_path / "data", "flat")
    (tmp_path / "a_links").mkdir()  # sorts before "data": the real folder still wins
    (tmp_path / "a_links" / "BraTS2021_00000").symlink_to(tmp_path / "data" / "BraTS2021_00000")
    (tmp_path / "loop").symlink_to(tmp_path)  # a link back up must not loop
    res = discover_cases(tmp_path)
    assert [c.dir for c in res.cases] == [tmp_path / "data" / f"BraTS2021_0000{i}" for i in range(3)]
    reasons = {Path(p.file).name: p.reason for p in res.problems}
    assert "same folder as" in reasons["BraTS2021_00000"] and "same folder as" in reasons["loop"]


def test_two_editions_below_one_folder_are_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "MICCAI_BraTS_2018_Data_Training", "brats2018")
    make_tree(tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData", "flat")
    with pytest.raises(DatasetConflictError, match=r"2 BraTS editions \(2018, 2021\).*MICCAI_BraTS_2018.*BraTS2021"):
        discover_cases(tmp_path)
    # pointing at one of them works
    assert len(discover_cases(tmp_path / "RSNA_ASNR_MICCAI_BraTS2021_TrainingData").cases) == 3


def test_legacy_and_2023_naming_below_one_folder_are_refused(tmp_path: Path) -> None:
    make_tree(tmp_path / "a", "flat")
    make_tree(tmp_path / "b", "brats2023")
    with pytest.raises(DatasetConflictError, match="2021, 2023"):
        discover_cases(tmp_path)
    res = discover_cases(tmp_path, layout="brats2023")  # a forced layout keeps one edition
    assert len(res.cases) == 3 and res.release == 2023
    assert sum("no file named as in layout brats2023" in p.reason for p in res.problems) == 3


def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    import os

    make_tree(tmp_path / "data", "flat")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running as a user who can read any folder")
        res = discover_cases(tmp_path)
        assert len(res.cases) == 3
        assert any(p.file == str(locked) and "cannot read folder" in p.reason for p in res.problems)
    finally:
        locked.chmod(0o755)
