"""Teacher election: the per-region rule, single-modality Dice on a network of known behaviour, the handler."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from ignite.engine import Engine, Events

from lckd_med.constants import MODALITIES, NUM_MODALITIES, NUM_REGIONS, REGIONS
from lckd_med.engines.election import (
    ELECTION_COLUMNS,
    TeacherElectionHandler,
    TeacherState,
    elect_teachers,
    single_modality_dice,
    soft_dice,
)
from lckd_med.modalities import ModalitySpec

SIZE = 8


pytestmark = pytest.mark.usefixtures("one_thread")


class ThresholdNet(torch.nn.Module):
    """A network with a known rule: every region is predicted where the mean of the available channels > 0.5.

    ``encode`` keeps the raw channels as the only feature level, ``decode_subsets`` averages the channels of each
    mask's modalities; with one modality available each region's prediction is that channel thresholded.
    """

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.unsqueeze(2)]  # (B, M, 1, *S)

    def decode_subsets(self, features: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        x = features[0][:, :, 0]  # (B, M, *S)
        w = masks.to(x.dtype)  # (K, M)
        mean = torch.einsum("km,bm...->bk...", w, x) / w.sum(dim=1).view(1, -1, *([1] * (x.dim() - 2)))
        logits = 20.0 * (mean - 0.5)  # (B, K, *S)
        return logits.unsqueeze(2).expand(-1, -1, NUM_REGIONS, *([-1] * (x.dim() - 2)))


def _regions() -> torch.Tensor:
    """Nested ET < TC < WT boxes of 8, 27 and 64 voxels, ``(3, S, S, S)`` in REGIONS order."""
    et = torch.zeros(SIZE, SIZE, SIZE, dtype=torch.bool)
    et[3:5, 3:5, 3:5] = True
    tc = torch.zeros_like(et)
    tc[2:5, 2:5, 2:5] = True
    wt = torch.zeros_like(et)
    wt[1:5, 1:5, 1:5] = True
    return torch.stack([et, tc, wt])


def _case() -> dict[str, torch.Tensor]:
    """FLAIR shows WT, T1 nothing, T1ce ET, T2 TC: each region has exactly one perfect modality."""
    et, tc, wt = _regions()
    image = torch.stack([wt, torch.zeros_like(wt), et, tc]).float()[None]
    return {"image": image, "label": _regions().float()[None]}


def _expected_mean_dice() -> torch.Tensor:
    """Hand-computed legacy Dice (4, 3): prediction = the channel's box, every region non-empty."""
    sizes = {"ET": 8, "TC": 27, "WT": 64}
    shows = {"flair": "WT", "t1": None, "t1ce": "ET", "t2": "TC"}
    out = torch.zeros(NUM_MODALITIES, NUM_REGIONS, dtype=torch.float64)
    for m, mod in enumerate(MODALITIES):
        for r, region in enumerate(REGIONS):
            shown = shows[mod]
            if shown is None:
                continue  # empty prediction, non-empty truth: 0
            # nested boxes: the intersection is the smaller one
            inter = min(sizes[shown], sizes[region])
            out[m, r] = 2 * inter / (sizes[shown] + sizes[region])
    return out


# ------------------------------------------------------------------------------------------ elect_teachers
def test_elect_teachers_best_per_region():
    dice = torch.tensor([[0.1, 0.2, 0.9], [0.2, 0.1, 0.1], [0.8, 0.3, 0.5], [0.3, 0.7, 0.4]])
    assert elect_teachers(dice) == {"ET": "t1ce", "TC": "t2", "WT": "flair"}
    assert list(elect_teachers(dice)) == list(REGIONS)


@pytest.mark.parametrize(
    "column, winner",
    [([0.5, 0.5, 0.5, 0.5], "flair"), ([0.1, 0.6, 0.6, 0.2], "t1"), ([0.0, 0.0, 0.3, 0.3], "t1ce")],
    ids=["all_equal", "t1_t1ce", "t1ce_t2"],
)
def test_elect_teachers_ties_go_to_first_modality(column, winner):
    dice = torch.tensor(column, dtype=torch.float64)[:, None].repeat(1, NUM_REGIONS)
    assert set(elect_teachers(dice).values()) == {winner}


