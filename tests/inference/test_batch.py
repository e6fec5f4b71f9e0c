"""Tests of lckd_med.inference.batch: case discovery, manifests and end-to-end batch inference on tiny scans.

The checkpoint is a tiny LCKDNet whose output head is zeroed with large positive biases, so every region is
predicted everywhere inside the brain box: the written label map must then be exactly "ET label inside the
union brain box of the inputs, 0 elsewhere", which checks the inversion to the input grid voxel by voxel.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from lckd_med.constants import MODALITIES, RELEASE_FILE_SUFFIXES
from lckd_med.engines.checkpoint import load_checkpoint, save_checkpoint
from lckd_med.inference.batch import (
    REPORT_COLUMNS,
    REPORT_NAME,
    BatchInference,
    discover_inference_cases,
    exit_on_failure,
    match_sequence_file,
    read_manifest,
)
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME, describe_source
from lckd_med.utils.outputs import LOCK_FILE, OWNER_MARKER, OutputLockedError, folder_lock
from tests.testkit import checkpoint_payload, tiny_lckd_net, write_nifti

SHAPE = (24, 24, 16)
BOX = (slice(3, 20), slice(5, 19), slice(2, 12))  # asymmetric, so a wrong flip or crop shows
SUBSET_DICE = {"t1ce+t2": {"ET": 0.7, "TC": 0.8, "WT": 0.9}, "flair": {"ET": 0.1, "TC": 0.2, "WT": 0.3}}


def lps_affine(offset=(0.0, 0.0, 0.0), spacing: float = 1.0) -> np.ndarray:
    aff = np.diag([-spacing, -spacing, spacing, 1.0])
    aff[:3, 3] = [spacing * (SHAPE[0] - 1) + 7.0, spacing * (SHAPE[1] - 1) - 3.0, -5.0]
    aff[:3, 3] += offset
    return aff


def volume(shape=SHAPE, seed: int = 0, box=BOX) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    region = data[box]
    data[box] = np.random.default_rng(seed).uniform(1.0, 3.0, size=region.shape)
    return data


def write(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    return write_nifti(path, data, lps_affine() if affine is None else affine)


def write_case(root: Path, case_id: str, modalities, scheme: str = "legacy", sep: str = "_", **kw) -> dict:
    """Write ``root/case_id/case_id<sep><suffix>.nii.gz`` for each modality; returns modality -> path."""
    out = {}
    for i, m in enumerate(modalities):
        suffix = RELEASE_FILE_SUFFIXES[scheme][m]
        out[m] = write(root / case_id / f"{case_id}{sep}{suffix}.nii.gz", volume(seed=i), **kw)
    return out


def make_checkpoint(path: Path, subset_dice=None, convention: str = "brats2018", train_config=True) -> Path:
    net = tiny_lckd_net()
    with torch.no_grad():
        for p in net.decoder.head.parameters():
            p.zero_()
        dict(net.decoder.head.named_parameters())["conv.conv.bias"].fill_(10.0)
    fields = {"label_convention": convention}
    if train_config:
        fields["train_config"] = {"roi_size": [16, 16, 16]}
    if subset_dice is not None:
        fields["subset_dice"] = subset_dice
    return save_checkpoint(path, checkpoint_payload(net, **fields))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", subset_dice=SUBSET_DICE)


def expected_labels(et_label: int = 4, shape=SHAPE, box=BOX) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    out[box] = et_label
    return out


def run(ckpt: Path, input_dir: Path | None, output_dir: Path, **kw) -> pd.DataFrame:
    return BatchInference(ckpt, input_dir, output_dir, device="cpu", progress=False, **kw).run()


def assert_matches_input(out_path: Path, ref_path: Path, et_label: int = 4) -> None:
    out, ref = nib.load(out_path), nib.load(ref_path)
    assert out.shape == ref.shape[:3]
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, ref.affine)
    np.testing.assert_array_equal(out.header.get_sform(), ref.header.get_sform())
    np.testing.assert_allclose(out.header.get_qform(), ref.header.get_qform(), atol=1e-6)
    for code in ("qform_code", "sform_code"):
        assert int(out.header[code]) == int(ref.header[code])
    labels = np.asarray(out.dataobj)
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, et_label}
    np.testing.assert_array_equal(labels, expected_labels(et_label))


def leftovers(output_dir: Path, expected_outputs) -> list[str]:
    wanted = {f"{c}.nii.gz" for c in expected_outputs} | {REPORT_NAME, LOCK_FILE}
    return sorted(set(os.listdir(output_dir)) - wanted)


# ---------------------------------------------------------------------------------------------- discovery


@pytest.mark.parametrize(
    "name, expected",
    [
        ("Brats18_X_1_flair.nii.gz", "flair"),
        ("Brats18_X_1_t1.nii.gz", "t1"),
        ("Brats18_X_1_t1ce.nii.gz", "t1ce"),
        ("Brats18_X_1_t2.nii", "t2"),
        ("BraTS-GLI-00000-000-t2f.nii.gz", "flair"),
        ("BraTS-GLI-00000-000-t1n.nii.gz", "t1"),
        ("BraTS-GLI-00000-000-t1c.nii.gz", "t1ce"),
        ("BraTS-GLI-00000-000-t2w.nii.gz", "t2"),
        ("other_prefix_T1CE.NII.GZ", "t1ce"),
        ("Brats18_X_1_seg.nii.gz", None),
        ("BraTS-GLI-00000-000-seg.nii.gz", None),
        ("Brats18_X_1_flair.txt", None),
        ("flair.nii.gz", None),
        ("Brats18_X_1_t1gd.nii.gz", None),
        (".Brats18_X_1_t1.nii.gz", None),
    ],
)
def test_match_sequence_file(name, expected):
    assert match_sequence_file(name) == expected


def test_discover_cases(tmp_path):
    write_case(tmp_path, "A", ["flair", "t1ce"])
    write_case(tmp_path, "B", ["t2"], scheme="2023", sep="-")
    (tmp_path / "C").mkdir()
    (tmp_path / "C" / "C_seg.nii.gz").write_bytes(b"")
    (tmp_path / "D").mkdir()
    for name in ("D_t1.nii", "D_t1.nii.gz"):
        (tmp_path / "D" / name).write_bytes(b"")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "loose_t1.nii.gz").write_bytes(b"")
    cases = {c.case_id: c for c in discover_inference_cases(tmp_path)}
    assert sorted(cases) == ["A", "B", "C", "D"]
    assert cases["A"].present == ("flair", "t1ce") and cases["A"].subset == "flair+t1ce" and cases["A"].error is None
    assert cases["B"].paths["t2"].name == "B-t2w.nii.gz" and cases["B"].subset == "t2"
    assert "no sequences" in cases["C"].error and cases["C"].subset == ""
    assert "several t1 files" in cases["D"].error


@pytest.mark.parametrize(
    "input_dir, manifest, error, match",
    [
        (None, None, ValueError, "give input_dir"),
        ("missing_dir", None, FileNotFoundError, "not a folder"),
        (None, "missing.csv", FileNotFoundError, "does not exist"),
    ],
)
def test_discover_bad_arguments(tmp_path, input_dir, manifest, error, match):
    with pytest.raises(error, match=match):
        discover_inference_cases(tmp_path / input_dir if input_dir else None, tmp_path / manifest if manifest else None)


@pytest.mark.parametrize(
    "text, match",
    [
        ("case_id,flair,t1,t1ce\nA,a.nii.gz,,,\n", r"lacks column\(s\) \['t2'\]"),
        ("", "lacks column"),
        ("case_id,flair,t1,t1ce,t2\nA,a.nii.gz,,,\nA,b.nii.gz,,,\n", "appears twice"),
        ("case_id,flair,t1,t1ce,t2\n,a.nii.gz,,,\n", "empty case_id"),
        ("case_id,flair,t1,t1ce,t2\nsub/A,a.nii.gz,,,\n", "plain file name"),
        ("case_id,flair,t1,t1ce,t2\n..,a.nii.gz,,,\n", "plain file name"),
    ],
)
def test_read_manifest_bad(tmp_path, text, match):
    p = tmp_path / "m.csv"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        read_manifest(p)
    assert str(p) in str(e.value)


def test_read_manifest_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    p = tmp_path / "sub" / "m.csv"
    p.write_text("case_id,flair,t1,t1ce,t2,notes\nA,a.nii.gz,,/abs/b.nii.gz,,x\nB,,,,,\n")
    a, b = read_manifest(p)
    assert a.paths["flair"] == (tmp_path / "sub" / "a.nii.gz").resolve()
    assert a.paths["t1ce"] == Path("/abs/b.nii.gz") and a.paths["t1"] is None and a.error is None
    assert "no sequences" in b.error and "line 3" in b.error


# ---------------------------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"overlap": 1.0}, ValueError, "overlap"),
        ({"overlap": -0.1}, ValueError, "overlap"),
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"threshold": True}, ValueError, "threshold"),
        ({"amp": "yes"}, TypeError, "amp"),
        ({"progress": 1}, TypeError, "progress"),
        ({"sw_batch_size": 0}, ValueError, "sw_batch_size"),
        ({"roi_size": (18, 16, 16)}, ValueError, "divisible"),
        ({"roi_size": (16, 16)}, ValueError, "roi_size"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"label_convention": "brats1999"}, ValueError, "release"),
        ({"postprocess": "et_rule"}, ValueError, "postprocess"),
        ({"average": "median"}, ValueError, "average"),
    ],
)
def test_constructor_bad_arguments(ckpt, tmp_path, kwargs, error, match):
    tmp_path.joinpath("in").mkdir()
    kwargs = {"device": "cpu", **kwargs}
    with pytest.raises(error, match=match):
        BatchInference(ckpt, tmp_path / "in", tmp_path / "out", **kwargs)


def test_constructor_bad_paths(ckpt, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        BatchInference(tmp_path / "none.pt", tmp_path / "in", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        BatchInference(ckpt, tmp_path / "absent", tmp_path / "out")
    with pytest.raises(ValueError, match="give input_dir"):
        BatchInference(ckpt, None, tmp_path / "out")
    bare = make_checkpoint(tmp_path / "bare.pt", train_config=False)
    with pytest.raises(ValueError, match="roi_size"):
        BatchInference(bare, tmp_path / "in", tmp_path / "out")
    assert BatchInference(bare, tmp_path / "in", tmp_path / "out", roi_size=16, device="cpu").roi_size == (16,) * 3


def test_run_without_cases(ckpt, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="no cases found"):
        run(ckpt, tmp_path / "in", tmp_path / "out")


# ---------------------------------------------------------------------------------------------- end to end


def test_batch_inference_subsets_and_report(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    subsets = {"c_full": MODALITIES, "c_t1ce_t2": ("t2", "t1ce"), "c_flair": ("flair",), "c_t1": ("t1",)}
    refs = {}
    for case_id, mods in subsets.items():
        refs[case_id] = write_case(inp, case_id, mods)
    # a 4-D file with a trailing singleton axis is accepted
    write(inp / "c_t1" / "c_t1_t1.nii.gz", volume()[..., None])
    out.mkdir()
    # an output an earlier run listed in its report, older than the inputs: ours, recomputed
    (out / "c_flair.nii.gz").write_bytes(b"stale")
    os.utime(out / "c_flair.nii.gz", (0, 0))
    earlier = {c: "" for c in REPORT_COLUMNS} | {"case_id": "c_flair", "status": "ok", "output": "c_flair.nii.gz"}
    pd.DataFrame([earlier], columns=list(REPORT_COLUMNS)).to_csv(out / REPORT_NAME, index=False)

    df = run(ckpt, inp, out)

    assert list(df.columns) == list(REPORT_COLUMNS)
    assert df["case_id"].tolist() == sorted(subsets)
    assert (df["status"] == "ok").all(), df["message"].tolist()
    assert df.set_index("case_id")["modalities"].to_dict() == {
        "c_full": "flair+t1+t1ce+t2",
        "c_t1ce_t2": "t1ce+t2",
        "c_flair": "flair",
        "c_t1": "t1",
    }
    reference = {"c_full": "t1ce", "c_t1ce_t2": "t1ce", "c_flair": "flair", "c_t1": "t1"}
    for case_id, ref_mod in reference.items():
        assert_matches_input(out / f"{case_id}.nii.gz", refs[case_id][ref_mod])
    assert nib.load(refs["c_t1"]["t1"]).shape == (*SHAPE, 1)

    report = pd.read_csv(out / REPORT_NAME, keep_default_na=False)
    assert report["case_id"].tolist() == df["case_id"].tolist()
    row = df.set_index("case_id").loc["c_t1ce_t2"]
    assert (row["expected_dice_ET"], row["expected_dice_TC"], row["expected_dice_WT"]) == (0.7, 0.8, 0.9)
    assert df.set_index("case_id").loc["c_flair", "expected_dice_WT"] == 0.3
    assert report.set_index("case_id").loc["c_full", "expected_dice_ET"] == ""  # subset absent from subset_dice
    assert (df["seconds"] > 0).all()
    assert df.set_index("case_id").loc["c_full", "output"] == str(out / "c_full.nii.gz")
    assert leftovers(out, subsets) == []
    assert exit_on_failure(df) is df


def test_reference_postprocess_and_the_checkpoints_intensity(tmp_path):
    """The tiny network predicts ET in the whole brain box; on this 16-slice grid the box's highest slice is 11, so
    the LCKD reference post-processing removes the component (top slice <= 25). The intensity normalisation is the
    one the checkpoint's train_config records."""
    from lckd_med.data.intensity import CornerZScored

    inp = tmp_path / "in"
    write_case(inp, "c1", ("flair", "t1ce"))
    ckpt = make_checkpoint(tmp_path / "m.pt")
    raw = run(ckpt, inp, tmp_path / "raw", average="probabilities")
    assert (raw["status"] == "ok").all()
    assert np.count_nonzero(np.asarray(nib.load(tmp_path / "raw" / "c1.nii.gz").dataobj)) > 0
    df = run(ckpt, inp, tmp_path / "pp", postprocess="reference")
    assert (df["status"] == "ok").all()
    assert np.count_nonzero(np.asarray(nib.load(tmp_path / "pp" / "c1.nii.gz").dataobj)) == 0
    assert not any(
        isinstance(t, CornerZScored) for t in BatchInference(ckpt, inp, tmp_path / "a").transforms.transforms
    )
    ref = make_checkpoint(tmp_path / "ref.pt")
    payload = torch.load(ref, weights_only=True)
    payload["train_config"]["intensity"] = "reference"
    save_checkpoint(ref, payload)
    assert any(isinstance(t, CornerZScored) for t in BatchInference(ref, inp, tmp_path / "b").transforms.transforms)


