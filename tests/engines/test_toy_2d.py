"""Another modality set through the same engines: a 2-D RGB + depth + infrared toy problem (3 + 1 + 1 channels).

Synthetic 32x32 images made here: nested regions (WT disc > TC disc > ET disc) that each modality shows
differently. The real :class:`~lckd_med.engines.MethodTrainer` (ignite) trains LCKD (with teacher election and the
checkpoint handler) and OMD for a few iterations; the encode-once sweep over the 7 subsets equals 7 separate
sliding-window forward passes; the predictions are written as 2-D NIfTI label maps and the folder is scored with
``score_folder`` (the predict-then-score evaluation; the predicting side runs here in the test because the bundle's
NIfTI loader reads BraTS volumes). The checkpoint and a datalist record the spec, and a checkpoint refuses data of
another spec, saying what differs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference

from lckd_med.constants import BRATS_LEGACY, NUM_REGIONS, REGIONS
from lckd_med.data.datalist import datalist_spec, validate_datalist, write_datalist
from lckd_med.data.pipelines import train_transforms
from lckd_med.data.transforms import ModalityDropout, drop_modalities_batch
from lckd_med.engines.checkpoint import CHECKPOINT_NAME, build_network, checkpoint_spec, load_checkpoint
from lckd_med.engines.checkpoint_handler import TrainingCheckpointHandler
from lckd_med.engines.election import TeacherElectionHandler
from lckd_med.engines.trainer import MethodTrainer, loss_terms
from lckd_med.inference.evaluation import SubsetEvaluator
from lckd_med.losses import CrossModalDistillationLoss, segmentation_loss
from lckd_med.methods import LCKDMethod, OMDMethod, TeacherState
from lckd_med.metrics.brats import case_region_metrics, region_masks_from_labels
from lckd_med.modalities import BRATS, ModalitySpec
from lckd_med.networks import LCKDNet, OMDNet
from lckd_med.prediction import SubsetPredictor
from lckd_med.reports.folder_scores import score_folder
from lckd_med.utils.io import save_label_map

TOY = ModalitySpec(["rgb", "depth", "ir"], [3, 1, 1], spatial_dims=2, name="rgbd-ir")
SIZE = 32
ROI = (16, 16)  # smaller than the image: the sweep runs a real sliding window


pytestmark = pytest.mark.usefixtures("one_thread")


def _case(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``image (5, 32, 32)`` (rgb, depth, ir) and region targets ``(3, 32, 32)`` (ET, TC, WT), nested discs."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cy, cx = (torch.randint(10, 22, (2,), generator=g)).tolist()
    r = ((yy - cy) ** 2 + (xx - cx) ** 2).float().sqrt()
    wt, tc, et = r <= 8, r <= 5, r <= 2.5
    noise = 0.3 * torch.randn(5, SIZE, SIZE, generator=g)
    image = torch.stack(
        [wt.float(), tc.float(), 0.5 * wt.float(), et.float() + tc.float(), wt.float() - 0.5 * et.float()]
    )
    return image + noise, torch.stack([et, tc, wt]).float()


def _data(n_batches: int, batch: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        cases = [_case(g) for _ in range(batch)]
        out.append(
            {
                "image": torch.stack([c[0] for c in cases]),
                "label": torch.stack([c[1] for c in cases]),
                "modality_mask": torch.ones(batch, TOY.num_modalities, dtype=torch.bool),
            }
        )
    return out


def _network(cls: type = LCKDNet) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(
        in_modalities=TOY.num_modalities,
        in_channels=TOY.channels,
        spatial_dims=TOY.spatial_dims,
        filters=(8, 16, 32),
    )


def _dropout() -> ModalityDropout:
    dropout = ModalityDropout(prob=1.0, distribution="uniform_size", max_kept=2, modalities=TOY)
    dropout.set_random_state(0)
    return dropout


def _train(
    net: torch.nn.Module, method: Any, batches: int, epochs: int, phase1: int, lr: float, handlers=(), loader=None
) -> list:
    """Train with the real :class:`MethodTrainer` (on ``loader``, else ``batches`` synthetic batches); the loss terms
    of every iteration."""
    trainer = MethodTrainer(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=_data(batches) if loader is None else loader,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), lr=lr),
        seg_loss=segmentation_loss(),
        dropout=_dropout(),
        phase1_iterations=phase1,
        method=method,
        amp=False,
    )
    for handler in handlers:
        handler.attach(trainer)
    terms: list[dict[str, float]] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: terms.append(loss_terms(e.state.output)))
    trainer.run()
    return terms


@pytest.fixture(scope="module")
def trained_lckd(tmp_path_factory):
    """LCKD trained 24 iterations (6 with all modalities, then dropout) with election and checkpoints."""
    out = tmp_path_factory.mktemp("toy_lckd")
    net = _network()
    state = TeacherState(modalities=TOY)
    val = [{k: v[:1] for k, v in b.items()} for b in _data(2, seed=1)]
    handlers = (
        TeacherElectionHandler(state, val, roi_size=ROI, interval=12, output_dir=out, amp=False),
        TrainingCheckpointHandler(out),  # the toy spec comes from the trainer's modality dropout
    )
    method = LCKDMethod(state, CrossModalDistillationLoss(), kd_weight=0.1)
    losses = _train(net, method, batches=8, epochs=3, phase1=6, lr=3e-3, handlers=handlers)
    return net.eval(), state, out, losses


def test_dropout_zeroes_every_channel_of_a_dropped_modality():
    batch = _data(1, batch=4)[0]
    dropped, mask = drop_modalities_batch(batch["image"], batch["modality_mask"], _dropout())
    assert mask.shape == (4, 3) and bool((mask.sum(1) >= 1).all()) and bool((mask.sum(1) <= 2).all())
    for b in range(4):
        for m, channels in enumerate(TOY.channel_slices):
            kept = torch.equal(dropped[b, channels], batch["image"][b, channels])
            assert kept == bool(mask[b, m]) and (kept or not dropped[b, channels].any())


def test_lckd_trains_elects_and_checkpoints_the_spec(trained_lckd):
    net, state, out, losses = trained_lckd
    assert len(losses) == 24 and all(math.isfinite(v["loss"]) for v in losses)
    first, last = np.mean([v["loss"] for v in losses[:4]]), np.mean([v["loss"] for v in losses[-4:]])
    assert last < first  # it learns (phase 2 inputs are harder, still the loss falls)
    assert any(v["kd_loss"] > 0 for v in losses[6:])  # distillation towards the elected teachers
    assert [r["iteration"] for r in state.history] == [1] * 9 + [13] * 9  # first, then every 12
    assert {r["modality"] for r in state.history} == set(TOY.names) and set(state.teachers) <= set(TOY.names)
    assert (out / "teacher_election.csv").is_file()

    ckpt = load_checkpoint(out / CHECKPOINT_NAME, modalities=TOY)
    assert checkpoint_spec(ckpt) == TOY and ckpt["modalities"] == list(TOY.names)
    assert ckpt["network"]["hparams"]["in_channels"] == [3, 1, 1] and ckpt["network"]["hparams"]["spatial_dims"] == 2
    rebuilt = build_network(ckpt).eval()
    x = _data(1, seed=5)[0]["image"]
    with torch.no_grad():
        assert torch.equal(rebuilt(x), net(x))
    with pytest.raises(ValueError, match=r"differs from the data \(brats\): names: .*channels: .*spatial_dims: 2 vs 3"):
        load_checkpoint(out / CHECKPOINT_NAME)  # BraTS data expected by default

    datalist = {
        "meta": {"modalities": list(TOY.names), "modality_spec": TOY.to_dict(), "regions": list(REGIONS)},
        "training": [{"case_id": "c0", "rgb": "c0_rgb.nii.gz", "depth": "c0_d.nii.gz", "ir": None, "label": "l.nii"}],
    }
    validate_datalist(datalist)
    assert datalist_spec(datalist) == TOY
    load_checkpoint(out / CHECKPOINT_NAME, modalities=datalist_spec(datalist))  # the datalist and checkpoint agree
    with pytest.raises(ValueError, match=r"missing keys \['depth'\]"):
        validate_datalist({**datalist, "training": [{"case_id": "c1", "rgb": "x", "ir": "y", "label": None}]})


def test_sweep_equals_one_forward_pass_per_subset(trained_lckd):
    net = trained_lckd[0]
    image = _data(1, batch=2, seed=7)[0]["image"]
    predictor = SubsetPredictor(net, ROI, overlap=0.5, amp=False, device="cpu", modalities=TOY)
    swept = predictor(image, TOY.subset_names)
    assert swept.shape == (2, 7, NUM_REGIONS, SIZE, SIZE)
    with torch.no_grad():
        for k, subset in enumerate(TOY.subset_names):
            mask = torch.from_numpy(TOY.subset_to_mask(subset))
            zeroed = image * mask[list(TOY.channel_index)].view(1, -1, 1, 1)  # what a case without the others holds
            alone = sliding_window_inference(zeroed, ROI, 1, lambda w, m=mask: net(w, m), overlap=0.5)
            torch.testing.assert_close(swept[:, k], alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"2-D inputs with channels \[3, 1, 1\].*brats"):
        SubsetPredictor(_network(), ROI, device="cpu")  # BraTS spec by default: refused


def test_evaluation_in_2d_predicts_to_a_folder_and_scores_it(trained_lckd, tmp_path):
    """Predict every subset to 2-D NIfTI label maps, score the folder with ``score_folder`` (what
    ``lckd-med evaluate-folder`` runs), and check it against the metric functions applied in memory."""
    net = trained_lckd[0]
    predictor = SubsetPredictor(net, ROI, amp=False, device="cpu", modalities=TOY)
    reference = nib.Nifti1Image(np.zeros((SIZE, SIZE), np.uint8), np.diag([0.5, 0.5, 1.0, 1.0]))
    labels, expected = {}, {}
    for i, batch in enumerate(_data(2, batch=2, seed=11)):
        pred = torch.sigmoid(predictor(batch["image"], TOY.subset_names, available=batch["modality_mask"])) > 0.5
        for b in range(pred.shape[0]):
            cid = f"toy{2 * i + b:02d}"
            gt = (batch["label"][b] > 0.5).numpy()
            labels[cid] = save_label_map(BRATS_LEGACY.regions_to_labels(*gt), reference, tmp_path / f"{cid}.nii.gz")
            for k, subset in enumerate(TOY.subset_names):
                label_map = BRATS_LEGACY.regions_to_labels(*pred[b, k].numpy())  # nested, as the evaluator writes
                save_label_map(label_map, reference, tmp_path / "pred" / subset / f"{cid}.nii.gz")
                regions = region_masks_from_labels(label_map, BRATS_LEGACY)
                expected[cid, subset] = case_region_metrics(regions, gt, spacing=(0.5, 0.5))
    scores = score_folder(
        tmp_path / "pred",
        labels,
        tmp_path / "reports",
        release=2018,
        postprocess_min_et=0,
        progress=False,
        modalities=TOY,
    )
    assert not scores.problems and len(scores.metrics) == 4 * 7 * NUM_REGIONS
    for row in scores.metrics.itertuples():
        want = expected[row.case_id, row.subset][row.region]
        assert row.dice == pytest.approx(want["dice"]) and row.hd95 == pytest.approx(want["hd95"])
        assert math.isfinite(row.hd95) and 0 <= row.dice <= 1
    summary = (tmp_path / "reports" / "subset_summary.md").read_text()
    assert "| rgb+depth+ir | 4 |" in summary
    wt_full = np.mean([expected[c, "rgb+depth+ir"]["WT"]["dice"] for c in labels])
    assert wt_full > 0.5  # synthetic, 24 CPU iterations: the whole tumour is found from all modalities


def test_omd_trains_on_the_toy_problem():
    net = _network(OMDNet)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    terms = _train(net, OMDMethod(), batches=3, epochs=1, phase1=1, lr=1e-3)
    assert len(terms) == 3 and all(math.isfinite(v) for t in terms for v in t.values())
    assert any(t.get("mmd_loss", 0) > 0 for t in terms[1:])  # phase 2: restorations of dropped modalities
    after = net.state_dict()
    assert any("fusions" in k and not torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        feats = net.eval().encode(_data(1)[0]["image"])
        masks = torch.stack([torch.from_numpy(TOY.subset_to_mask(s)) for s in TOY.subset_names])
        assert net.decode_subsets(feats, masks).shape == (2, 7, NUM_REGIONS, SIZE, SIZE)


def test_brats_is_still_the_default():
    assert TeacherState().spec is BRATS and ModalityDropout().spec is BRATS
    assert LCKDNet(filters=(2, 4)).hparams["in_channels"] == [1, 1, 1, 1]


def _write_case(root: Path, cid: str, image: torch.Tensor, regions: torch.Tensor, with_ir: bool = True) -> dict:
    """One case as NIfTI files: rgb as vector components ``(H, W, 1, 1, 3)``, depth and ir ``(H, W)``, label."""
    affine = np.diag([-0.5, 0.5, 1.0, 1.0])  # a flipped axis: the evaluator reorients and inverts
    img = image.numpy()
    files = {
        "rgb": (img[TOY.channel_slices[0]].transpose(1, 2, 0)[:, :, None, None, :], f"{cid}_rgb.nii.gz"),
        "depth": (img[3], f"{cid}_depth.nii.gz"),
        "ir": (img[4], f"{cid}_ir.nii.gz"),
        "label": (BRATS_LEGACY.regions_to_labels(*(regions.numpy() > 0.5)), f"{cid}_seg.nii.gz"),
    }
    entry = {"case_id": cid, "grade": None}
    for key, (array, name) in files.items():
        if key == "ir" and not with_ir:
            entry[key] = None
            continue
        nib.save(nib.Nifti1Image(array, affine), root / name)
        entry[key] = str(root / name)
    return entry


def test_subset_evaluator_reads_2d_multichannel_nifti(trained_lckd, tmp_path):
    """The bundle's evaluator (load -> reorient -> crop -> normalise, sweep, invert, write, score the folder) on
    2-D NIfTI files of the toy spec; a case without the infrared file is scored on the 3 subsets it allows."""
    ckpt_dir = trained_lckd[2]
    batch = _data(1, batch=3, seed=13)[0]
    entries = [_write_case(tmp_path, f"t{i}", batch["image"][i], batch["label"][i], with_ir=i != 2) for i in range(3)]
    datalist = {
        "meta": {"modalities": list(TOY.names), "modality_spec": TOY.to_dict(), "label_convention": "brats2018"},
        "training": [],
        "validation": [],
        "testing": entries,
    }
    path = write_datalist(datalist, tmp_path / "toy.json")
    common = {"split": "testing", "roi_size": ROI, "device": "cpu", "amp": False, "progress": False}
    common |= {"num_workers": 0, "postprocess_min_et": 0, "write_subset_dice": False}
    df = SubsetEvaluator(ckpt_dir, path, tmp_path / "eval", save_predictions=True, modalities=TOY, **common).run()
    assert len(df) == (7 + 7 + 3) * NUM_REGIONS
    assert set(df[df["case_id"] == "t2"]["subset"]) == {"rgb", "depth", "rgb+depth"}
    assert df["dice"].between(0, 1).all() and np.isfinite(df["hd95"]).all()
    pred = nib.load(tmp_path / "eval" / "predictions" / "rgb+ir" / "t0.nii.gz")
    assert pred.shape == (SIZE, SIZE) and np.allclose(pred.affine, np.diag([-0.5, 0.5, 1.0, 1.0]))
    assert "| rgb+depth+ir | 2 |" in (tmp_path / "eval" / "subset_summary.md").read_text()
    with pytest.raises(ValueError, match=r"modality spec of datalist .* differs from the evaluator \(brats\)"):
        SubsetEvaluator(ckpt_dir, path, tmp_path / "eval_brats", **common).run()


def test_training_pipeline_reads_the_toy_files(tmp_path):
    """The bundle's training chain (load, reorient, crop, normalise, pad, pos/neg crops, 2-D flips, masking) on the
    toy NIfTI files, feeding the real trainer (which drops modalities)."""
    batch = _data(1, batch=3, seed=17)[0]
    entries = [_write_case(tmp_path, f"c{i}", batch["image"][i], batch["label"][i], with_ir=i != 1) for i in range(3)]
    transform = train_transforms((16, 16), convention="brats2018", num_samples=2, modalities=TOY)
    transform.set_random_state(0)
    samples = [s for e in entries for s in transform(e)]
    assert {tuple(s["image"].shape) for s in samples} == {(TOY.total_channels, 16, 16)}
    assert {tuple(s["label"].shape) for s in samples} == {(NUM_REGIONS, 16, 16)}
    without_ir = samples[2:4]  # case c1 has no infrared file
    assert all(not s["modality_mask"][2] and not s["image"][4].any() for s in without_ir)
    loader = DataLoader(Dataset(entries, transform), batch_size=2, shuffle=False, num_workers=0)
    terms = _train(_network(), LCKDMethod(TeacherState(["rgb"], modalities=TOY)), 0, 1, 0, 1e-3, loader=loader)
    assert len(terms) == len(loader) and all(math.isfinite(t["loss"]) for t in terms)
    with pytest.raises(ValueError, match="roi_size must be 2 positive ints"):
        train_transforms((16, 16, 16), modalities=TOY)
