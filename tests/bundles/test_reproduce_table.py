"""docs/reproduce.md section 5 says exactly what the bundle configs hold: every ``<file>#<key> = <value>`` cell of its
recipe table is checked against that file, every row says "same" or "departs", and every key the overlays set is
in the table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from lckd_med.engines.workflow import bundle_dir

REPO = Path(__file__).resolve().parents[2]
BUNDLE = Path(bundle_dir("lckd"))
CELL = re.compile(r"`(\w+)\.json#([\w#]+) = ([^`]+)`")
#: bundle configs read as the bundle reads them (the base configs) or as the overlay files they are
BASE = ("train", "evaluate", "inference")


def _rows() -> list[list[str]]:
    text = (REPO / "docs" / "reproduce.md").read_text()
    section = text.split("## 5. ")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| item ")]
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in rows]


def _value(name: str, key: str):
    if name in BASE:
        parser = ConfigParser()
        parser.read_config(str(BUNDLE / f"{name}.json"))
        return parser[key]
    return json.loads((BUNDLE / f"{name}.json").read_text())[key]


def test_table_has_five_columns_and_a_verdict_per_row():
    rows = _rows()
    assert len(rows) >= 35
    for row in rows:
        assert len(row) == 5, row
        assert row[4].startswith(("same", "departs")), row


@pytest.mark.parametrize(
    "cell",
    sorted({m.groups() for row in _rows() for m in CELL.finditer(" ".join(row))}),
    ids=lambda c: f"{c[0]}#{c[1]}",
)
def test_config_cell_matches_the_bundle(cell):
    name, key, value = cell
    assert _value(name, key) == json.loads(value)


def test_every_overlay_key_is_in_the_table():
    cells = {(m.group(1), m.group(2)) for row in _rows() for m in CELL.finditer(" ".join(row))}
    for name in ("fast", "reference_exact"):
        for key in json.loads((BUNDLE / f"{name}.json").read_text()):
            assert (name, key) in cells, f"{name}.json#{key} is not in docs/reproduce.md"
