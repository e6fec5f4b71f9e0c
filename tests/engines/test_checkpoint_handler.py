"""TrainingCheckpointHandler: what model.pt holds, exact resume, finished runs, schedule changes; the bundle."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import LrScheduleHandler

from lckd_med.constants import NUM_MODALITIES, NUM_REGIONS
from lckd_med.data.synthetic import write_dataset
from lckd_med.data.transforms import ModalityDropout
from lckd_med.engines.checkpoint import build_network, load_checkpoint, save_checkpoint
from lckd_med.engines.checkpoint_handler import CHECKPOINT_NAME, TrainingCheckpointHandler
from lckd_med.engines.trainer import MethodTrainer
from lckd_med.engines.workflow import bundle_dir
from lckd_med.losses import segmentation_loss
from lckd_med.methods import LCKDMethod, NoDistillationMethod, TeacherState
from lckd_med.modalities import ModalitySpec
from lckd_med.networks import LCKDNet

SIZE = 8
EPOCH_LENGTH = 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _data() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(2, NUM_MODALITIES, SIZE, SIZE, SIZE, generator=g),
            "label": (torch.rand(2, NUM_REGIONS, SIZE, SIZE, SIZE, generator=g) > 0.6).float(),
            "modality_mask": torch.ones(2, NUM_MODALITIES, dtype=torch.bool),
        }
        for _ in range(EPOCH_LENGTH)
    ]


def _trainer(
    ckpt_dir: Path,
    max_epochs: int,
    total_iters: int | None = None,
    seed: int = 0,
    phase1_iterations: int = 10**6,
    method: object = None,
    **handler_kwargs,
):
    """Trainer + checkpoint handler + per-iteration polynomial LR; all modalities (phase 1) unless told."""
    torch.manual_seed(seed)
    net = LCKDNet(filters=(4, 8))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(
        optimizer, total_iters=total_iters or max_epochs * EPOCH_LENGTH, power=0.9
    )
    handler = TrainingCheckpointHandler(
        ckpt_dir,
        scheduler=scheduler,
        train_config={"roi_size": [SIZE] * 3},
        **handler_kwargs,
    )
    dropout = ModalityDropout(prob=1.0, max_kept=3)
    dropout.set_random_state(0)
    trainer = MethodTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=_data(),
        network=net,
        optimizer=optimizer,
        seg_loss=segmentation_loss(),
        method=method if method is not None else LCKDMethod(TeacherState(default=["t1ce"])),
        dropout=dropout,
        phase1_iterations=phase1_iterations,
        epoch_length=EPOCH_LENGTH,
        amp=False,
        train_handlers=[handler, LrScheduleHandler(scheduler, epoch_level=False, print_lr=False)],
    )
    trainer.scheduler, trainer.ckpt_handler = scheduler, handler
    return trainer


def _iterations_run(trainer) -> list[int]:
    its: list[int] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: its.append(e.state.iteration))
    return its


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_checkpoint_contents(tmp_path):
    trainer = _trainer(tmp_path, max_epochs=2, save_every=1, label_convention=2023)
    trainer.method.teacher_state.history.append(
        {"iteration": 2, "modality": "flair", "region": "ET", "dice": 0.5, "elected": "true"}
    )
    trainer.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    raw = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert raw.keys() == ckpt.keys()
    assert (ckpt["iteration"], ckpt["epoch"], ckpt["max_epochs"], ckpt["epoch_length"]) == (4, 2, 2, EPOCH_LENGTH)
    assert ckpt["phase"] == 1 and ckpt["method"] == "lckd" and ckpt["label_convention"] == "brats2023"
    assert ckpt["network"]["name"] == "LCKDNet"
    # the method's own state, whatever it holds (LCKD: teachers and the election record)
    assert ckpt["method_state"] == trainer.method.state_dict()
    assert ckpt["method_state"]["teachers"] == ["t1ce"] and ckpt["method_state"]["history"][0]["modality"] == "flair"
    assert ckpt["train_config"] == {"roi_size": [SIZE] * 3}
    assert ckpt["scheduler"]["last_epoch"] == 4 and ckpt["optimizer"]["state"]  # momentum buffers saved
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"}
    _assert_same_weights(build_network(ckpt).state_dict(), trainer.network.state_dict())


def test_resume_continues_exactly(tmp_path):
    """2 epochs then 2 more (resumed) == 4 epochs in one go: weights, optimizer and LR schedule restored."""
    straight = _trainer(tmp_path / "straight", max_epochs=4)
    straight.run()

    first = _trainer(tmp_path / "resumed", max_epochs=2, total_iters=4 * EPOCH_LENGTH)
    first.run()
    saved = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)
    second = _trainer(tmp_path / "resumed", max_epochs=4, seed=1)  # other init: the weights must come from disk
    at_start = {}

    @second.on(Events.ITERATION_STARTED)
    def _snapshot(engine):
        if at_start:
            return
        at_start["iteration"] = engine.state.iteration  # already incremented: the first iteration run
        at_start["model"] = {k: v.clone() for k, v in engine.network.state_dict().items()}
        at_start["momentum"] = [s["momentum_buffer"].clone() for s in engine.optimizer.state.values()]
        at_start["lr"] = engine.optimizer.param_groups[0]["lr"]

    its = _iterations_run(second)
    second.run()
    assert at_start["iteration"] == 2 * EPOCH_LENGTH + 1 and its == [5, 6, 7, 8]
    _assert_same_weights(at_start["model"], saved["model"])
    saved_momentum = [s["momentum_buffer"] for s in saved["optimizer"]["state"].values()]
    for a, b in zip(at_start["momentum"], saved_momentum, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert at_start["lr"] == pytest.approx(saved["optimizer"]["param_groups"][0]["lr"])
    _assert_same_weights(second.network.state_dict(), straight.network.state_dict())
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["iteration"] == 4 * EPOCH_LENGTH


def test_resume_in_phase_two_draws_the_same_subsets(tmp_path):
    """The modality dropout's generator is checkpointed: a run resumed in phase 2 ends where an uninterrupted
    one does (it would not if the dropout restarted from its seed)."""
    straight = _trainer(tmp_path / "straight", max_epochs=4, phase1_iterations=1)
    straight.run()
    first = _trainer(tmp_path / "resumed", max_epochs=2, total_iters=4 * EPOCH_LENGTH, phase1_iterations=1)
    first.run()
    assert "modality_dropout" in load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["rng"]["generators"]
    second = _trainer(tmp_path / "resumed", max_epochs=4, seed=1, phase1_iterations=1)
    second.run()
    _assert_same_weights(second.network.state_dict(), straight.network.state_dict())


def test_finished_run_is_not_retrained(tmp_path):
    _trainer(tmp_path, max_epochs=2).run()
    before = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    again = _trainer(tmp_path, max_epochs=2, seed=3)
    its = _iterations_run(again)
    again.run()
    assert its == []
    after = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert after["iteration"] == before["iteration"] == 4
    _assert_same_weights(after["model"], before["model"])


def test_shorter_rerun_keeps_the_recorded_progress(tmp_path):
    """Asking for fewer epochs than model.pt has must not re-save it as a less trained model."""
    _trainer(tmp_path, max_epochs=3).run()
    shorter = _trainer(tmp_path, max_epochs=1)
    its = _iterations_run(shorter)
    shorter.run()
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert its == [] and (ckpt["epoch"], ckpt["iteration"]) == (3, 3 * EPOCH_LENGTH)


def test_resume_with_more_iterations_stretches_the_lr_schedule(tmp_path):
    """A finished polynomial schedule ends at LR 0; resumed with twice the iterations it must go on learning."""
    _trainer(tmp_path, max_epochs=2).run()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["optimizer"]["param_groups"][0]["lr"] == 0.0
    longer = _trainer(tmp_path, max_epochs=4)
    lrs = []
    longer.add_event_handler(Events.ITERATION_STARTED, lambda e: lrs.append(e.optimizer.param_groups[0]["lr"]))
    longer.run()
    expected = [0.05 * (1 - it / 8) ** 0.9 for it in range(4, 8)]  # the configured 8-iteration schedule
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert longer.scheduler.total_iters == 8


def test_evaluation_results_survive_a_same_iteration_save(tmp_path):
    _trainer(tmp_path, max_epochs=1).run()
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    ckpt["subset_dice"] = {"flair": {"ET": 0.1, "TC": 0.2, "WT": 0.3}}
    save_checkpoint(tmp_path / CHECKPOINT_NAME, ckpt)
    _trainer(tmp_path, max_epochs=1).run()  # finished: saves again at COMPLETED with the same iteration
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["subset_dice"] == ckpt["subset_dice"]
    _trainer(tmp_path, max_epochs=2).run()  # trained further: the stored scores no longer apply
    assert "subset_dice" not in load_checkpoint(tmp_path / CHECKPOINT_NAME)


def test_resume_refuses_other_network_settings(tmp_path):
    _trainer(tmp_path, max_epochs=1).run()
    torch.manual_seed(0)
    other = _trainer(tmp_path, max_epochs=2)
    other.network = LCKDNet(filters=(4, 16))
    with pytest.raises(ValueError, match="same network settings"):
        other.run()


def test_resume_false_starts_over(tmp_path):
    _trainer(tmp_path, max_epochs=1).run()
    fresh = _trainer(tmp_path, max_epochs=1, resume=False)
    its = _iterations_run(fresh)
    fresh.run()
    assert its == [1, 2]


def test_save_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="save_every"):
        TrainingCheckpointHandler(tmp_path, save_every=0)


@pytest.mark.parametrize("inference", ["overlap=0.5", [0.5], 3])
def test_inference_defaults_must_be_a_mapping(tmp_path, inference):
    """What RFNet's and mmFormer's bundles record (their published window); checked when inference loads it."""
    with pytest.raises(TypeError, match="inference must be a mapping or None"):
        TrainingCheckpointHandler(tmp_path, inference=inference)


def test_resume_of_a_checkpoint_saved_before_modality_specs(tmp_path):
    """hparams without ``in_channels`` / ``spatial_dims`` and no ``modality_spec``: BraTS, resumable."""
    _trainer(tmp_path, max_epochs=1).run()
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["modality_spec"]["names"] == ["flair", "t1", "t1ce", "t2"]
    del ckpt["modality_spec"], ckpt["network"]["hparams"]["in_channels"], ckpt["network"]["hparams"]["spatial_dims"]
    save_checkpoint(tmp_path / CHECKPOINT_NAME, ckpt)
    torch.manual_seed(0)
    resumed = _trainer(tmp_path, max_epochs=2)
    its = _iterations_run(resumed)
    resumed.run()
    assert its == [3, 4]


def test_handler_spec_must_match_the_trainers_dropout(tmp_path):
    toy = ModalitySpec(["rgb", "depth"], [3, 1], spatial_dims=2)
    with pytest.raises(ValueError, match=r"checkpoint handler differs from the trainer's modality dropout: names"):
        _trainer(tmp_path, max_epochs=1, modalities=toy).run()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.run()
    assert trainer.ckpt_handler.spec.names == ("flair", "t1", "t1ce", "t2")


def test_resume_refuses_another_method_or_a_checkpoint_without_method_state(tmp_path):
    _trainer(tmp_path, max_epochs=1).run()
    with pytest.raises(ValueError, match="trained with method 'lckd', the config runs 'lckd_nokd'"):
        _trainer(tmp_path, max_epochs=2, method=NoDistillationMethod()).run()
    ckpt = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    ckpt["teachers"], ckpt["election_history"] = ckpt["method_state"]["teachers"], ckpt.pop("method_state")["history"]
    save_checkpoint(tmp_path / CHECKPOINT_NAME, ckpt)  # as release 0.3.0 wrote it
    with pytest.raises(ValueError, match="0.3.0 or earlier: it loads for evaluation and inference, not for resuming"):
        _trainer(tmp_path, max_epochs=2).run()
    assert type(build_network(load_checkpoint(tmp_path / CHECKPOINT_NAME))) is LCKDNet


# ------------------------------------------------------------------------------------------ the real bundle
TINY = {
    "filters": [4, 8, 16],
    "roi_size": [16, 16, 16],
    "epoch_length": 4,
    "phase1_iterations": 4,
    "election_interval": 4,
    "save_every_epochs": 1,
    "num_workers": 0,
    "cache_rate": 1.0,
    "amp": False,
    "log_every": 4,
}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ckpt_bundle_data")
    write_dataset(root, 6, seed=3, spacing=4.0, release=2018, lgg_fraction=1 / 3)
    return root


def _train_bundle(work: Path, dataset: Path, num_iterations: int) -> None:
    wf = ConfigWorkflow(
        config_file=str(Path(bundle_dir("lckd")) / "train.json"),
        logging_file=False,
        workflow_type=None,
        dataset_dir=str(dataset),
        output_dir=str(work / "out"),
        ckpt_dir=str(work / "models"),
        num_iterations=num_iterations,
        **TINY,
    )
    wf.initialize()
    wf.run()
    wf.finalize()


def _csv_iterations(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return sorted({int(r["iteration"]) for r in csv.DictReader(f)})


def test_bundle_resumes_with_more_iterations(tmp_path, small_dataset, caplog):
    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    _train_bundle(tmp_path, data, num_iterations=8)
    first = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    assert (first["iteration"], first["phase"]) == (8, 2)
    # elections after iteration 1, then every 4 (1 + 4n), and at the end
    assert _csv_iterations(tmp_path / "out" / "teacher_election.csv") == [1, 5, 8]

    caplog.set_level("INFO", logger="lckd_med")
    _train_bundle(tmp_path, data, num_iterations=16)
    assert "resumed from" in caplog.text and "at iteration 8" in caplog.text
    second = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    assert (second["iteration"], second["epoch"]) == (16, 4)
    assert second["train_config"]["num_iterations"] == 16
    assert second["scheduler"]["last_epoch"] == 16 and second["scheduler"]["total_iters"] == 16
    history = [c["method_state"]["history"] for c in (first, second)]
    assert history[1][: len(history[0])] == history[0]
    assert _csv_iterations(tmp_path / "out" / "teacher_election.csv") == [1, 5, 8, 9, 13, 16]
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])  # it learned

    caplog.clear()
    _train_bundle(tmp_path, data, num_iterations=16)  # finished: nothing retrained
    third = load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)
    assert "nothing to resume" in caplog.text
    assert third["iteration"] == 16 and third["method_state"] == second["method_state"]
    _assert_same_weights(third["model"], second["model"])


def test_an_imported_inference_checkpoint_is_not_resumed_from(tmp_path):
    """``import-safetensors -o <ckpt_dir>/model.pt --overwrite`` gives weights without optimiser or election state:
    training refuses to resume from it with one line instead of a KeyError deep in ignite."""
    from lckd_med.engines.safetensors_io import export_safetensors, import_safetensors

    _trainer(tmp_path / "trained", max_epochs=1).run()
    st = export_safetensors(tmp_path / "trained" / CHECKPOINT_NAME, tmp_path / "m.safetensors")
    import_safetensors(st, tmp_path / "models" / CHECKPOINT_NAME)
    with pytest.raises(ValueError, match="is an inference checkpoint \\(imported from .*m.safetensors; it lacks "):
        _trainer(tmp_path / "models", max_epochs=2).run()
    fresh = _trainer(tmp_path / "models", max_epochs=1, resume=False)  # the documented way to train over it
    fresh.run()
    assert "optimizer" in load_checkpoint(tmp_path / "models" / CHECKPOINT_NAME)


def test_a_resumed_run_restores_which_parameters_hold_a_gradient(tmp_path):
    """Parameters that held a zeroed gradient when saved get one back on resume (the optimiser moves them; see
    lckd_med.engines.checkpoint_handler.grad_params)."""
    _trainer(tmp_path, max_epochs=1).run()
    saved = load_checkpoint(tmp_path / CHECKPOINT_NAME)["grad_params"]
    assert saved and all(isinstance(n, str) for n in saved)
    resumed = _trainer(tmp_path, max_epochs=2)
    seen = {}
    resumed.add_event_handler(
        Events.ITERATION_STARTED(once=EPOCH_LENGTH + 1),
        lambda e: seen.update({n: p.grad is not None for n, p in e.network.named_parameters()}),
    )
    resumed.run()
    assert [n for n, has in seen.items() if has] == saved