def test_batch_inference_2023_naming_and_convention(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pt", convention="brats2023")
    inp, out = tmp_path / "in", tmp_path / "out"
    case = "BraTS-GLI-00001-000"
    refs = write_case(inp, case, ("flair", "t1ce"), scheme="2023", sep="-")
    df = run(ckpt, inp, out)
    assert df["status"].tolist() == ["ok"] and df["modalities"].tolist() == ["flair+t1ce"]
    assert df["expected_dice_ET"].isna().all()  # this checkpoint has no subset_dice
    assert_matches_input(out / f"{case}.nii.gz", refs["t1ce"], et_label=3)
    # the argument overrides the checkpoint's convention
    df = run(ckpt, inp, out, label_convention="brats2018")
    assert_matches_input(out / f"{case}.nii.gz", refs["t1ce"], et_label=4)


def test_batch_inference_manifest(ckpt, tmp_path):
    data = tmp_path / "scans"
    write(data / "p1_a.nii.gz", volume(seed=1))
    write(data / "p1_b.nii.gz", volume(seed=2))
    manifest = tmp_path / "list.csv"
    manifest.write_text(
        f"case_id,flair,t1,t1ce,t2\np1,scans/p1_a.nii.gz,,{data / 'p1_b.nii.gz'},\np2,,,,\np3,scans/absent.nii.gz,,,\n"
    )
    out = tmp_path / "out"
    df = run(ckpt, None, out, manifest=manifest).set_index("case_id")
    assert df["status"].to_dict() == {"p1": "ok", "p2": "error", "p3": "error"}
    assert df.loc["p1", "modalities"] == "flair+t1ce"
    assert_matches_input(out / "p1.nii.gz", data / "p1_b.nii.gz")
    assert "no sequences" in df.loc["p2", "message"]
    assert str(tmp_path / "scans" / "absent.nii.gz") in df.loc["p3", "message"]
    assert leftovers(out, ["p1"]) == []


def _corrupt_gzip(p: Path) -> None:
    write(p, np.random.default_rng(1).uniform(1, 2, (40, 40, 30)).astype(np.float32))
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])


