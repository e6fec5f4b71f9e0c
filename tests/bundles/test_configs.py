"""Rules every bundle config follows, checked on each file of both bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lckd_med.engines.workflow import bundles_root
from tests.testkit import config_expressions

CONFIGS = sorted(p for p in bundles_root().glob("*/*.json") if p.name != "metadata.json")


def test_both_bundles_have_configs():
    assert {p.parent.name for p in CONFIGS} == {"lckd", "omd"}
    assert {"train.json", "demo.json", "evaluate.json", "inference.json", "multi_gpu_train.json"} <= {
        p.name for p in CONFIGS
    }


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_import_lines_stay_pure(path: Path):
    """MONAI raises on a ``$`` expression holding both the word ``import`` and an ``@`` reference."""
    bad = [e for e in config_expressions(json.loads(path.read_text())) if "import" in e and "@" in e]
    assert bad == []