@pytest.mark.parametrize(
    "dice, match",
    [
        (torch.zeros(3, 3), "must be"),
        (torch.zeros(4, 4), "must be"),
        (torch.zeros(12), "must be"),
        (torch.tensor([[0.1, 0.2, float("nan")]] * 4), "non-finite"),
        (torch.tensor([[0.1, float("inf"), 0.2]] * 4), "non-finite"),
    ],
    ids=["3_rows", "4_cols", "flat", "nan", "inf"],
)
def test_elect_teachers_bad_input(dice, match):
    with pytest.raises(ValueError, match=match):
        elect_teachers(dice)


# ------------------------------------------------------------------------------------------ TeacherState
def test_teacher_state_order_mask_and_round_trip():
    state = TeacherState(default=["t2", "flair"])
    assert state.teachers == ["flair", "t2"]  # modality order whatever the config order
    assert state.mask().tolist() == [True, False, False, True]
    state.history.append({"iteration": 4, "modality": "t1", "region": "ET", "dice": 0.5, "elected": "true"})
    other = TeacherState()
    other.load_state_dict(state.state_dict())
    assert other.teachers == ["flair", "t2"] and other.history == state.history


def test_teacher_state_rejects_unknown_modality():
    with pytest.raises(ValueError, match="T1Gd"):
        TeacherState(default=["T1Gd"])


# ------------------------------------------------------------------------------------------ single_modality_dice
def test_single_modality_legacy_dice_option_matches_hand_computation():
    net = ThresholdNet().train()
    loader = [_case(), _case()]
    sums, counts = single_modality_dice(net, loader, roi_size=(SIZE,) * 3, device="cpu", amp=False, score="legacy")
    assert counts.tolist() == [2] * NUM_MODALITIES
    n = 2
    assert sums.shape == (NUM_MODALITIES, NUM_REGIONS) and sums.dtype == torch.float64
    torch.testing.assert_close(sums / n, _expected_mean_dice(), rtol=0, atol=1e-6)
    assert elect_teachers(sums / n) == {"ET": "t1ce", "TC": "t2", "WT": "flair"}
    assert net.training  # mode restored


def test_single_modality_legacy_dice_empty_regions_follow_legacy_rules():
    """A case without tumour: modalities predicting nothing score 1, the others 0."""
    case = _case()
    case["label"] = torch.zeros_like(case["label"])
    sums, _ = single_modality_dice(
        ThresholdNet(), [case], roi_size=(SIZE,) * 3, device="cpu", amp=False, score="legacy"
    )
    expected = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)[:, None].repeat(1, NUM_REGIONS)
    torch.testing.assert_close(sums, expected)


