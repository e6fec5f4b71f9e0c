"""SubsetEvaluator: reports, saved predictions on the input grid, Dice reproducible from the saved files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from lckd_med.constants import MODALITIES, NUM_REGIONS, REGIONS, SUBSET_NAMES, label_convention, parse_subset
from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint, save_checkpoint
from lckd_med.engines.workflow import prepare_datalist
from lckd_med.inference.evaluation import (
    SUBSET_DICE_NAME,
    SubsetEvaluator,
    read_subset_dice,
    summary_table,
    voxel_spacing,
)
from lckd_med.metrics import legacy_dice, region_masks_from_labels
from lckd_med.reports import REPORT_FILES
from lckd_med.reports.folder_scores import score_folder
from tests.testkit import checkpoint_payload, tiny_lckd_net

CONV = label_convention("brats2018")
ROI = [16, 16, 16]
MISSING = "t1"  # dropped from the second testing case


pytestmark = pytest.mark.usefixtures("one_thread")


def _checkpoint(ckpt_dir: Path, roi: list[int] | None = ROI) -> Path:
    net = tiny_lckd_net()
    with torch.no_grad():  # bias the logits towards ~50 % foreground so every region gets predictions
        net.decoder.head.conv.conv.bias.fill_(0.0)
    train_config = {} if roi is None else {"roi_size": roi}
    return save_checkpoint(ckpt_dir / "model.pt", checkpoint_payload(net, iteration=8, train_config=train_config))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluation")
    write_dataset(root / "data", 6, seed=11, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    datalist = Path(prepare_datalist(root / "data", root / "datalist.json"))
    data = json.loads(datalist.read_text())
    assert len(data["testing"]) == 2
    data["testing"][1][MISSING] = None  # a held-out case without T1: only the 7 subsets without it
    datalist.write_text(json.dumps(data))
    _checkpoint(root / "models")
    evaluator = SubsetEvaluator(
        root / "models",
        datalist,
        root / "out",
        split="testing",
        save_predictions=True,
        device="cpu",
        amp=False,
        progress=False,
    )
    df = evaluator.run()
    return {"root": root, "datalist": datalist, "entries": data["testing"], "df": df, "out": root / "out"}


def _expected_subsets(entry: dict) -> list[str]:
    return [s for s in SUBSET_NAMES if all(entry.get(m) for m in parse_subset(s))]


def test_report_files_exist(setup):
    for name in REPORT_FILES.values():
        assert (setup["out"] / name).is_file(), name
    rows = [line for line in summary_table(setup["out"]).splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 15 + 1 and rows[-1].startswith("| Mean |")  # header, subsets, mean


def test_metrics_rows_per_case_subset_region(setup):
    metrics = pd.read_csv(setup["out"] / REPORT_FILES["metrics_csv"])
    assert list(metrics.columns[:5]) == ["case_id", "subset", "region", "dice", "hd95"]
    expected = {(e["case_id"], s, r) for e in setup["entries"] for s in _expected_subsets(e) for r in REGIONS}
    got = set(zip(metrics["case_id"], metrics["subset"], metrics["region"], strict=True))
    assert got == expected and len(metrics) == len(expected) == (15 + 7) * NUM_REGIONS
    assert metrics["dice"].between(0, 1).all() and (metrics["hd95"] >= 0).all()


def test_summary_has_15_subsets_and_mean(setup):
    summary = pd.read_csv(setup["out"] / REPORT_FILES["summary_csv"])
    assert list(summary["subset"]) == [*SUBSET_NAMES, "mean"]
    n_cases = dict(zip(summary["subset"], summary["n_cases"], strict=True))
    for s in SUBSET_NAMES:
        assert n_cases[s] == (1 if MISSING in parse_subset(s) else 2), s
    metrics = pd.read_csv(setup["out"] / REPORT_FILES["metrics_csv"])
    for s in ("t1ce", "flair+t1+t1ce+t2"):
        for r in REGIONS:
            mean = metrics[(metrics["subset"] == s) & (metrics["region"] == r)]["dice"].mean()
            row = summary[summary["subset"] == s].iloc[0]
            assert row[f"{r}_dice_mean"] == pytest.approx(mean, abs=1e-9)


def test_predictions_on_the_input_grid(setup):
    n_files = 0
    for entry in setup["entries"]:
        ref = nib.load(next(entry[m] for m in MODALITIES if entry.get(m)))
        for s in SUBSET_NAMES:
            path = setup["out"] / "predictions" / s / f"{entry['case_id']}.nii.gz"
            if s not in _expected_subsets(entry):
                assert not path.exists(), path
                continue
            img = nib.load(path)
            assert img.shape == ref.shape
            np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
            assert img.get_data_dtype() == np.uint8
            assert set(np.unique(np.asarray(img.dataobj)).tolist()) <= set(CONV.labels)
            n_files += 1
    assert n_files == 15 + 7
    leftovers = [p for p in (setup["out"] / "predictions").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_dice_equals_legacy_dice_of_the_saved_files(setup):
    metrics = pd.read_csv(setup["out"] / REPORT_FILES["metrics_csv"])
    labels = {e["case_id"]: e["label"] for e in setup["entries"]}
    non_trivial = 0
    for (case_id, subset), rows in metrics.groupby(["case_id", "subset"]):
        pred = nib.load(setup["out"] / "predictions" / subset / f"{case_id}.nii.gz")
        pred_regions = region_masks_from_labels(np.asarray(pred.dataobj), CONV)
        gt_regions = region_masks_from_labels(np.asarray(nib.load(labels[case_id]).dataobj), CONV)
        for _, row in rows.iterrows():
            r = REGIONS.index(row["region"])
            assert row["dice"] == pytest.approx(legacy_dice(pred_regions[r], gt_regions[r]), abs=1e-6)
            non_trivial += 0 < row["dice"] < 1
    assert non_trivial > 0  # the random network predicts partial overlaps, not only empty masks


def test_subset_dice_written_beside_the_checkpoint(setup):
    ckpt_path = setup["root"] / "models" / "model.pt"
    data = json.loads((ckpt_path.with_name(SUBSET_DICE_NAME)).read_text())
    summary = pd.read_csv(setup["out"] / REPORT_FILES["summary_csv"]).set_index("subset")
    assert list(data["subset_dice"]) == list(SUBSET_NAMES)
    for s, scores in data["subset_dice"].items():
        for r in REGIONS:
            assert scores[r] == pytest.approx(summary.loc[s, f"{r}_dice_mean"], abs=1e-9)
    assert data["source"]["split"] == "testing" and data["source"]["n_cases"] == 2
    assert data["source"]["iteration"] == 8
    ckpt = load_checkpoint(ckpt_path)
    assert "subset_dice" not in ckpt  # evaluation never rewrites model.pt
    assert read_subset_dice(ckpt_path, ckpt) == data["subset_dice"]


def test_subset_dice_of_other_weights_is_not_used(setup, tmp_path):
    """The scores belong to the weights they were measured with (their content hash), not to an iteration."""
    src = setup["root"] / "models" / SUBSET_DICE_NAME
    (tmp_path / SUBSET_DICE_NAME).write_text(src.read_text())
    source = json.loads(src.read_text())["source"]
    assert (
        source["split"] == "testing"
        and source["weights_sha256"] == load_checkpoint(setup["root"] / "models" / "model.pt")["weights_sha256"]
    )
    old = {"flair": {"ET": 0.1, "TC": 0.2, "WT": 0.3}}
    other = {"iteration": source["iteration"], "weights_sha256": "0" * 64}  # retrained to the same iteration
    assert read_subset_dice(tmp_path / "model.pt", {**other, "subset_dice": old}) == old  # older model.pt
    assert read_subset_dice(tmp_path / "model.pt", other) == {}
    same = {"iteration": 9, "weights_sha256": source["weights_sha256"]}
    assert read_subset_dice(tmp_path / "model.pt", same)["flair"] == json.loads(src.read_text())["subset_dice"]["flair"]


def test_scratch_predictions_are_removed(setup):
    assert not [p for p in setup["out"].iterdir() if p.name.startswith(".lckd_eval_")]


def test_evaluate_folder_scores_the_saved_predictions_the_same(setup, tmp_path):
    labels = {e["case_id"]: e["label"] for e in setup["entries"]}
    again = score_folder(setup["out"] / "predictions", labels, tmp_path, release="brats2018", progress=False)
    cols = ["case_id", "subset", "region", "dice", "hd95", "dice_pp", "hd95_pp"]
    key = ["case_id", "subset", "region"]
    a = setup["df"][cols].sort_values(key).reset_index(drop=True)
    b = again.metrics[cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_roi_size_must_come_from_somewhere(setup, tmp_path):
    _checkpoint(tmp_path / "models", roi=None)
    evaluator = SubsetEvaluator(
        tmp_path / "models",
        setup["datalist"],
        tmp_path / "out",
        max_cases=1,
        subsets=["t2"],
        device="cpu",
        progress=False,
        write_subset_dice=False,
    )
    with pytest.raises(ValueError, match="roi_size"):
        evaluator.run()
    evaluator.roi_size = ROI
    df = evaluator.run()
    assert set(df["subset"]) == {"t2"} and df["case_id"].nunique() == 1
    assert not (tmp_path / "models" / SUBSET_DICE_NAME).exists()


def test_missing_checkpoint_says_how_to_make_one(setup, tmp_path):
    evaluator = SubsetEvaluator(tmp_path, setup["datalist"], tmp_path / "out", device="cpu")
    with pytest.raises(FileNotFoundError, match="train first"):
        evaluator.run()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "test"}, "split"),
        ({"subsets": []}, "at least one subset"),
        ({"subsets": ["t2+flair"]}, "canonical"),
        ({"overlap": 1.0}, "overlap"),
        ({"threshold": 0.0}, "threshold"),
        ({"postprocess_min_et": -1}, "postprocess_min_et"),
        ({"postprocess": "et_rule"}, "postprocess must be"),
        ({"sw_average": "median"}, "sw_average"),
    ],
    ids=["split", "no_subsets", "non_canonical", "overlap", "threshold", "postprocess", "pp_name", "sw_average"],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubsetEvaluator(tmp_path, tmp_path / "dl.json", tmp_path / "out", **kwargs)


def test_reference_postprocess_is_scored_beside_the_raw_predictions(setup, tmp_path, monkeypatch):
    """postprocess="reference": post-processed predictions scored into postprocessed/; T1ce read only for subsets
    that hold it; the intensity normalisation is the checkpoint's (train_config)."""
    import lckd_med.inference.segmenter as segmenter  # evaluation predicts through the Segmenter
    from lckd_med.metrics.postprocess import reference_postprocess

    seen = []
    original = segmenter.eval_transforms
    monkeypatch.setattr(
        segmenter, "eval_transforms", lambda *a, **kw: seen.append(kw["intensity"]) or original(*a, **kw)
    )
    models = tmp_path / "models"
    payload = torch.load(_checkpoint(models), weights_only=True)
    payload["train_config"]["intensity"] = "reference"
    save_checkpoint(models / "model.pt", payload)
    out = tmp_path / "out"
    SubsetEvaluator(
        models,
        setup["datalist"],
        out,
        subsets=["flair", "t1ce"],
        save_predictions=True,
        postprocess="reference",
        sw_average="probabilities",
        write_subset_dice=False,
        device="cpu",
        amp=False,
        progress=False,
        num_workers=0,
    ).run()
    assert seen == ["reference"]
    for name in REPORT_FILES.values():
        assert (out / "postprocessed" / name).is_file(), name
    entry = setup["entries"][0]
    for subset in ("flair", "t1ce"):
        raw = nib.load(out / "predictions" / subset / f"{entry['case_id']}.nii.gz")
        t1ce = np.asarray(nib.load(entry["t1ce"]).dataobj) if subset == "t1ce" else None
        want = reference_postprocess(np.asarray(raw.dataobj), t1ce, CONV, voxel_spacing(raw.affine))
        got = nib.load(out / "predictions_postprocessed" / subset / f"{entry['case_id']}.nii.gz")
        np.testing.assert_array_equal(np.asarray(got.dataobj), want)


