"""What a command may write or delete: single output files, folders with an ownership record, working folders and the
output-folder lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from lckd_med.utils.outputs import (
    OWNER_MARKER,
    OWNERSHIP_FILE,
    OutputLockedError,
    OwnedFiles,
    check_output_file,
    check_output_folder,
    folder_lock,
    make_work_dir,
    remove_stale_work_dirs,
    same_file,
)


def test_output_file_rules(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"scan")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(scan)
    hard = tmp_path / "hard.nii.gz"
    os.link(scan, hard)
    assert same_file(scan, link) and same_file(scan, hard) and not same_file(scan, tmp_path / "other")
    for given in (scan, link, hard):  # the output is an input: refused even when forced
        with pytest.raises(ValueError, match="is also an input"):
            check_output_file(given, inputs=[scan], overwrite=True)
    with pytest.raises(FileExistsError, match="scan.nii.gz exists; it was left untouched.*--overwrite"):
        check_output_file(scan)
    assert check_output_file(scan, overwrite=True) == scan
    with pytest.raises(IsADirectoryError, match="is a folder"):
        check_output_file(tmp_path)
    with pytest.raises(NotADirectoryError, match="scan.nii.gz is a file, not a folder"):
        check_output_file(scan / "sub" / "seg.nii.gz")
    assert check_output_file(tmp_path / "new" / "seg.nii.gz") == tmp_path / "new" / "seg.nii.gz"
    assert scan.read_bytes() == b"scan"


def test_output_folder_rules(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        check_output_folder(tmp_path / "f")
    with pytest.raises(NotADirectoryError, match="f is a file, not a folder"):
        check_output_folder(tmp_path / "f" / "out")
    assert check_output_folder(tmp_path / "new") == tmp_path / "new"


def test_ownership_record_replaces_only_unchanged_files_it_wrote(tmp_path):
    owned = OwnedFiles(tmp_path)
    owned.check("report.csv")  # nothing there: fine
    (tmp_path / "report.csv").write_text("ours")
    owned.record("report.csv")
    assert owned.owns("report.csv") and (tmp_path / OWNERSHIP_FILE).is_file()
    owned.check("report.csv")
    (tmp_path / "report.csv").write_text("edited by the user")
    with pytest.raises(FileExistsError, match="was not written by lckd_med \\(or was changed since\\)"):
        owned.check("report.csv")
    (tmp_path / "notes.csv").write_text("the user's")
    with pytest.raises(FileExistsError, match="notes.csv exists.*pass --overwrite"):
        owned.check("notes.csv")
    with pytest.raises(FileExistsError, match="choose another output folder$"):
        OwnedFiles(tmp_path, flag=None).check("notes.csv")
    OwnedFiles(tmp_path, overwrite=True).check("notes.csv", "report.csv")


def test_a_tree_is_removed_only_when_every_file_is_ours(tmp_path):
    owned = OwnedFiles(tmp_path)
    (tmp_path / "pred" / "t1").mkdir(parents=True)
    (tmp_path / "pred" / "t1" / "a.nii.gz").write_bytes(b"ours")
    owned.record("pred/t1/a.nii.gz")
    (tmp_path / "pred" / "t1" / "mine.txt").write_text("the user's")
    with pytest.raises(FileExistsError, match="holds 1 file\\(s\\) lckd_med did not write"):
        owned.remove_tree("pred")
    assert (tmp_path / "pred" / "t1" / "mine.txt").is_file() and (tmp_path / "pred" / "t1" / "a.nii.gz").is_file()
    (tmp_path / "pred" / "t1" / "mine.txt").unlink()
    owned.remove_tree("pred")
    assert not (tmp_path / "pred").exists() and not owned.owns("pred/t1/a.nii.gz")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_only_provably_stale_work_dirs_are_removed(tmp_path):
    mine = make_work_dir(tmp_path, ".lckd_x_")  # this process: running
    dead = tmp_path / ".lckd_x_dead"
    dead.mkdir()
    (dead / OWNER_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    elsewhere = tmp_path / ".lckd_x_other_host"
    elsewhere.mkdir()
    (elsewhere / OWNER_MARKER).write_text(json.dumps({"host": "another-machine", "pid": _dead_pid()}))
    unmarked = tmp_path / ".lckd_x_unmarked"
    unmarked.mkdir()
    assert remove_stale_work_dirs(tmp_path, ".lckd_x_") == [dead]
    assert mine.is_dir() and elsewhere.is_dir() and unmarked.is_dir() and not dead.exists()


def test_a_second_run_is_refused_while_the_first_holds_the_lock(tmp_path):
    with folder_lock(tmp_path, "inference"):
        with pytest.raises(OutputLockedError, match="another lckd_med inference is writing to"):
            with folder_lock(tmp_path, "inference"):
                pass
    with folder_lock(tmp_path, "inference"):  # released with the first run
        pass