class HalfNet(ThresholdNet):
    """Logit 0 everywhere (probability 0.5) for every subset."""

    def decode_subsets(self, features: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(super().decode_subsets(features, masks))


def test_default_score_is_the_reference_soft_dice():
    """p = 0.5 everywhere: soft Dice = 2 * 0.5 |G| / (0.5 N + |G| + 1), the reference's dice_score."""
    sums, counts = single_modality_dice(HalfNet(), [_case()], roi_size=(SIZE,) * 3, device="cpu", amp=False)
    n_vox = SIZE**3
    expected = torch.tensor([2 * 0.5 * g / (0.5 * n_vox + g + 1) for g in (8, 27, 64)], dtype=torch.float64)
    torch.testing.assert_close(sums, expected.repeat(NUM_MODALITIES, 1))
    assert counts.tolist() == [1] * NUM_MODALITIES
    # an empty region scores 0 whatever is predicted: predicting nothing is not rewarded
    case = _case()
    case["label"] = torch.zeros_like(case["label"])
    sums, _ = single_modality_dice(ThresholdNet(), [case], roi_size=(SIZE,) * 3, device="cpu", amp=False)
    torch.testing.assert_close(sums, torch.zeros(NUM_MODALITIES, NUM_REGIONS, dtype=torch.float64))


def test_soft_dice_formula():
    prob = torch.tensor([[0.2, 0.8, 0.0, 1.0]])
    target = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert soft_dice(prob, target).item() == pytest.approx(2 * 1.8 / (2.0 + 2.0 + 1.0))


def test_a_sequence_missing_on_disk_is_never_scored():
    full, no_t2 = _case(), _case()
    no_t2["image"][:, 3] = 0
    no_t2["modality_mask"] = torch.tensor([[True, True, True, False]])
    sums, counts = single_modality_dice(ThresholdNet(), [full, no_t2], roi_size=(SIZE,) * 3, device="cpu", amp=False)
    assert counts.tolist() == [2, 2, 2, 1]
    one, _ = single_modality_dice(ThresholdNet(), [full], roi_size=(SIZE,) * 3, device="cpu", amp=False)
    torch.testing.assert_close(sums[3], one[3])  # t2's score is the full case's alone


def test_handler_never_elects_a_sequence_no_case_has(tmp_path):
    case = _case()
    case["image"][:, 3] = 0
    case["modality_mask"] = torch.tensor([[True, True, True, False]])
    state = TeacherState()
    handler = TeacherElectionHandler(state, [case], roi_size=(SIZE,) * 3, interval=1, output_dir=tmp_path, amp=False)
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    engine.run(range(1), max_epochs=1)
    assert "t2" not in state.teachers and state.teachers
    assert all(math.isnan(r["dice"]) for r in state.history if r["modality"] == "t2")


def test_default_schedule_elects_after_the_first_iteration_then_every_interval(tmp_path):
    state = TeacherState()
    assert state.teachers == []  # no built-in prior: no distillation before the first election
    handler = TeacherElectionHandler(state, [_case()], roi_size=(SIZE,) * 3, interval=4, output_dir=tmp_path, amp=False)
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    seen = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(list(state.teachers)))
    engine.run(range(10), max_epochs=1)
    # the reference's 0-based i_iter % 5000 == 0 -> 1-based iterations 1, 1 + interval, ...
    assert sorted({r["iteration"] for r in state.history}) == [1, 5, 9]
    assert seen[0] == ["flair", "t1ce", "t2"]  # iteration 2 on uses the elected teachers


def test_reference_exact_phase2_schedule_and_teacher_reset(tmp_path):
    """The reference's phase-2 run re-runs one iteration index and starts from its --teachers default (FLAIR):
    with phase 1 = 10 iterations and interval 5, the reference elects after i_iter 0, 5 (phase 1) and 10, 15 (phase
    2, whose engine iterations 11, 12, ... are its i_iter 9, 10, ...), i.e. after engine iterations 1, 6, 12, 17."""
    state = TeacherState(default=["flair"])
    handler = TeacherElectionHandler(
        state,
        [_case()],
        roi_size=(SIZE,) * 3,
        interval=5,
        output_dir=tmp_path,
        amp=False,
        reset_iteration=11,
        phase2_start=11,
        phase2_overlap=1,
    )
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    used = []  # teachers each iteration trains with (after the ITERATION_STARTED handlers)
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: used.append(list(state.teachers)))
    engine.run(range(18), max_epochs=1)
    assert sorted({r["iteration"] for r in state.history}) == [1, 6, 12, 17]
    assert used[0] == ["flair"] and used[1] == ["flair", "t1ce", "t2"]
    assert used[10] == used[11] == ["flair"]  # iterations 11 and 12 (i_iter 9 and 10): the default again
    assert used[12] == ["flair", "t1ce", "t2"]


# ------------------------------------------------------------------------------------------ the handler
def _engine(net: torch.nn.Module) -> Engine:
    engine = Engine(lambda e, b: None)
    engine.network = net

    @engine.on(Events.STARTED)
    def _device(e: Engine) -> None:
        e.state.device = torch.device("cpu")

    return engine


