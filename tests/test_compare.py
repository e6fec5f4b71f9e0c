"""lckd_med.compare: run definitions, CLI overrides, the table/plot writer and a dry run (no training here)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import lckd_med
from lckd_med.compare import (
    COMPARISON_MD,
    COMPARISON_PNG,
    PRESETS,
    _recipe,
    common_overrides,
    comparison_table,
    default_runs,
    main,
    overrides_argv,
    preset_methods,
    write_comparison,
)
from lckd_med.constants import REGIONS, SUBSET_NAMES
from lckd_med.demo import method_bundles
from lckd_med.methods import METHODS
from lckd_med.reports import summarize

LABELS = {name: cls.label for name, cls in METHODS.items()}


def _summary(seed: int, n_cases: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [
        {"case_id": f"c{c}", "subset": s, "region": r, "dice": float(rng.uniform()), "hd95": float(rng.uniform(0, 50))}
        for c in range(n_cases)
        for s in SUBSET_NAMES
        for r in REGIONS
    ]
    return summarize(pd.DataFrame(rows))


@pytest.fixture(scope="module")
def summaries() -> dict[str, pd.DataFrame]:
    return {name: _summary(i) for i, name in enumerate(LABELS)}


def test_default_runs_are_one_per_registered_method():
    runs = {r.name: r for r in default_runs(100)}
    assert list(runs) == list(METHODS) and {n: r.label for n, r in runs.items()} == LABELS
    own = set(method_bundles())
    for name, run in runs.items():
        # its own bundle (an overlay of LCKD's), else LCKD's bundle with method_name set
        assert run.bundle == (name if name in own else "lckd"), name
        assert run.overrides.get("method_name", name) == name
        if not METHODS[name].drops_modalities:
            assert run.overrides["phase1_iterations"] == 100  # never drops: stays in phase 1
        # only the method that distils from elected teachers elects (at the switch and halfway through phase 2, not
        # after the last step); on LCKD's bundle the others run without the election handler
        if name == "lckd":
            assert run.overrides["elect_at_phase_switch"] is True and run.overrides["first_election"] == 75
            assert run.overrides["election_interval"] == 0
            assert run.overrides["validate#election#elect_at_end"] is False
        elif run.bundle == "lckd":
            assert run.overrides["method_handlers"] == []
    assert runs["lckd"].overrides["phase1_iterations"] == runs["lckd_nokd"].overrides["phase1_iterations"] == 50
    tiny = next(r for r in default_runs(3) if r.name == "lckd").overrides  # phase 2 is 2 steps: elect at 1 and 2
    assert tiny["first_election"] == 2 and tiny["elect_at_phase_switch"] is True
    tiny = next(r for r in default_runs(2) if r.name == "lckd").overrides  # halfway would be the last step: no election
    assert tiny["first_election"] is None and tiny["elect_at_phase_switch"] is True
    assert runs["omd"].bundle == "omd" and runs["omd"].overrides["phase1_iterations"] == 0  # one stage
    # RFNet and mmFormer build their published network; RFNet's fused term starts at 3000 / 45000 of the budget
    assert runs["rfnet"].overrides["network_preset"] == runs["mmformer"].overrides["network_preset"] == "published"
    assert "network_preset" not in runs["lckd"].overrides and "fusion_start_iteration" not in runs["mmformer"].overrides
    assert runs["rfnet"].overrides["fusion_start_iteration"] == 6  # 100 x 3000 / 45000


def test_caption_describes_each_run():
    for run in default_runs(100):
        text = _recipe(run)
        assert text.startswith(f"{run.label}: ") and "(" in text, text
    recipes = {r.name: _recipe(r) for r in default_runs(100)}
    assert "all sequences for 50 iterations" in recipes["lckd"] and "halfway through the rest" in recipes["lckd"]
    assert "from the first iteration" in recipes["omd"] and "at every iteration" in recipes["all4"]
    assert "trains an OMDNet" in recipes["omd"] and ":class:" not in recipes["omd"] and "``" not in recipes["lckd"]


@pytest.mark.parametrize("bad", [0, 1, 2.5, True, "100"])
def test_default_runs_rejects_a_bad_budget(bad):
    with pytest.raises(ValueError):
        default_runs(bad)


def test_overrides_argv_formats_lists_none_and_bools():
    argv = overrides_argv({"roi_size": [32, 32, 16], "validate#election#phase_switch_iteration": None, "amp": False})
    assert argv == ["--roi_size", "[32,32,16]", "--validate#election#phase_switch_iteration", "$None", "--amp", "False"]


def test_overrides_argv_reaches_the_bundle_config_through_monai_bundle_run(tmp_path):
    """``--key None`` would be dropped by ``monai.bundle run``; the argv must really set the config values."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"filters": [8, 16], "flag": True, "show": "$print('GOT', @filters, @flag)"}))
    argv = overrides_argv({"filters": None, "flag": False})
    cmd = [sys.executable, "-m", "monai.bundle", "run", "show", "--config_file", str(config), *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "GOT None False" in out


def test_table_has_every_subset_the_mean_and_bold_winners(summaries):
    text = comparison_table(summaries, LABELS, caption="Synthetic, short budget.", title="T")
    lines = text.splitlines()
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + len(SUBSET_NAMES) + 1  # header, 15 subsets, mean
    assert table[0].count("|") == 1 + 1 + 3 * len(LABELS)
    assert table[1].startswith("| FLAIR |") and table[-1].startswith("| **Mean** |")
    assert lines[-1] == "Synthetic, short budget." and lines[0] == "## T"
    # the bold cell of a row and region is its maximum
    first = table[1].split("|")[2 : 2 + len(LABELS)]
    values = [float(c.strip().strip("*")) for c in first]
    bold = [c.strip().startswith("**") for c in first]
    assert bold[int(np.argmax(values))] and sum(bold) >= 1
    mean_et = [float(summaries[n]["ET_dice_mean"].iloc[-1]) * 100 for n in LABELS]
    assert f"{mean_et[0]:.1f}" in table[-1]


def test_write_comparison_writes_markdown_and_a_small_png(tmp_path, summaries):
    paths = write_comparison(summaries, LABELS, tmp_path / "docs", caption="caption here")
    assert paths["md"] == tmp_path / "docs" / COMPARISON_MD and paths["png"] == tmp_path / "docs" / COMPARISON_PNG
    assert "caption here" in paths["md"].read_text()
    data = paths["png"].read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 1024**2
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == sorted([COMPARISON_MD, COMPARISON_PNG])


def test_table_refuses_incomplete_input(summaries):
    with pytest.raises(ValueError, match="label"):
        comparison_table(summaries, {"lckd": "LCKD"})
    with pytest.raises(ValueError, match="canonical"):
        comparison_table({"lckd": summaries["lckd"].iloc[:-1]}, LABELS)
    with pytest.raises(ValueError):
        comparison_table({}, LABELS)


def test_dry_run_prints_the_bundle_commands_and_writes_nothing(tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["--dry_run", "--preset", "cpu", "--work_dir", str(work), "--docs_dir", str(tmp_path / "docs")]
    assert main([*argv, "--seeds", "7", "8"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    included, _ = preset_methods(PRESETS["cpu"])
    assert len(commands) == 2 * 2 * len(included)  # train + evaluate for each method the budget runs, per seed
    assert sum("run training" in c for c in commands) == sum("run evaluate" in c for c in commands) == 2 * len(included)
    for seed in (7, 8):
        for name in included:  # one folder per seed and method
            assert any(f"--ckpt_dir {work / f'seed{seed}' / name / 'models'}" in c for c in commands), name
            assert any(f"--output_dir {work / f'seed{seed}' / name / 'output'}" in c for c in commands), name
        assert sum(f"--seed {seed} " in c for c in commands) == 2 * len(included)  # train and evaluate
    for bundle in set(method_bundles()) & set(included) - {"lckd"}:
        assert sum(f"bundles/{bundle}/train.json" in c for c in commands) == 2, bundle
    cpu = PRESETS["cpu"]
    assert all(f"--num_iterations {cpu['iterations']}" in c for c in commands if "run training" in c)
    assert all(f"--fill_levels {cpu['fill_levels']}" in c for c in commands if "run training" in c)  # pinned
    assert not work.exists() and not (tmp_path / "docs").exists()


def test_every_method_runs_in_the_cpu_budget_and_the_rule_leaves_out_what_it_cannot_size():
    """The CPU preset runs each registered method whose network comes in its size; the rule names no method."""
    included, excluded = preset_methods(PRESETS["cpu"])
    assert included == [n for n in METHODS if n not in excluded]
    for name, reason in excluded.items():  # only a network without the preset's size is left out, with the reason
        assert f"has no {PRESETS['cpu']['network_preset']!r} size" in reason, name
    assert {"lckd", "lckd_nokd"} <= set(included)
    inc, exc = preset_methods({**PRESETS["cpu"], "network_preset": "no_such_size"}, ["lckd"])
    assert inc == [] and "no_such_size" in exc["lckd"]


@pytest.mark.parametrize("bad", ["-1", "x", "1.5"])
def test_a_bad_seed_is_one_line(bad, capsys):
    with pytest.raises(SystemExit) as err:
        main(["--dry_run", "--seeds", "7", bad])
    assert err.value.code == 2 and "must be a whole number >= 0" in capsys.readouterr().err


def _fake_finished(work, seed, run, cases=("c0", "c1"), shift=0.0, settings=None, version=None):
    """A run folder as a finished compare run leaves it: metrics, summary, election record (LCKD) and run.json."""
    from lckd_med.compare import RUN_RECORD, run_settings

    budget = PRESETS["cpu"]
    common = common_overrides(budget)
    run_dir = work / f"seed{seed}" / run.name
    out = run_dir / "output"
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows = [
        {"case_id": c, "subset": s, "region": r, "dice": float(np.clip(0.7 + shift + rng.normal(0, 0.05), 0, 1)),
         "hd95": 1.0}
        for c in cases
        for s in SUBSET_NAMES
        for r in REGIONS
    ]  # fmt: skip
    metrics = pd.DataFrame(rows)
    metrics.to_csv(out / "subset_metrics.csv", index=False)
    summarize(metrics).to_csv(out / "subset_summary.csv", index=False)
    if run.name == "lckd":
        # the switch's election picks FLAIR for TC, the last one the informative sequences
        pd.DataFrame(
            [{"iteration": it, "modality": m, "region": r, "dice": 0.5, "elected": str(m == {"ET": "t1ce",
              "TC": "t1ce" if it == 600 else "flair", "WT": "flair"}[r]).lower()}
             for it in (300, 600) for m in ("flair", "t1", "t1ce", "t2") for r in REGIONS]
        ).to_csv(out / "teacher_election.csv", index=False)  # fmt: skip
    seed_dir = work / f"seed{seed}"
    train, ev = settings or run_settings(
        run, seed, seed_dir / "data", seed_dir / "datalist.json", run_dir, common, budget
    )
    (seed_dir / "datalist.json").write_text(json.dumps({"training": [], "validation": [], "testing": []}))
    record = {"train_overrides": train, "eval_overrides": ev, "train_s": 1.0, "eval_s": 1.0, "hardware": "test"}
    if version:  # older runs recorded no package version
        record["package_version"] = version
    (run_dir / RUN_RECORD).write_text(json.dumps(record))
    return run_dir


def test_report_only_writes_the_page_from_finished_runs_and_says_what_did_not_run(tmp_path, capsys):
    work, docs = tmp_path / "work", tmp_path / "docs"
    runs = {r.name: r for r in default_runs(PRESETS["cpu"]["iterations"])}
    for seed in (7, 8):
        _fake_finished(work, seed, runs["lckd"], shift=0.05)
        _fake_finished(work, seed, runs["lckd_nokd"])
    stale = _fake_finished(work, 7, runs["all4"], settings=({"seed": 7}, {}))  # other settings: not reused
    argv = ["--preset", "cpu", "--seeds", "7", "8", "9", "--work_dir", str(work), "--docs_dir", str(docs)]
    assert main([*argv, "--runs", "lckd", "lckd_nokd", "all4", "--report_only"]) == 0
    out = capsys.readouterr().out
    assert "seed 7 all4: not finished with these settings" in out and (stale / "run.json").is_file()
    text = (docs / COMPARISON_MD).read_text()
    assert "Seeds asked for: [7, 8, 9]" in text and "not finished: LCKD seed 9" in text
    assert "test cases of seeds [7, 8] pooled (the seeds every method finished; 4 case-seed pairs)" in text
    assert "Not every method met every bar" in text and "seeds [9] not run" in text
    all4 = [line for line in text.splitlines() if line.startswith("| All-4 only |")]
    assert len(all4) == 1 and "seeds [7, 8, 9] not run" in all4[0]  # a method with no finished run is listed too
    assert "10 of 12 region elections picked the informative sequence" in text
    assert "at each seed's last election (the rest of training distils from its teachers), 6 of 6" in text
    assert "LCKD minus LCKD without KD" in text and "paired over the test cases of seeds [7, 8]" in text
    assert "--report_only" in text and (docs / COMPARISON_PNG).is_file()
    assert "Package version not recorded (older runs)." in text
    _fake_finished(work, 7, runs["omd"], version="0.9.1")  # OMD on seed 7 only: the table keeps seed 7
    assert main([*argv, "--runs", "lckd", "lckd_nokd", "omd", "--report_only"]) == 0
    text = (docs / COMPARISON_MD).read_text()
    assert "Trained by lckd_med 0.9.1 and not recorded (older runs)." in text  # the page says runs differ
    assert "test cases of seeds [7] pooled (the seeds every method finished; 2 case-seed pairs)" in text
    assert "paired over the test cases of seeds [7, 8]" in text  # the sections still use every finished seed


def test_a_relative_work_dir_finds_the_runs_recorded_with_absolute_paths(tmp_path, capsys, monkeypatch):
    """Run records hold absolute paths: the same runs are found whatever folder --work_dir is given from."""
    work = tmp_path / "work"
    runs = {r.name: r for r in default_runs(PRESETS["cpu"]["iterations"])}
    _fake_finished(work, 7, runs["lckd"])
    monkeypatch.chdir(tmp_path)
    argv = ["--preset", "cpu", "--seeds", "7", "--runs", "lckd", "--work_dir", "work", "--docs_dir", "docs"]
    assert main([*argv, "--report_only"]) == 0
    assert "not finished" not in capsys.readouterr().out and (tmp_path / "docs" / COMPARISON_MD).is_file()


def test_report_only_with_nothing_finished_is_one_line(tmp_path, capsys):
    argv = ["--preset", "cpu", "--seeds", "7", "--work_dir", str(tmp_path), "--docs_dir", str(tmp_path / "d")]
    assert main([*argv, "--report_only"]) == 1
    assert capsys.readouterr().err.strip() == "no finished run to report" and not (tmp_path / "d").exists()


def test_unknown_run_name_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--dry_run", "--runs", "lckd", "nope", "--work_dir", str(tmp_path)])


@pytest.mark.slow
def test_tiny_compare_trains_evaluates_reports_and_reuses(tmp_path, capsys, monkeypatch):
    """The CI smoke of compare: one tiny LCKD run through the real bundles (train, elect, evaluate), the page with
    its sections, then a second call that reuses the finished run instead of training again."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work, docs = tmp_path / "work", tmp_path / "docs"
    argv = [
        "--preset", "cpu", "--cases", "6", "--spacing", "4", "--iterations", "4", "--roi", "16", "16", "16",
        "--filters", "4", "8", "16", "--max_eval_cases", "1", "--seeds", "3", "--runs", "lckd",
        "--work_dir", str(work), "--docs_dir", str(docs),
    ]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((work / "seed3" / "lckd" / "run.json").read_text())
    assert record["seed"] == 3 and record["train_overrides"]["num_iterations"] == 4 and record["train_s"] > 0
    assert record["package_version"] == lckd_med.__version__  # reuse matches settings; this says which code trained
    text = (docs / COMPARISON_MD).read_text()
    assert f"Trained by lckd_med {lckd_med.__version__}." in text
    assert "Where the data carries each region" in text and "teacher elections" in text
    assert "of 6 region elections" in text  # at the switch (2) and halfway (3), none after the last step
    capsys.readouterr()
    assert main([*argv, "--reuse_finished"]) == 0
    out = capsys.readouterr().out
    assert "seed 3 lckd: finished before" in out and "run training" not in out


def test_report_only_without_a_seed_every_method_finished_says_the_columns_differ(tmp_path):
    work, docs = tmp_path / "work", tmp_path / "docs"
    runs = {r.name: r for r in default_runs(PRESETS["cpu"]["iterations"])}
    _fake_finished(work, 7, runs["lckd"])
    _fake_finished(work, 8, runs["lckd_nokd"])
    argv = ["--preset", "cpu", "--seeds", "7", "8", "--work_dir", str(work), "--docs_dir", str(docs)]
    assert main([*argv, "--runs", "lckd", "lckd_nokd", "--report_only"]) == 0
    text = (docs / COMPARISON_MD).read_text()
    assert "no seed has every method: the columns are not on the same cases" in text
    assert "LCKD minus LCKD without KD" not in text  # no seed pairs them


def test_a_run_folder_compare_did_not_make_is_never_replaced(tmp_path, capsys):
    """A folder named like a run under --work_dir that compare did not make is refused before any training."""
    work = tmp_path / "work"
    user = work / "seed3" / "lckd" / "notes.txt"
    user.parent.mkdir(parents=True)
    user.write_text("mine")
    argv = ["--preset", "cpu", "--cases", "6", "--spacing", "4", "--iterations", "2", "--seeds", "3", "--runs", "lckd"]
    with pytest.raises(FileExistsError, match="was not made by lckd_med.compare; it was left untouched"):
        main([*argv, "--work_dir", str(work), "--docs_dir", str(tmp_path / "docs")])
    assert user.read_text() == "mine" and sorted(p.name for p in user.parent.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--cases", "0"),
        ("--spacing", "nan"),
        ("--spacing", "8"),
        ("--iterations", "1"),
        ("--roi", "0"),
        ("--filters", "-4"),
        ("--batch_size", "0"),
        ("--learning_rate", "-1"),
        ("--max_eval_cases", "x"),
    ],
)
def test_a_bad_numeric_flag_is_one_line(flag, value, capsys):
    values = [value] * 3 if flag == "--roi" else [value]
    with pytest.raises(SystemExit) as err:
        main(["--dry_run", flag, *values])
    assert err.value.code == 2
    assert f"argument {flag}: must be" in capsys.readouterr().err
