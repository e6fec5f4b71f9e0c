"""Tests of lckd_med.inference.segmenter: the one prediction path, on in-memory arrays, nibabel images and files alike;
the grid choice, region probabilities, input warnings, checkpoints of every kind, and bad arguments."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lckd_med.constants import REGIONS
from lckd_med.engines.checkpoint import load_checkpoint, save_checkpoint
from lckd_med.engines.safetensors_io import export_safetensors, read_safetensors
from lckd_med.inference import BatchInference
from lckd_med.inference.geometry import GeometryError
from lckd_med.inference.segmenter import (
    MAX_SPACING_RATIO,
    SPACING_KEY,
    Segmenter,
    input_warnings,
    open_checkpoint,
    region_probabilities,
)
from tests.testkit import mri_like, save_tiny_checkpoint, tiny_rfnet, write_nifti

SHAPE = (24, 22, 16)
BOX = (slice(3, 21), slice(3, 19), slice(2, 14))


def lps(spacing: float = 1.0) -> np.ndarray:
    aff = np.diag([-spacing, -spacing, spacing, 1.0])
    aff[:3, 3] = [30.0, 12.0, -8.0]
    return aff


def volume(seed: int, shape=SHAPE, box=BOX) -> np.ndarray:
    data = np.zeros(shape, np.float32)
    data[box] = mri_like(tuple(s.stop - s.start for s in box), seed, 1.0, 3.0)
    return data


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("seg") / "model.pt", seed=3)


@pytest.fixture(scope="module")
def segmenter(ckpt) -> Segmenter:
    return Segmenter.from_checkpoint(ckpt, device="cpu")


def test_arrays_images_and_files_give_the_same_segmentation(segmenter, ckpt, tmp_path):
    """The README example: arrays with their affine, in memory; nibabel images; files; and batch inference's file
    all agree voxel for voxel (one prediction path)."""
    arrays = {"flair": volume(1), "t1ce": volume(2)}
    from_arrays = segmenter(arrays, affine=lps(), probabilities=True)
    files = {m: write_nifti(tmp_path / "in" / "x" / f"x_{m}.nii.gz", a, lps()) for m, a in arrays.items()}
    from_files = segmenter(files, probabilities=True)
    from_images = segmenter({m: nib.load(p) for m, p in files.items()})
    assert from_arrays.labels.shape == SHAPE and from_arrays.labels.dtype == np.uint8
    assert from_arrays.reference == "t1ce" and from_arrays.subset == "flair+t1ce"
    assert 0 < np.count_nonzero(from_arrays.labels) < from_arrays.labels.size  # a random net: something, not all
    np.testing.assert_array_equal(from_arrays.labels, from_files.labels)
    np.testing.assert_array_equal(from_arrays.labels, from_images.labels)
    np.testing.assert_array_equal(from_arrays.probabilities, from_files.probabilities)
    np.testing.assert_array_equal(from_arrays.affine, lps())
    BatchInference(ckpt, tmp_path / "in", tmp_path / "out", device="cpu", progress=False).run()
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "out" / "x.nii.gz").dataobj), from_arrays.labels)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_window_progress_is_drawn_on_a_terminal_and_never_in_ci(segmenter, monkeypatch):
    monkeypatch.delenv("LCKD_MED_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    for ci, expected in ((None, True), ("true", False)):
        if ci:
            monkeypatch.setenv("CI", ci)
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        segmenter({"t1": volume(1)}, affine=lps(), name="case7", progress=True)
        assert ("case7: " in terminal.getvalue() and "window" in terminal.getvalue()) is expected, ci
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    segmenter({"t1": volume(1)}, affine=lps(), name="case7")  # progress=False: nothing, terminal or not
    assert terminal.getvalue() == ""


def test_probabilities_are_the_regions_the_labels_come_from(segmenter, tmp_path):
    out = segmenter({"t2": volume(4)}, affine=lps(), probabilities=True)
    probs = out.probabilities
    assert probs.shape == (len(REGIONS), *SHAPE) and probs.dtype == np.float32
    assert probs.min() >= 0.0 and probs.max() <= 1.0
    above = probs > segmenter.threshold
    et, tc, wt = (above[REGIONS.index(r)] for r in ("ET", "TC", "WT"))
    np.testing.assert_array_equal(out.labels, segmenter.convention.regions_to_labels(et, tc, wt))
    nib.save(out.probability_image(), tmp_path / "p.nii.gz")  # stored as uint8 with a 1/255 scale
    image = nib.load(tmp_path / "p.nii.gz")  # readers get 0..1
    assert image.shape == (*SHAPE, 3) and image.get_data_dtype() == np.uint8
    np.testing.assert_allclose(image.get_fdata()[..., 0], probs[0], atol=0.5 / 255 + 1e-6)
    assert segmenter({"t2": volume(4)}, affine=lps()).probabilities is None


def test_the_grid_is_the_users_choice(segmenter):
    fine = volume(1, shape=(32, 32, 24), box=(slice(2, 30), slice(2, 30), slice(2, 22)))
    coarse = volume(2, shape=(16, 16, 12), box=(slice(1, 15), slice(1, 15), slice(1, 11)))
    coarse_affine = lps(2.0)
    coarse_affine[:3, 3] += [0.5, 0.5, 0.5]  # the same field of view in world space
    affines = {"t1ce": lps(), "t2": coarse_affine}
    case = {"t1ce": fine, "t2": coarse}
    assert segmenter(case, affine=affines).labels.shape == fine.shape  # today's rule: t1ce
    for grid, shape, ref in (
        ("coarsest", coarse.shape, "t2"),
        ("t2", coarse.shape, "t2"),
        ("finest", fine.shape, "t1ce"),
    ):
        out = segmenter(case, affine=affines, grid=grid)
        assert (out.labels.shape, out.reference) == (shape, ref), grid
        assert out.spacing == ((2.0, 2.0, 2.0) if ref == "t2" else (1.0, 1.0, 1.0))
        assert all(" mm" in n for n in out.notes) and not any("/tmp" in n for n in out.notes)
    with pytest.raises(GeometryError, match="no t1 sequence was given"):
        segmenter(case, affine=affines, grid="t1")
    with pytest.raises(GeometryError, match="grid must be"):
        segmenter(case, affine=affines, grid="smallest")


@pytest.mark.parametrize(
    "sequences, affine, match",
    [
        ({"flair": volume(1)}, None, "give affine="),
        ({"flair": volume(1)}, np.eye(3), "affine must be a 4x4"),
        ({"dwi": volume(1)}, lps(), "unknown sequence keys"),
        ({"flair": None}, lps(), "no sequences"),
        ({"flair": np.full(SHAPE, 3.0, np.float32)}, lps(), "does not look like an MRI of a head"),
        ({"flair": volume(1), "t2": volume(1)}, lps(), "same voxels as the flair"),
        ({"flair": volume(1)[..., None, None].repeat(2, -1)}, lps(), "not a single 3D volume"),
        ({"flair": "not_a_file.nii.gz"}, None, "does not exist"),
        ({"flair": [1, 2, 3]}, lps(), "expected a numpy array"),
    ],
    ids=["no_affine", "bad_affine", "unknown_key", "none", "constant", "twice", "5d", "missing_file", "list"],
)
def test_bad_inputs_are_refused_naming_the_sequence(segmenter, sequences, affine, match):
    with pytest.raises(GeometryError, match=match):
        segmenter(sequences, affine=affine)


def test_inputs_far_from_the_training_data_are_warned_about(ckpt, tmp_path):
    head = volume(1)
    assert input_warnings({"t1": head}, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)) == []
    unstripped = head + 0.5  # a non-zero background everywhere: not skull-stripped
    (warning,) = input_warnings({"t1": unstripped}, (1.0, 1.0, 1.0), None)
    assert "t1 image has a non-zero background" in warning and "skull-stripped" in warning
    big = 1.0 * MAX_SPACING_RATIO + 0.1
    (warning,) = input_warnings({"t1": head}, (big, 1.0, 1.0), (1.0, 1.0, 1.0))
    assert f"voxel size {big:.3g} x 1 x 1 mm is far from the training data's (1 x 1 x 1 mm)" in warning
    # the checkpoint records its training voxel size; the warning reaches the segmentation
    payload = torch.load(ckpt, weights_only=True)
    payload["train_config"][SPACING_KEY] = [2.0, 2.0, 2.0]
    spaced = Segmenter(payload, device="cpu")
    out = spaced({"t1": head}, affine=lps())
    assert spaced.train_spacing == (2.0, 2.0, 2.0) and any("far from the training data" in w for w in out.warnings)


def test_safetensors_export_segments_as_the_checkpoint(segmenter, ckpt, tmp_path):
    st = export_safetensors(ckpt, tmp_path / "model.safetensors")
    other = Segmenter.from_checkpoint(st, device="cpu")
    case = {"t1": volume(5), "t2": volume(6)}
    np.testing.assert_array_equal(other(case, affine=lps()).labels, segmenter(case, affine=lps()).labels)
    assert other.weights_sha256 == segmenter.weights_sha256 == load_checkpoint(ckpt)["weights_sha256"]


def test_a_checkpoint_of_the_wrong_kind_names_the_command_that_converts_it(ckpt, tmp_path):
    from lckd_med.engines.export import ExportableSegmenter

    st = export_safetensors(ckpt, tmp_path / "models" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"only .*model.safetensors: make a checkpoint from it with "):
        load_checkpoint(tmp_path / "models" / "model.pt")  # a bundle's ckpt_dir holding only the export
    with pytest.raises(FileNotFoundError, match="is a .safetensors export: make a checkpoint from it with `lckd-med "):
        load_checkpoint(st)
    with pytest.raises(ValueError, match="is an lckd_med checkpoint .* `lckd-med export-safetensors --ckpt"):
        read_safetensors(ckpt)
    ts = tmp_path / "model.ts"
    wrapper = ExportableSegmenter.from_checkpoint(ckpt)
    torch.jit.save(torch.jit.trace(wrapper, torch.rand(1, 4, 16, 16, 16)), str(ts))
    with pytest.raises(ValueError, match="is a TorchScript export .* give --ckpt the model.pt it was exported from"):
        open_checkpoint(ts)
    with pytest.raises(FileNotFoundError, match="point --ckpt at a model.pt"):
        open_checkpoint(tmp_path / "absent.pt")


def test_region_probabilities_of_an_unknown_output_kind():
    with pytest.raises(ValueError, match="unknown network output kind 'softmax4'"):
        region_probabilities(torch.zeros(1, 3, 2, 2, 2), "softmax4")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"overlap": 1.0}, ValueError, "overlap"),
        ({"threshold": 0.0}, ValueError, "threshold"),
        ({"amp": "yes"}, TypeError, "amp"),
        ({"sw_batch_size": 0}, ValueError, "sw_batch_size"),
        ({"postprocess": "et_rule"}, ValueError, "postprocess"),
        ({"mode": "median"}, ValueError, "mode"),
        ({"average": "median"}, ValueError, "average"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"roi_size": (18, 16, 16)}, ValueError, "divisible"),
        ({"label_convention": "brats1999"}, ValueError, "release"),
        ({"decision": "vote"}, ValueError, "decision must be one of"),
    ],
)
def test_constructor_bad_arguments(ckpt, kwargs, error, match):
    with pytest.raises(error, match=match):
        Segmenter.from_checkpoint(ckpt, **{"device": "cpu", **kwargs})


def test_a_retrained_checkpoint_is_a_new_segmenter(ckpt, tmp_path):
    """The weights hash follows the content: the same file name with other weights is another model."""
    payload = torch.load(ckpt, weights_only=True)
    payload["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["model"].items()}
    other = save_checkpoint(tmp_path / "model.pt", payload)
    assert Segmenter.from_checkpoint(other, device="cpu").weights_sha256 != load_checkpoint(ckpt)["weights_sha256"]


def test_the_readme_example_runs(ckpt, tmp_path, monkeypatch, capsys):
    """The README's "Segment from Python" block, run as written with its checkpoint and case pointing at this test's
    (a tiny network, a synthetic 4 mm case)."""
    import re

    from lckd_med.data.synthetic import write_dataset

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    code = re.search(r"### Segment from Python.*?```python\n(.*?)```", readme, re.DOTALL).group(1)
    (written,) = write_dataset(tmp_path / "data", 1, seed=4, spacing=4.0, release=2018, lgg_fraction=0.0)
    code = code.replace('"bundles/lckd/runs/demo_models/model.pt"', repr(str(ckpt)))
    code = re.sub(r'case = "[^"]+"', f"case = {str(Path(written['case_dir']) / written['case_id'])!r}", code)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("flair+t1ce (60, 60, 39) (4.0, 4.0, 4.0) (3, 60, 60, 39)")
    assert nib.load(tmp_path / "seg.nii.gz").get_data_dtype() == np.uint8 and (tmp_path / "seg.png").is_file()


@pytest.fixture(scope="module")
def rfnet_ckpt(tmp_path_factory) -> Path:
    """A tiny RFNet (softmax over the four classes) recording published-style inference defaults."""
    return save_tiny_checkpoint(
        tmp_path_factory.mktemp("rf") / "model.pt",
        net=tiny_rfnet(seed=2),
        inference={"roi_size": [16, 16, 16], "overlap": 0.5, "average": "probabilities", "decision": "argmax"},
    )


def test_a_softmax_network_segments_with_its_recorded_inference_defaults(rfnet_ckpt):
    """An RFNet checkpoint: the recorded window, overlap, averaging and argmax decision are applied; labels are BraTS
    labels; the argmax labels are the argmax over the class probabilities recovered from the region probabilities."""
    from lckd_med.networks.outputs import CLASS_LABELS, class_probabilities

    seg = Segmenter.from_checkpoint(rfnet_ckpt, device="cpu")
    assert (seg.output_kind, seg.decision, seg.roi_size, seg.overlap, seg.average) == (
        "classes",
        "argmax",
        (16, 16, 16),
        0.5,
        "probabilities",
    )
    out = seg({"flair": volume(1), "t2": volume(4)}, affine=lps(), probabilities=True)
    assert set(np.unique(out.labels)) <= {0, 1, 2, 4}
    classes = torch.argmax(class_probabilities(torch.from_numpy(out.probabilities), dim=0), dim=0).numpy()
    np.testing.assert_array_equal(out.labels, np.asarray(CLASS_LABELS)[classes])
    assert len(np.unique(out.labels)) > 1  # a random net still separates something
    # a .safetensors export carries the recorded defaults (and the network's kind) along
    export = export_safetensors(rfnet_ckpt, rfnet_ckpt.with_name("x.safetensors"))
    again = Segmenter.from_checkpoint(export, device="cpu")
    assert (again.decision, again.roi_size, again.overlap, again.average) == (
        "argmax",
        (16, 16, 16),
        0.5,
        "probabilities",
    )
    # arguments given explicitly win over the recorded defaults
    other = Segmenter.from_checkpoint(rfnet_ckpt, device="cpu", overlap=0.25, decision="threshold", roi_size=24)
    assert (other.decision, other.overlap, other.roi_size) == ("threshold", 0.25, (24, 24, 24))


@pytest.mark.parametrize(
    "inference, match",
    [
        ([0.5], "'inference' must be a mapping"),
        ({"window": 8}, "unknown 'inference' keys"),
        ({"overlap": 1.5}, "overlap must be a number"),
        ({"decision": "vote"}, "decision must be one of"),
        ({"average": "median"}, "average must be one of"),
        ({"roi_size": 8}, "roi_size"),
    ],
)
def test_bad_recorded_inference_defaults_are_one_line_errors(tmp_path, inference, match):
    path = save_tiny_checkpoint(tmp_path / "model.pt", net=tiny_rfnet(), inference=inference)
    with pytest.raises(ValueError, match=match):
        Segmenter.from_checkpoint(path, device="cpu")