def _read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_handler_elects_on_schedule_and_writes_csv(tmp_path):
    state = TeacherState(default=["t1"])
    handler = TeacherElectionHandler(
        state,
        [_case()],
        roi_size=(SIZE,) * 3,
        interval=4,
        output_dir=tmp_path,
        phase_switch_iteration=3,
        amp=False,
        elect_at_end=True,
        first_election=None,
        score="legacy",
    )
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    seen = []  # teachers after each iteration's handlers (the election's included)
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(list(state.teachers)))
    engine.run(range(8), max_epochs=1)

    assert state.teachers == ["flair", "t1ce", "t2"]
    # elections at the phase switch (3) and every 4 iterations (4, 8); none extra at the end (8 done already)
    assert sorted({r["iteration"] for r in state.history}) == [3, 4, 8]
    assert seen[1] == ["t1"] and seen[2] == ["flair", "t1ce", "t2"]  # updated from iteration 3 on
    header, rows = _read_csv(tmp_path / "teacher_election.csv")
    assert header == list(ELECTION_COLUMNS) == ["iteration", "modality", "region", "dice", "elected"]
    assert len(rows) == 3 * NUM_MODALITIES * NUM_REGIONS
    expected = _expected_mean_dice()
    winners = {"ET": "t1ce", "TC": "t2", "WT": "flair"}
    for row in rows:
        m, r = MODALITIES.index(row["modality"]), REGIONS.index(row["region"])
        assert float(row["dice"]) == pytest.approx(float(expected[m, r]), abs=1e-6)
        assert row["elected"] == ("true" if winners[row["region"]] == row["modality"] else "false")
    # atomic write left no temp file; the folder's ownership record lists the election record
    assert sorted(f.name for f in tmp_path.iterdir()) == [".lckd_med_outputs.json", "teacher_election.csv"]


def test_handler_unwraps_data_parallel_network(tmp_path):
    """DistributedDataParallel / DataParallel hide ``encode``: the election must use the bare module."""
    state = TeacherState()
    handler = TeacherElectionHandler(state, [_case()], roi_size=(SIZE,) * 3, interval=1, output_dir=tmp_path, amp=False)
    engine = _engine(torch.nn.DataParallel(ThresholdNet()))
    handler.attach(engine)
    engine.run(range(1), max_epochs=1)
    assert state.teachers == ["flair", "t1ce", "t2"]


def test_handler_elects_at_end_when_schedule_missed_it(tmp_path):
    state = TeacherState()
    handler = TeacherElectionHandler(
        state, [_case()], roi_size=(SIZE,) * 3, interval=0, output_dir=tmp_path, amp=False, elect_at_end=True
    )
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    engine.run(range(5), max_epochs=1)
    assert {r["iteration"] for r in state.history} == {1, 5}


def test_handler_without_validation_cases_raises(tmp_path):
    handler = TeacherElectionHandler(TeacherState(), [], roi_size=(SIZE,) * 3, interval=1, output_dir=tmp_path)
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    with pytest.raises(RuntimeError, match="no validation cases"):
        engine.run(range(1), max_epochs=1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"interval": -1}, "interval"),
        ({"phase_switch_iteration": -2}, "phase_switch_iteration"),
        ({"overlap": 1.0}, "overlap"),
        ({"overlap": -0.1}, "overlap"),
        ({"first_election": 0}, "first_election"),
        ({"score": "hard"}, "score"),
        ({"mode": "mean"}, "mode"),
        ({"reset_iteration": 0}, "reset_iteration"),
        ({"phase2_start": True}, "phase2_start"),
        ({"phase2_overlap": -1}, "phase2_overlap"),
    ],
    ids=[
        "interval",
        "phase_switch",
        "overlap_1",
        "overlap_negative",
        "first_election",
        "score",
        "mode",
        "reset",
        "phase2_start",
        "phase2_overlap",
    ],
)
def test_handler_bad_arguments(tmp_path, kwargs, match):
    args = {"interval": 4, "output_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=match):
        TeacherElectionHandler(TeacherState(), [], roi_size=(SIZE,) * 3, **args)


RGBD = ModalitySpec(["rgb", "depth", "ir"], [3, 1, 1], spatial_dims=2)


def test_teacher_state_of_another_spec():
    state = TeacherState(default=["ir", "rgb"], modalities=RGBD)
    assert state.teachers == ["rgb", "ir"] and state.mask().tolist() == [True, False, True]
    state.load_state_dict({"teachers": ["depth", "flair"], "history": []})
    assert state.teachers == ["depth"]
    with pytest.raises(ValueError, match=r"\['t1ce'\] are not modality keys \('rgb', 'depth', 'ir'\)"):
        TeacherState(default=["t1ce"], modalities=RGBD)


def test_elect_teachers_of_another_spec():
    dice = torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.5, 0.2], [0.7, 0.6, 0.1]])
    assert elect_teachers(dice, RGBD) == {"ET": "depth", "TC": "ir", "WT": "rgb"}  # tie -> earlier modality
    with pytest.raises(ValueError, match=r"mean_dice must be \(3, 3\)"):
        elect_teachers(dice[:2], RGBD)