def test_voxel_spacing_of_flipped_affine():
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    affine[:3, 3] = [10, 20, -5]
    assert voxel_spacing(affine) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize("bad_id", ["../../escape", "a/b", ".."], ids=["traversal", "slash", "dotdot"])
def test_case_id_that_is_not_a_file_name_is_refused_before_writing(setup, tmp_path, bad_id):
    data = json.loads(setup["datalist"].read_text())
    data["testing"][0]["case_id"] = bad_id
    datalist = tmp_path / "dl.json"
    datalist.write_text(json.dumps(data))
    evaluator = SubsetEvaluator(
        setup["root"] / "models", datalist, tmp_path / "a" / "b" / "out", split="testing", save_predictions=True,
        device="cpu", amp=False, progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match="must be a plain file name"):
        evaluator.run()
    assert not (tmp_path / "a").exists()


def test_output_dir_that_is_a_file_is_refused(setup, tmp_path):
    (tmp_path / "out").write_text("mine")
    evaluator = SubsetEvaluator(setup["root"] / "models", setup["datalist"], tmp_path / "out", device="cpu")
    with pytest.raises(NotADirectoryError, match="is a file"):
        evaluator.run()
    assert (tmp_path / "out").read_text() == "mine"


def _evaluator(setup, out: Path, datalist: Path | None = None, ckpt_dir: Path | None = None, **kw) -> SubsetEvaluator:
    return SubsetEvaluator(
        ckpt_dir or setup["root"] / "models",
        datalist or setup["datalist"],
        out,
        subsets=["t1ce"],
        device="cpu",
        amp=False,
        progress=False,
        num_workers=0,
        **kw,
    )


