"""The omd bundle: its recipe as an overlay of the lckd bundle's configs; tiny train -> evaluate -> inference.

The rules every method's bundle follows (files, overlays that only name the folder) are in ``test_configs.py``.

OMD's configs are overlays merged after LCKD's (MONAI merges a config-file list, later files override):
``['bundles/lckd/train.json','bundles/omd/train.json']`` (+ ``bundles/lckd/demo.json``, ``bundles/omd/demo.json`` for
the CPU demo, + ``bundles/lckd/multi_gpu_train.json`` for several GPUs), ``['bundles/lckd/evaluate.json',
'bundles/omd/evaluate.json']`` and the same for ``inference.json``, each with ``--meta_file bundles/omd/metadata.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lckd_med.constants import SUBSET_NAMES
from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import load_checkpoint
from lckd_med.engines.workflow import bundle_dir
from lckd_med.inference.subset_dice import SUBSET_DICE_NAME
from lckd_med.reports import REPORT_FILES
from tests.testkit import merged_config

OMD = Path(bundle_dir("omd"))
LCKD = Path(bundle_dir("lckd"))


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_merged_config_is_omd():
    from monai.bundle import ConfigParser

    lckd = _json(LCKD / "train.json")
    omd = merged_config(LCKD / "train.json", OMD / "train.json")
    assert set(omd) >= set(lckd)
    for key in ("dataset_dir", "output_dir", "ckpt_dir", "datalist", "datalist_file", "label_convention", "run"):
        assert omd[key] == lckd[key], key
    assert omd["bundle_root"] == "$lckd_med.engines.bundle_dir('omd')"
    assert omd["network_def"]["_target_"] == lckd["network_def"]["_target_"] == "lckd_med.methods.build_network"
    # the network follows the method: the registered method builds its own network class
    parsed = {}
    for name, files in {"omd": (LCKD / "train.json", OMD / "train.json"), "lckd": (LCKD / "train.json",)}.items():
        parser = ConfigParser()
        parser.read_config([str(p) for p in files])
        parsed[name] = parser.get_parsed_content("network_def#method")
    assert parsed == {"omd": "omd", "lckd": "lckd"}
    assert omd["network_def"]["restore_kernel_size"] == "@restore_kernel_size"
    assert omd["network_preset"] == lckd["network_preset"] == "lean"
    assert (omd["fill_levels"], lckd["fill_levels"]) == ("all", "bottleneck")
    # one trainer for every method; the method is chosen by name from lckd_med.methods.METHODS
    assert omd["train"]["trainer"] == lckd["train"]["trainer"]
    assert omd["train"]["trainer"]["_target_"] == "lckd_med.engines.MethodTrainer"
    assert (omd["method_name"], lckd["method_name"]) == ("omd", "lckd")
    assert omd["phase1_iterations"] == 0  # one stage
    assert omd["method_handlers"] == []  # no election
    demo = merged_config(LCKD / "train.json", OMD / "train.json", LCKD / "demo.json", OMD / "demo.json")
    assert demo["phase1_iterations"] == 0 and demo["mmd_max_samples"] == 256
    # the demo's 300 CPU iterations learn TC/ET only with the BCE averaged over regions (docs/omd.md)
    assert demo["bce_reduction"] == "mean" and omd["bce_reduction"] == "sum_channels"


def test_metadata_describes_omd():
    meta = _json(OMD / "metadata.json")
    assert "2309.08204" in " ".join(meta["references"])
    assert meta["network_data_format"] == _json(LCKD / "metadata.json")["network_data_format"]


@pytest.mark.slow
def test_tiny_training_then_evaluation_through_the_cli(tmp_path):
    write_dataset(tmp_path / "data", 5, seed=3, spacing=4.0, release=2018, lgg_fraction=0.2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--dataset_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    common += ["--ckpt_dir", str(tmp_path / "models")]
    train = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{LCKD / 'train.json'}','{OMD / 'train.json'}']", "--meta_file", str(OMD / "metadata.json"),
        *common,
        "--filters", "[4,8,16]", "--roi_size", "[32,32,32]", "--num_iterations", "2", "--epoch_length", "1",
        "--num_workers", "0", "--log_every", "1", "--amp", "False", "--mmd_max_samples", "64",
    ]  # fmt: skip
    proc = subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert (
        "iter 2/2" in log and "adaptation_loss=" in log and "teachers" not in log.split("iter 2/2")[1].splitlines()[0]
    )
    ckpt = load_checkpoint(tmp_path / "models" / "model.pt")
    assert ckpt["network"]["name"] == "OMDNet" and ckpt["method"] == "omd" and ckpt["iteration"] == 2
    assert ckpt["train_config"]["roi_size"] == [32, 32, 32] and ckpt["train_config"]["kl_temperature"] == 2.0
    assert ckpt["method_state"] == {}  # OMD keeps no state beside the network and optimizer
    assert (tmp_path / "out" / "tensorboard").is_dir()

    evaluate = [
        sys.executable, "-m", "monai.bundle", "run", "evaluate",
        "--config_file", f"['{LCKD / 'evaluate.json'}','{OMD / 'evaluate.json'}']", "--meta_file", str(OMD / "metadata.json"), *common,
        "--max_cases", "1", "--amp", "False",
    ]  # fmt: skip
    proc = subprocess.run(evaluate, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in REPORT_FILES.values():
        assert (tmp_path / "out" / name).is_file(), name
    summary = pd.read_csv(tmp_path / "out" / REPORT_FILES["summary_csv"])
    assert summary["subset"].tolist() == [*SUBSET_NAMES, "mean"]
    assert set(json.loads((tmp_path / "models" / SUBSET_DICE_NAME).read_text())["subset_dice"]) == set(SUBSET_NAMES)

    # inference on a case that lacks its T1ce file
    case = next(p for p in sorted((tmp_path / "data").glob("*/*")) if p.is_dir())
    shutil.copytree(case, tmp_path / "in" / case.name)
    for f in (tmp_path / "in" / case.name).glob("*_t1ce.nii.gz"):
        f.unlink()
    infer = [
        sys.executable, "-m", "monai.bundle", "run", "inference",
        "--config_file", f"['{LCKD / 'inference.json'}','{OMD / 'inference.json'}']", "--meta_file", str(OMD / "metadata.json"),
        "--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "seg"),
        "--ckpt_dir", str(tmp_path / "models"), "--amp", "False",
    ]  # fmt: skip
    proc = subprocess.run(infer, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = pd.read_csv(tmp_path / "seg" / "inference_report.csv")
    assert report["status"].tolist() == ["ok"] and report["modalities"].tolist() == ["flair+t1+t2"]
    assert (tmp_path / "seg" / f"{case.name}.nii.gz").is_file()
