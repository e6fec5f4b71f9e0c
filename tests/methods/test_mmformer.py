"""mmFormer as a method: its registry line, its published loss arithmetic (fused + auxiliary + deep supervision,
all from the first iteration) and its bundle: a tiny training run (the window follows ``roi_size``) then the
15-subset evaluation of the checkpoint.

Training on the one trainer, the encode-once sweep and checkpoints are covered for every registered method in
``test_registry.py``; the network itself in ``tests/networks/test_mmformer.py``; the published mask sampling of
both bundles in ``test_rfnet.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from lckd_med.constants import SUBSET_NAMES
from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME
from lckd_med.losses import segmentation_loss
from lckd_med.methods import METHODS, TrainBatch, build_method
from lckd_med.methods.mmformer import MMFormerMethod
from lckd_med.networks.mmformer import MMFormerNet
from lckd_med.reports import REPORT_FILES
from tests.testkit import (
    PUBLISHED_WINDOW,
    brats_label_batch,
    published_softmax_losses,
    run_bundle,
    tiny_method_network,
    tiny_size,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_with_the_published_network():
    assert METHODS["mmformer"] is MMFormerMethod and MMFormerMethod.label == "mmFormer"
    assert MMFormerMethod.network_class is MMFormerNet
    assert MMFormerMethod().fusion_start_iteration == 0  # region_fusion_start_epoch = 0 (train.py:38)
    assert MMFormerMethod.presets == ("published",)
    with pytest.raises(ValueError, match=r"mmFormer builds network preset \['published'\] only"):
        MMFormerMethod.build_network("lean")


@pytest.mark.parametrize("iteration, fused_weight", [(0, 1.0), (1, 1.0), (1000, 1.0)])
def test_loss_is_the_published_arithmetic(iteration, fused_weight):
    """fused + sum of the 4 auxiliary per-modality outputs + sum of the 4 deep-supervision outputs, each softmax
    weighted CE + Dice, all weights 1 (train.py:164-188), recomputed from the network's outputs."""
    size = tiny_size("mmformer")
    net = tiny_method_network("mmformer")  # dropout 0: the two forwards below are the same
    method = build_method("mmformer")
    method.bind(net, segmentation_loss())
    torch.manual_seed(3)
    image = torch.randn(2, 4, size, size, size)
    labels, regions = brats_label_batch(2, size, seed=1)
    mask = torch.tensor([[True, True, False, False], [False, False, True, False]])
    batch = TrainBatch(image, torch.full_like(image, float("nan")), regions, torch.ones_like(mask), mask, iteration)
    loss, pred, terms = method.compute_loss(batch, phase=2)
    out = net(image, mask, return_aux=True)
    assert out.aux_logits.shape[1] == 4 and len(out.deep_probs) == 4
    fuse, aux, deep = published_softmax_losses(out.logits, out.aux_logits.unbind(1), out.deep_probs, labels)
    assert [terms[k].item() for k in ("fuse_loss", "sep_loss", "aux_loss")] == pytest.approx(
        [fuse, aux, deep], rel=1e-5
    )
    assert loss.item() == pytest.approx(fused_weight * fuse + aux + deep, rel=1e-5)
    torch.testing.assert_close(pred, out.logits)


@pytest.mark.slow
def test_tiny_training_then_the_15_subset_evaluation(tmp_path: Path):
    """The real bundle at tiny size (window 32^3 = roi_size), 2 iterations, then evaluate all 15 subsets."""
    write_dataset(tmp_path / "data", 5, seed=3, spacing=4.0, release=2018, lgg_fraction=0.2)
    common = ["--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    common += ["--ckpt_dir", str(tmp_path / "models")]
    log = run_bundle(
        "training", "mmformer", *common,
        "--base_filters", "2", "--embed_dim", "8", "--mlp_dim", "16", "--num_heads", "2", "--roi_size", "[32,32,32]",
        "--num_iterations", "2", "--epoch_length", "1", "--num_workers", "0", "--log_every", "1", "--intensity", "brainbox",
        cwd=tmp_path,
    )  # fmt: skip
    assert "iter 2/2" in log and "fuse_loss=" in log and "aux_loss=" in log
    ckpt = load_checkpoint(tmp_path / "models" / "model.pt")
    assert (ckpt["method"], ckpt["network"]["name"], ckpt["iteration"]) == ("mmformer", "MMFormerNet", 2)
    assert ckpt["inference"] == PUBLISHED_WINDOW | {"roi_size": [32, 32, 32]}  # the published predict.py's
    hparams = ckpt["network"]["hparams"]
    assert hparams["img_size"] == [32, 32, 32] and hparams["embed_dim"] == 8 and hparams["dropout"] == 0.1
    assert (ckpt["train_config"]["lr_schedule"], ckpt["train_config"]["batch_size"]) == ("epoch_poly", 8)

    run_bundle("evaluate", "mmformer", *common, "--max_cases", "1", cwd=tmp_path)
    summary = pd.read_csv(tmp_path / "out" / REPORT_FILES["summary_csv"])
    assert summary["subset"].tolist() == [*SUBSET_NAMES, "mean"]
    assert set(json.loads((tmp_path / "models" / SUBSET_DICE_NAME).read_text())["subset_dice"]) == set(SUBSET_NAMES)