def _user_files(setup, tmp_path: Path) -> tuple[Path, Path, dict[str, Path]]:
    """An output folder and a copy of the models folder holding the user's own files where evaluation writes."""
    out, models = tmp_path / "out", tmp_path / "models"
    shutil.copytree(setup["root"] / "models", models)
    (models / SUBSET_DICE_NAME).unlink()
    targets = {
        "report": out / REPORT_FILES["summary_md"],
        "predictions": out / "predictions" / "t1ce" / "notes.txt",
        "subset_dice": models / SUBSET_DICE_NAME,
    }
    return out, models, targets


@pytest.mark.parametrize("where", ["report", "predictions", "subset_dice"])
def test_files_evaluation_did_not_write_are_refused_before_predicting(setup, tmp_path, where):
    out, models, targets = _user_files(setup, tmp_path)
    targets[where].parent.mkdir(parents=True, exist_ok=True)
    targets[where].write_text("the user's")
    with pytest.raises(FileExistsError, match="not written by lckd_med|lckd_med did not write"):
        _evaluator(setup, out, ckpt_dir=models, save_predictions=True).run()
    assert targets[where].read_text() == "the user's"
    assert not (out / REPORT_FILES["metrics_csv"]).exists()  # refused before any work


def test_overwrite_replaces_them_and_evaluation_replaces_its_own_files_freely(setup, tmp_path):
    out, models, targets = _user_files(setup, tmp_path)
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("the user's")
    _evaluator(setup, out, ckpt_dir=models, save_predictions=True, overwrite=True).run()
    assert not targets["predictions"].exists() and targets["report"].read_text() != "the user's"
    assert json.loads(targets["subset_dice"].read_text())["source"]["split"] == "testing"
    _evaluator(setup, out, ckpt_dir=models, save_predictions=True).run()  # its own files now