def _not_nifti(p: Path) -> None:
    p.write_bytes(gzip.compress(b"this is a text file, not an image\n" * 20))


def _four_d(p: Path) -> None:
    write(p, np.stack([volume(), volume()], axis=-1))


def _far(p: Path) -> None:
    write(p, volume(), lps_affine(offset=(0.0, 40.0, 0.0)))


def _nan(p: Path) -> None:
    d = volume()
    d[BOX][0, 0, 0] = np.nan
    write(p, d)


def _inf(p: Path) -> None:
    d = volume()
    d[5, 6, 7] = -np.inf
    write(p, d)


@pytest.mark.parametrize(
    "maker, expected",
    [
        (_corrupt_gzip, "corrupt|cannot be read"),
        (_not_nifti, "cannot read as NIfTI"),
        (_four_d, "not a single 3D volume"),
        (_far, "too far apart"),
        (_nan, "1 NaN"),
        (_inf, "1 Inf"),
    ],
)
def test_batch_inference_bad_file(ckpt, tmp_path, maker, expected):
    inp, out = tmp_path / "in", tmp_path / "out"
    good = write_case(inp, "good", ("t1", "t2"))
    write_case(inp, "bad", ("flair", "t1ce"))
    bad_file = inp / "bad" / "bad_t2.nii.gz"
    maker(bad_file)
    out.mkdir()
    (out / "bad.nii.gz").write_bytes(b"from an earlier run")  # listed in the earlier run's report: ours
    earlier = {c: "" for c in REPORT_COLUMNS} | {"case_id": "bad", "status": "ok", "output": str(out / "bad.nii.gz")}
    pd.DataFrame([earlier], columns=list(REPORT_COLUMNS)).to_csv(out / REPORT_NAME, index=False)

    df = run(ckpt, inp, out).set_index("case_id")

    assert df.loc["good", "status"] == "ok"
    assert_matches_input(out / "good.nii.gz", good["t2"])
    assert df.loc["bad", "status"] == "error"
    assert df.loc["bad", "modalities"] == "flair+t1ce+t2"
    msg = df.loc["bad", "message"]
    assert str(bad_file) in msg
    assert pd.Series([msg]).str.contains(expected).all(), msg
    # a case failing now never deletes the earlier run's output; the row says it is not this run's result
    assert "kept bad.nii.gz from an earlier run" in msg and df.loc["bad", "output"] == str(out / "bad.nii.gz")
    assert (out / "bad.nii.gz").read_bytes() == b"from an earlier run"
    assert leftovers(out, ["good", "bad"]) == []
    report = pd.read_csv(out / REPORT_NAME, keep_default_na=False).set_index("case_id")
    assert report.loc["bad", "status"] == "error" and report.loc["good", "status"] == "ok"
    with pytest.raises(SystemExit) as e:
        exit_on_failure(df.reset_index())
    assert "bad" in str(e.value.code) and "1 of 2" in str(e.value.code)


