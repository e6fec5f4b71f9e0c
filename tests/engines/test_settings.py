"""Every bundle setting is parsed into its type with one line for a bad value (lckd_med.engines.settings), through a
real MONAI ``ConfigParser`` and the bundle command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle import run as bundle_run

from lckd_med.engines.settings import COMPONENT_KEYS, SETTINGS, TRAINING_SETTINGS, apply_settings
from lckd_med.engines.workflow import _error_hook, bundle_dir, user_error_of
from tests.testkit import save_tiny_checkpoint

BUNDLES = Path(bundle_dir("lckd")).parent
CONFIGS = sorted(p for p in BUNDLES.glob("*/*.json") if p.name != "metadata.json")


def _plain(value) -> bool:
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(isinstance(v, scalar) and _plain(v) for v in value)
    return isinstance(value, scalar)


def test_every_plain_key_of_every_bundle_config_has_a_type():
    missing = {}
    keys = set()
    for path in CONFIGS:
        config = json.loads(path.read_text())
        keys |= set(config)
        for key, value in config.items():
            if any(c in key for c in "#:+") or key in COMPONENT_KEYS:
                continue  # merge directives and components
            if _plain(value) and key not in SETTINGS:
                missing[f"{path.parent.name}/{path.name}"] = key
    assert not missing, f"bundle keys without an entry in lckd_med.engines.settings.SETTINGS: {missing}"
    assert not set(SETTINGS) - keys, f"SETTINGS entries no bundle has: {set(SETTINGS) - keys}"


CASES = [(key, bad) for key, setting in sorted(SETTINGS.items()) for bad in setting.bad]


@pytest.mark.parametrize(("key", "bad"), CASES, ids=[f"{k}={b!r}" for k, b in CASES])
def test_a_bad_value_of_every_setting_is_one_line_naming_it(key, bad):
    parser = ConfigParser({key: bad})
    with pytest.raises(ValueError) as info:
        apply_settings(parser)
    message = str(info.value)
    assert f"--{key}" in message and "\n" not in message


def test_training_needs_a_window():
    parser = ConfigParser({"train": {}, "roi_size": None})
    with pytest.raises(ValueError, match="--roi_size must be a list of 3"):
        apply_settings(parser)
    assert apply_settings(ConfigParser({"roi_size": None})) == {"roi_size": None}  # evaluation: the checkpoint's
    assert set(TRAINING_SETTINGS) <= set(SETTINGS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_defaults_of_every_config_parse_and_keep_their_values(path):
    config = json.loads(path.read_text())
    parser = ConfigParser(dict(config))
    typed = apply_settings(parser)
    for key, value in typed.items():
        assert parser[key] == config[key] or parser[key] == value


def test_text_from_the_command_line_becomes_the_type():
    parser = ConfigParser(
        {"amp": "false", "resume": "True", "batch_size": "4", "roi_size": "[16,16,8]", "device": "cpu"}
    )
    apply_settings(parser)
    assert parser["amp"] is False and parser["resume"] is True and parser["batch_size"] == 4
    assert parser["roi_size"] == [16, 16, 8] and parser["device"] == torch.device("cpu")
    expression = ConfigParser({"device": "$torch.device('cpu')"})
    apply_settings(expression)
    assert expression["device"] == "$torch.device('cpu')"  # expressions are the config's own, left alone


BUNDLE_RUNS = [
    ("training", ["train.json", "demo.json"], {"batch_size": 0}, "--batch_size must be a whole number >= 1, got 0"),
    ("training", ["train.json", "demo.json"], {"device": "cuda:7"}, "device 'cuda:7' requested"),
    ("training", ["train.json", "demo.json"], {"learning_rate": "abc"}, "--learning_rate must be a number > 0"),
    ("training", ["train.json", "demo.json"], {"num_workers": -1}, "--num_workers must be a whole number >= 0"),
    ("training", ["train.json", "demo.json"], {"amp": "maybe"}, "--amp must be true or false"),
    ("evaluate", ["evaluate.json"], {"sw_overlap": "nan"}, "--sw_overlap must be a number in [0, 1)"),
    ("inference", ["inference.json"], {"overwrite": "maybe"}, "--overwrite must be true or false"),
]


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="cuda:7 exists here")
@pytest.mark.parametrize(("run_id", "configs", "override", "expected"), BUNDLE_RUNS)
def test_bundle_commands_stop_with_one_line_before_building_anything(
    tmp_path, capsys, run_id, configs, override, expected
):
    hook = sys.excepthook
    paths = {"dataset_dir": str(tmp_path / "none"), "output_dir": str(tmp_path / "out"), "ckpt_dir": str(tmp_path)}
    try:
        with pytest.raises(Exception) as info:
            bundle_run(
                run_id,
                config_file=[str(BUNDLES / "lckd" / c) for c in configs],
                logging_file=False,
                **paths,
                **override,
            )
    finally:
        sys.excepthook = hook
    assert expected in str(user_error_of(info.value))
    capsys.readouterr()
    _error_hook(type(info.value), info.value, info.value.__traceback__)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and expected in err[0] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()  # nothing was built or written


@pytest.mark.slow
def test_training_with_a_bad_value_through_the_real_command_is_one_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(BUNDLES / "lckd" / "train.json"),
    ]
    args = ["--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"), "--batch_size", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --batch_size must be a whole number >= 1, got 0"], proc.stderr[-3000:]


def test_torchscript_export_refuses_an_existing_file(tmp_path):
    from monai.bundle import ckpt_export

    ckpt = save_tiny_checkpoint(tmp_path / "model.pt")
    target = tmp_path / "model.ts"
    target.write_bytes(b"the user's file")
    common = {
        "config_file": str(BUNDLES / "lckd" / "inference.json"),
        "meta_file": str(BUNDLES / "lckd" / "metadata.json"),
        "ckpt_dir": str(tmp_path),
        "key_in_ckpt": "model",
    }
    for filepath, overwrite, expected in (
        (target, False, "model.ts exists; it was left untouched"),
        (ckpt, True, "is also an input"),
    ):
        with pytest.raises(Exception) as info:
            ckpt_export("network_def", filepath=str(filepath), ckpt_file=str(ckpt), overwrite=overwrite, **common)
        assert expected in str(user_error_of(info.value))
    assert target.read_bytes() == b"the user's file"