def test_bad_labels_and_garbage_sequences_are_reported_once_before_predicting(setup, tmp_path, caplog):
    data = json.loads(setup["datalist"].read_text())
    first, second = data["testing"]
    bad_label = tmp_path / "bad_seg.nii.gz"
    label = nib.load(first["label"])
    nib.save(nib.Nifti1Image(np.full(label.shape, 7, np.uint8), label.affine), str(bad_label))
    first["label"] = str(bad_label)
    flat = tmp_path / f"{Path(second['t1ce']).name}"  # same case prefix: only the content is wrong
    image = nib.load(second["t1ce"])
    nib.save(nib.Nifti1Image(np.full(image.shape, 5.0, np.float32), image.affine), str(flat))
    second["t1ce"] = str(flat)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps(data))
    with caplog.at_level("WARNING", logger="lckd_med"), pytest.raises(ValueError, match="can be evaluated"):
        _evaluator(setup, tmp_path / "out", datalist=datalist).run()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2
    assert "segmentation values [7]" in warnings[0] and str(bad_label) in warnings[0]
    assert "does not look like an MRI of a head" in warnings[1] and str(flat) in warnings[1]
    assert not (tmp_path / "out" / "predictions").exists()


def test_one_picture_per_case_and_a_users_picture_is_never_replaced(setup, tmp_path):
    """png=True: png/<case_id>.png per case (the largest evaluated subset over the case's T1ce), recorded as
    lckd_med's; a file of the user's in png/ is refused before anything is predicted."""
    out = tmp_path / "out"
    kwargs = {"subsets": ["flair", "flair+t1ce"], "write_subset_dice": False, "device": "cpu", "amp": False}
    kwargs |= {"progress": False, "num_workers": 0, "png": True, "max_cases": 2}
    SubsetEvaluator(setup["root"] / "models", setup["datalist"], out, **kwargs).run()
    pictures = sorted(p.name for p in (out / "png").iterdir())
    assert len(pictures) == 2 and all(p.endswith(".png") for p in pictures)
    assert all(0 < (out / "png" / p).stat().st_size < 200_000 for p in pictures)
    SubsetEvaluator(setup["root"] / "models", setup["datalist"], out, **kwargs).run()  # its own: replaced freely
    (out / "png" / pictures[0]).write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="png holds 1 file"):
        SubsetEvaluator(setup["root"] / "models", setup["datalist"], out, **kwargs).run()
    assert (out / "png" / pictures[0]).read_bytes() == b"mine"
    with pytest.raises(TypeError, match="png must be a bool"):
        SubsetEvaluator(setup["root"] / "models", setup["datalist"], out, png="yes")