def test_batch_inference_no_sequences(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "good", ("t1ce",))
    (inp / "empty").mkdir()
    (inp / "empty" / "notes.txt").write_text("nothing here")
    df = run(ckpt, inp, out).set_index("case_id")
    assert df.loc["good", "status"] == "ok" and df.loc["empty", "status"] == "error"
    assert "no sequences" in df.loc["empty", "message"] and str(inp / "empty") in df.loc["empty", "message"]
    assert df.loc["empty", "modalities"] == ""
    assert leftovers(out, ["good"]) == []
    with pytest.raises(SystemExit):
        exit_on_failure(df.reset_index())


def test_batch_inference_close_geometry_is_resampled(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    refs = write_case(inp, "shifted", ("t1ce", "t2"))
    # flair (the first channel, whose header the loader keeps): the same anatomy on a grid one voxel larger
    # along x whose origin is 1 mm higher -- close, so it is resampled onto the t1ce grid
    flair = np.zeros((SHAPE[0] + 1, *SHAPE[1:]), np.float32)
    flair[: SHAPE[0], :, :-1] = volume(seed=5)[:, :, 1:]
    write(inp / "shifted" / "shifted_flair.nii.gz", flair, lps_affine(offset=(0.0, 0.0, 1.0)))
    df = run(ckpt, inp, out)
    assert df["status"].tolist() == ["ok"]
    assert df["modalities"].tolist() == ["flair+t1ce+t2"]
    assert "resampled flair onto t1ce grid" in df["message"][0]
    assert_matches_input(out / "shifted.nii.gz", refs["t1ce"])
    assert leftovers(out, ["shifted"]) == []


def test_output_dir_inside_input_dir_is_skipped(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_case(inp, "a", ("flair",))
    df = run(ckpt, inp, inp / "predictions")
    assert df["case_id"].tolist() == ["a"]
    df = run(ckpt, inp, inp / "predictions")  # second run: the output folder is not a case
    assert df["case_id"].tolist() == ["a"] and (df["status"] == "ok").all()


def test_run_and_exit(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_case(inp, "a", ("t2",))
    engine = BatchInference(ckpt, inp, tmp_path / "out", device="cpu", progress=False)
    assert engine.run_and_exit()["status"].tolist() == ["ok"]
    (inp / "b").mkdir()
    with pytest.raises(SystemExit):
        engine.run_and_exit()


# ---------------------------------------------------------------------------------------------- reliability


def test_user_file_in_output_dir_is_never_overwritten(ckpt, tmp_path):
    """input_dir == output_dir: the user's own <case>.nii.gz there is refused, not replaced."""
    both = tmp_path / "cases"
    write_case(both, "a", ("t1",))
    write_case(both, "b", ("t2",))
    (both / "a.nii.gz").write_bytes(b"the user's scan")
    df = run(ckpt, both, both).set_index("case_id")
    assert df.loc["a", "status"] == "error" and "refusing to overwrite" in df.loc["a", "message"]
    assert (both / "a.nii.gz").read_bytes() == b"the user's scan"
    assert df.loc["b", "status"] == "ok"
    # the same holds with overwrite=True: overwrite only redoes our own outputs
    df = run(ckpt, both, both, overwrite=True).set_index("case_id")
    assert (both / "a.nii.gz").read_bytes() == b"the user's scan" and df.loc["a", "status"] == "error"


def test_rerun_skips_up_to_date_outputs_and_redoes_changed_or_forced(ckpt, tmp_path, caplog):
    inp, out = tmp_path / "in", tmp_path / "out"
    refs = write_case(inp, "a", ("t1",))
    write_case(inp, "b", ("t2",))
    run(ckpt, inp, out)
    first = {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in ("a", "b")}
    with caplog.at_level(logging.INFO, logger="lckd_med"):
        df = run(ckpt, inp, out).set_index("case_id")
    assert df["message"].str.contains("up to date").all() and (df["status"] == "ok").all()
    assert df["seconds"].map(type).eq(float).all() and "a: ok (t1)" in caplog.text
    assert {c: (out / f"{c}.nii.gz").stat().st_mtime_ns for c in ("a", "b")} == first
    os.utime(refs["t1"], ns=(first["a"] + 10**9, first["a"] + 10**9))  # touched, same content: still up to date
    df = run(ckpt, inp, out).set_index("case_id")
    assert "up to date" in df.loc["a", "message"]
    # new content with an older timestamp (a copy that kept its date): recomputed, whatever the dates say
    data = nib.load(refs["t1"])
    write_nifti(refs["t1"], np.asarray(data.dataobj)[::-1].copy(), data.affine)
    os.utime(refs["t1"], ns=(first["a"] - 10**10, first["a"] - 10**10))
    df = run(ckpt, inp, out).set_index("case_id")
    assert "up to date" not in df.loc["a", "message"] and "up to date" in df.loc["b", "message"]
    df = run(ckpt, inp, out, overwrite=True)
    assert not df["message"].str.contains("up to date").any()
    df = run(ckpt, inp, out, threshold=0.4)  # other settings: recomputed
    assert not df["message"].str.contains("up to date").any()


class _KilledAfterFirstCase(BatchInference):
    """Stops the batch like Ctrl-C would, after one finished case (KeyboardInterrupt is not caught per case)."""

    def predict_case(self, case):
        if case.case_id == "b":
            raise KeyboardInterrupt
        return super().predict_case(case)


def test_report_is_written_after_every_case_and_stale_temporaries_are_removed(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    write_case(inp, "b", ("t2",))
    out.mkdir()
    stale = [out / ".a.k3j4h5g6.tmp.nii.gz", out / ".inference_report.abcd_123.tmp.csv"]
    for p in stale:
        p.write_bytes(b"half written")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()  # a process id that no longer runs: the owner of a folder left by a killed run
    (out / ".lckd_align_x1y2").mkdir()
    (out / ".lckd_align_x1y2" / OWNER_MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid}))
    (out / ".lckd_align_theirs").mkdir()  # no owner marker: not provably ours, kept
    (out / ".my_notes").write_text("mine")
    with pytest.raises(SystemExit) as stopped:  # Ctrl-C: one line, status 130
        _KilledAfterFirstCase(ckpt, inp, out, device="cpu", progress=False).run()
    assert stopped.value.code == 130
    report = pd.read_csv(out / REPORT_NAME, keep_default_na=False)
    assert report["case_id"].tolist() == ["a"] and report["status"].tolist() == ["ok"]
    assert not any(p.exists() for p in stale) and not (out / ".lckd_align_x1y2").exists()
    assert (out / ".my_notes").read_text() == "mine" and (out / ".lckd_align_theirs").is_dir()
    df = run(ckpt, inp, out).set_index("case_id")  # the re-run finishes the batch
    assert "up to date" in df.loc["a", "message"] and df.loc["b", "status"] == "ok"


def test_report_of_an_earlier_run_never_contradicts_the_outputs(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    write_case(inp, "gone", ("t1",))
    run(ckpt, inp, out)
    (out / "gone.nii.gz").unlink()  # the user removed an output and its case
    shutil.rmtree(inp / "gone")
    run(ckpt, inp, out)
    report = pd.read_csv(out / REPORT_NAME, keep_default_na=False)
    assert report["case_id"].tolist() == ["a"]


def test_foreign_report_in_output_dir_is_refused(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    out.mkdir()
    (out / REPORT_NAME).write_text("name,score\nx,1\n")
    with pytest.raises(ValueError, match="not written by lckd_med"):
        run(ckpt, inp, out)
    assert (out / REPORT_NAME).read_text() == "name,score\nx,1\n"


def test_output_dir_not_writable_or_a_file_fails_before_any_case(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_case(inp, "a", ("t1",))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file is a file, not a folder"):
        run(ckpt, inp, tmp_path / "file" / "out")
    with pytest.raises(NotADirectoryError, match="is a file"):
        run(ckpt, inp, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_read_only_output_dir_fails_before_any_case(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    out.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="not writable"):
        run(ckpt, inp, out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unreadable_case_folder_fails_alone(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    write_case(inp, "locked", ("t1",))
    (inp / "locked").chmod(0)
    try:
        df = run(ckpt, inp, out).set_index("case_id")
    finally:
        (inp / "locked").chmod(0o755)
    assert df.loc["a", "status"] == "ok" and "cannot read case folder" in df.loc["locked", "message"]


def test_non_utf8_case_folder_name_gets_an_output_and_a_report_row(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    folder = os.fsencode(inp) + b"/caf\xe9"
    os.mkdir(folder)
    write(Path(os.fsdecode(folder + b"/caf\xe9_t1.nii.gz")), volume())
    df = run(ckpt, inp, out).set_index("case_id")
    assert (df["status"] == "ok").all(), df["message"].tolist()
    assert "caf\\xe9" in df.index
    assert os.path.exists(os.fsencode(out) + b"/caf\xe9.nii.gz")
    report = pd.read_csv(out / REPORT_NAME, keep_default_na=False)  # valid UTF-8
    assert "caf\\xe9" in report["case_id"].tolist()


def test_dangling_symlink_sequence_is_an_error_not_a_dropped_sequence(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    (inp / "a" / "a_t2.nii.gz").symlink_to(tmp_path / "nowhere" / "t2.nii.gz")
    df = run(ckpt, inp, out).set_index("case_id")
    assert df.loc["a", "status"] == "error"
    assert "broken symbolic link" in df.loc["a", "message"] and "a_t2.nii.gz" in df.loc["a", "message"]


def test_huge_finite_intensities_are_an_error_not_an_empty_segmentation(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write(inp / "a" / "a_t1.nii.gz", volume() * np.float32(1e37))
    write_case(inp, "b", ("t1",))
    df = run(ckpt, inp, out).set_index("case_id")
    assert df.loc["a", "status"] == "error" and "overflow the float32 z-score" in df.loc["a", "message"]
    assert not (out / "a.nii.gz").exists() and df.loc["b", "status"] == "ok"


def test_ignored_non_nifti_files_are_noted(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    (inp / "a" / "notes.txt").write_text("x")
    df = run(ckpt, inp, out)
    assert df["status"].tolist() == ["ok"] and "ignored 1 non-NIfTI file(s): notes.txt" in df["message"][0]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"case_id,flair,t1,t1ce,t2\nx,a.nii.gz,,,\nx,b.nii.gz,,,\n", "appears twice; give each row"),
        (b"case_id,flair\nx,a.nii.gz\n", "lacks column"),
        ("case_id,flair,t1,t1ce,t2\ncaf\u00e9,a.nii.gz,,,\n".encode("latin-1"), "not UTF-8 text.*iconv"),
    ],
    ids=["duplicate_id", "missing_column", "latin1"],
)
def test_bad_manifest_is_one_clear_error(tmp_path, content, match):
    (tmp_path / "m.csv").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        read_manifest(tmp_path / "m.csv")


def test_expected_dice_read_from_the_json_beside_the_checkpoint(tmp_path):
    ckpt = make_checkpoint(tmp_path / "model.pt")  # no subset_dice inside: evaluation writes the JSON instead
    (tmp_path / "in").mkdir()
    source = {"iteration": 0, "split": "validation", "n_cases": 3, "datalist": "/d/datalist.json"}
    source["weights_sha256"] = load_checkpoint(ckpt)["weights_sha256"]
    payload = {"subset_dice": {"t1ce+t2": {"ET": 0.7, "TC": 0.8, "WT": 0.9}}, "source": source}
    (tmp_path / SUBSET_DICE_NAME).write_text(json.dumps(payload))
    runner = BatchInference(ckpt, tmp_path / "in", tmp_path / "out", device="cpu", progress=False)
    assert runner._expected_dice("t1ce+t2") == {
        "expected_dice_ET": 0.7,
        "expected_dice_TC": 0.8,
        "expected_dice_WT": 0.9,
    }
    assert runner._expected_dice("flair")["expected_dice_ET"] is None
    assert describe_source(runner.subset_dice_source) == "the validation split of datalist.json (3 cases)"


def test_expected_dice_of_other_weights_is_not_shown(tmp_path):
    """A model retrained to the same iteration: the scores measured with the old weights do not apply."""
    old = load_checkpoint(make_checkpoint(tmp_path / "model.pt"))
    (tmp_path / "in").mkdir()
    source = {"iteration": old.get("iteration", 0), "split": "testing", "weights_sha256": old["weights_sha256"]}
    payload = {"subset_dice": {"t1ce+t2": {"ET": 0.7, "TC": 0.8, "WT": 0.9}}, "source": source}
    (tmp_path / SUBSET_DICE_NAME).write_text(json.dumps(payload))
    retrained = save_checkpoint(
        tmp_path / "model.pt",
        checkpoint_payload(tiny_lckd_net(seed=5), **{k: old[k] for k in ("train_config",) if k in old}),
    )
    runner = BatchInference(retrained, tmp_path / "in", tmp_path / "out", device="cpu", progress=False)
    assert runner.subset_dice == {} and runner._expected_dice("t1ce+t2")["expected_dice_ET"] is None


def test_an_output_dir_that_is_a_case_folder_is_refused_not_dropped(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_case(inp, "a", ("flair",))
    write_case(inp, "b", ("t1",))
    with pytest.raises(ValueError, match="output_dir .* is the case folder of case b in input_dir"):
        run(ckpt, inp, inp / "b")
    assert sorted(p.name for p in (inp / "b").iterdir()) == ["b_t1.nii.gz"]


def test_a_second_run_into_the_same_output_dir_is_refused_while_the_first_runs(ckpt, tmp_path):
    inp, out = tmp_path / "in", tmp_path / "out"
    write_case(inp, "a", ("t1",))
    with folder_lock(out, "inference"):  # another run holds the folder
        with pytest.raises(OutputLockedError, match="another lckd_med inference is writing to"):
            run(ckpt, inp, out)
    assert not (out / REPORT_NAME).exists()
    assert run(ckpt, inp, out)["status"].tolist() == ["ok"]


def test_one_scan_as_two_sequences_or_two_patients_in_a_case_is_an_error_row(ckpt, tmp_path):
    inp = tmp_path / "in"
    paths = write_case(inp, "copy", ("t1",))
    shutil.copy(paths["t1"], inp / "copy" / "copy_t2.nii.gz")
    paths = write_case(inp, "link", ("t1",))
    (inp / "link" / "link_flair.nii.gz").symlink_to(paths["t1"])
    write_case(inp, "mixed", ("t1",))
    shutil.copy(write_case(tmp_path / "other", "P2", ("t2",))["t2"], inp / "mixed" / "P2_t2.nii.gz")
    write_case(inp, "good", ("t1", "t2"))
    df = run(ckpt, inp, tmp_path / "out").set_index("case_id")
    assert df.loc["good", "status"] == "ok"
    assert df.loc["copy", "status"] == "error" and "same content as the t1 file" in df.loc["copy", "message"]
    assert df.loc["link", "status"] == "error" and "the t1 file is the flair file" in df.loc["link", "message"]
    assert df.loc["mixed", "status"] == "error" and "name different cases" in df.loc["mixed", "message"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.nii.gz")) == ["good.nii.gz"]


def test_garbage_sequences_are_error_rows_never_ok(ckpt, tmp_path):
    inp = tmp_path / "in"
    write_case(inp, "good", ("t1",))
    for name, data in {
        "mask": (volume(seed=0) > 2).astype(np.float32),
        "noise": np.random.default_rng(0).random(volume(seed=0).shape, dtype=np.float32) + 1,
        "constant": np.full(volume(seed=0).shape, 3.0, np.float32),
    }.items():
        write(inp / name / f"{name}_t1.nii.gz", data)
    df = run(ckpt, inp, tmp_path / "out").set_index("case_id")
    assert df.loc["good", "status"] == "ok"
    for name in ("mask", "noise", "constant"):
        assert df.loc[name, "status"] == "error" and "does not look like an MRI of a head" in df.loc[name, "message"]
