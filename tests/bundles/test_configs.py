"""Rules every bundle config follows, checked on each file of every bundle; the rules of a method's bundle.

A method's bundle (``bundles/<method>/``, the folder named after its registered name) is an overlay of LCKD's:
``train.json`` holds only what the method changes (merged after ``bundles/lckd/train.json``), ``evaluate.json`` and
``inference.json`` only name its folder (evaluation and inference rebuild whatever network ``model.pt`` names), and
``metadata.json`` and ``README.md`` describe it. MONAI reads ``logging.conf`` from the first config's folder, LCKD's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lckd_med.demo import method_bundles
from lckd_med.engines.workflow import bundle_dir, bundles_root
from lckd_med.methods import METHODS
from tests.testkit import config_expressions, merged_config

CONFIGS = sorted(p for p in bundles_root().glob("*/*.json") if p.name != "metadata.json")
LCKD = Path(bundle_dir("lckd"))
#: the method bundles other than LCKD's (overlays of it)
OVERLAYS = [b for b in method_bundles() if b != "lckd"]
OVERLAY_FILES = {"train.json", "evaluate.json", "inference.json", "metadata.json", "README.md"}


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _blocks(path: Path, size: int = 6) -> set[tuple[str, ...]]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return {tuple(lines[i : i + size]) for i in range(len(lines) - size + 1)}


def test_every_bundle_folder_is_a_registered_method():
    folders = {p.name for p in bundles_root().iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders == set(method_bundles()) and folders <= set(METHODS) and "lckd" in folders
    assert {"train.json", "demo.json", "evaluate.json", "inference.json", "multi_gpu_train.json"} <= {
        p.name for p in LCKD.iterdir()
    }


@pytest.mark.parametrize("bundle", OVERLAYS)
def test_method_bundle_files(bundle):
    files = {p.name for p in Path(bundle_dir(bundle)).iterdir() if p.is_file() and not p.name.startswith(".")}
    # LCKD's multi-GPU and bf16 (fast.json) overlays serve every method, reference_exact.json is LCKD's reference
    # recipe; a demo overlay of the method's own is optional
    assert OVERLAY_FILES <= files <= OVERLAY_FILES | {"demo.json", "logging.conf"}
    if "logging.conf" in files:  # OMD's copy, from before the rule
        assert (Path(bundle_dir(bundle)) / "logging.conf").read_text() == (LCKD / "logging.conf").read_text()


@pytest.mark.parametrize("bundle", OVERLAYS)
def test_method_train_overlay_names_its_method_and_folder(bundle):
    train = _json(Path(bundle_dir(bundle)) / "train.json")
    assert train["method_name"] == bundle and train["bundle_root"] == f"$lckd_med.engines.bundle_dir('{bundle}')"
    merged = merged_config(LCKD / "train.json", Path(bundle_dir(bundle)) / "train.json")
    assert merged["train"]["trainer"] == _json(LCKD / "train.json")["train"]["trainer"]  # the one trainer


@pytest.mark.parametrize("bundle", OVERLAYS)
@pytest.mark.parametrize("name", ["evaluate.json", "inference.json"])
def test_evaluate_and_inference_overlays_only_name_the_folder(bundle, name):
    """Evaluation and inference rebuild whatever network the checkpoint describes: every method runs LCKD's."""
    folder = Path(bundle_dir(bundle))
    assert _json(folder / name) == {"bundle_root": f"$lckd_med.engines.bundle_dir('{bundle}')"}
    merged, lckd = merged_config(LCKD / name, folder / name), _json(LCKD / name)
    merged.pop("_meta_")
    assert merged.pop("bundle_root") == f"$lckd_med.engines.bundle_dir('{bundle}')"
    lckd.pop("bundle_root")
    assert merged == lckd


@pytest.mark.parametrize("bundle", OVERLAYS)
def test_method_configs_share_no_block_with_lckd(bundle):
    """A method's configs hold only what differs: no six-line block of them appears in any LCKD config."""
    ours = set().union(*(_blocks(p) for p in Path(bundle_dir(bundle)).glob("*.json") if p.name != "metadata.json"))
    lckd = set().union(*(_blocks(p) for p in LCKD.glob("*.json") if p.name != "metadata.json"))
    assert ours & lckd == set()


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_import_lines_stay_pure(path: Path):
    """MONAI raises on a ``$`` expression holding both the word ``import`` and an ``@`` reference."""
    bad = [e for e in config_expressions(json.loads(path.read_text())) if "import" in e and "@" in e]
    assert bad == []


@pytest.mark.parametrize("bundle", method_bundles())
def test_train_config_builds_the_methods_network_and_method(bundle):
    """The merged training config builds its registered method and that method's network (no data needed)."""
    from monai.bundle import ConfigParser

    files = [LCKD / "train.json"] + ([Path(bundle_dir(bundle)) / "train.json"] if bundle != "lckd" else [])
    parser = ConfigParser()
    parser.read_config([str(p) for p in files])
    parser.update({"filters": [4, 8], "device": "$torch.device('cpu')"})
    cls = METHODS[bundle]
    assert type(parser.get_parsed_content("network_def")) is cls.network_class
    method = parser.get_parsed_content("train#method")
    assert type(method) is cls
    assert parser.get_parsed_content("progress_state") == ["phase", *method.status()]
