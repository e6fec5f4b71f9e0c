"""lckd_med.compare: run definitions, CLI overrides, the table/plot writer and a dry run (no training here)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from lckd_med.compare import (
    COMPARISON_MD,
    COMPARISON_PNG,
    _recipe,
    comparison_table,
    default_runs,
    main,
    overrides_argv,
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
        # only the method that distils from elected teachers elects (once, at the switch); on LCKD's bundle the
        # others run without the election handler
        if name == "lckd":
            assert run.overrides["elect_at_phase_switch"] is True and run.overrides["first_election"] is None
        elif run.bundle == "lckd":
            assert run.overrides["method_handlers"] == []
    assert runs["lckd"].overrides["phase1_iterations"] == runs["lckd_nokd"].overrides["phase1_iterations"] == 50
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
    assert "all sequences for 50 iterations" in recipes["lckd"] and "teachers elected once" in recipes["lckd"]
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
    assert main(["--dry_run", "--preset", "cpu", "--work_dir", str(work), "--docs_dir", str(tmp_path / "docs")]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 * len(METHODS)  # train + evaluate for each registered method
    assert sum("run training" in c for c in commands) == sum("run evaluate" in c for c in commands) == len(METHODS)
    for name in LABELS:
        assert any(f"--ckpt_dir {work / name / 'models'}" in c for c in commands), name
        assert any(f"--output_dir {work / name / 'output'}" in c for c in commands), name
    for bundle in set(method_bundles()) - {"lckd"}:
        assert sum(f"bundles/{bundle}/train.json" in c for c in commands) == 1, bundle
    assert all("--num_iterations 300" in c for c in commands if "run training" in c)
    assert not work.exists() and not (tmp_path / "docs").exists()


def test_unknown_run_name_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        main(["--dry_run", "--runs", "lckd", "nope", "--work_dir", str(tmp_path)])