def test_a_user_file_named_like_the_election_record_is_refused_at_start(tmp_path):
    record = tmp_path / "teacher_election.csv"
    record.write_text("my,own,table\n1,2,3\n")
    state = TeacherState()
    handler = TeacherElectionHandler(state, [_case()], roi_size=(SIZE,) * 3, interval=1, output_dir=tmp_path, amp=False)
    engine = _engine(ThresholdNet())
    handler.attach(engine)
    with pytest.raises(FileExistsError, match="teacher_election.csv exists and was not written by lckd_med"):
        engine.run(range(2), max_epochs=1)
    assert record.read_text() == "my,own,table\n1,2,3\n" and state.history == []
    record.unlink()
    engine.run(range(2), max_epochs=1)  # then an earlier run's record (its header) is continued
    engine.run(range(2), max_epochs=1)
    assert record.read_text().startswith("iteration,modality,region,dice,elected")


class ClassNet(ThresholdNet):
    """:class:`ThresholdNet`'s rule as a softmax over the four BraTS classes (output kind ``"classes"``): enhancing
    tumour where the mean of the available channels > 0.5, background elsewhere."""

    output_kind = "classes"

    def decode_subsets(self, features: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        logit = super().decode_subsets(features, masks)[:, :, 0]  # (B, K, *S): 20 (mean - 0.5)
        zero = torch.zeros_like(logit)
        return torch.stack([-logit, zero, zero, logit], dim=2)  # (B, K, 4, *S): bg, NCR, ED, ET


class BackgroundFirstNet(ThresholdNet):
    """Class probabilities 0.4, 0.2, 0.2, 0.2 everywhere: argmax says background, a 0.5 threshold on WT (0.6) says
    tumour."""

    output_kind = "classes"

    def decode_subsets(self, features: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        shape = super().decode_subsets(features, masks)[:, :, :1].shape
        return torch.log(torch.tensor([0.4, 0.2, 0.2, 0.2])).view(1, 1, 4, 1, 1, 1).expand(*shape[:2], 4, *shape[3:])


def test_a_softmax_network_is_scored_on_its_region_probabilities_with_argmax():
    """A network whose output kind is ``"classes"``: the sweep gives region probabilities (ET, TC, WT from the
    softmax), the soft Dice reads them and the legacy Dice decides by argmax, as the published code."""
    sums, counts = single_modality_dice(
        ClassNet(), [_case()], roi_size=(SIZE,) * 3, device="cpu", amp=False, score="legacy"
    )
    torch.testing.assert_close(sums / counts[:, None], _expected_mean_dice(), rtol=0, atol=1e-6)
    legacy, _ = single_modality_dice(
        BackgroundFirstNet(), [_case()], roi_size=(SIZE,) * 3, device="cpu", amp=False, score="legacy"
    )
    assert float(legacy.abs().max()) == 0.0  # argmax: background everywhere, no region found
    soft, _ = single_modality_dice(BackgroundFirstNet(), [_case()], roi_size=(SIZE,) * 3, device="cpu", amp=False)
    wt = _regions()[2].float()
    want = 2 * 0.6 * wt.sum() / (0.6 * wt.numel() + wt.sum() + 1)  # soft Dice of WT = 0.6 everywhere
    torch.testing.assert_close(
        soft[:, 2], torch.full((NUM_MODALITIES,), float(want), dtype=torch.float64), atol=1e-5, rtol=0
    )
