"""metadata.json of both bundles against the MONAI bundle specification's keys, offline (``verify_metadata`` would
download the model-zoo schema), and ``verify_net_in_out`` of each bundle's ``network_def`` against it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lckd_med.constants import MODALITIES, REGIONS
from lckd_med.demo import method_bundles
from lckd_med.engines.checkpoint import load_checkpoint, save_checkpoint
from lckd_med.methods import METHODS
from tests.testkit import checkpoint_payload, tiny_method_network

REPO = Path(__file__).resolve().parents[2]
BUNDLES = tuple(method_bundles())
#: Mandatory keys of metadata.json (MONAI bundle specification, "metadata.json File", with the 2024-07-25 schema's
#: ``required_packages_version`` in place of ``optional_packages_version``), plus the optional keys the model zoo's
#: checks read (``changelog``, holding the current version) and the descriptive ones we fill.
TOP_KEYS = (
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
    "intended_use",
    "references",
    "data_source",
    "data_type",
)
#: Keys every tensor format specifier must have.
TENSOR_KEYS = (
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
)
VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def metadata(bundle: str) -> dict:
    return json.loads((REPO / "bundles" / bundle / "metadata.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_top_level_keys(bundle):
    meta = metadata(bundle)
    missing = [k for k in TOP_KEYS if k not in meta]
    assert not missing, f"{bundle}/metadata.json lacks {missing}"
    assert VERSION.match(meta["version"]) and meta["version"] in meta["changelog"]
    for key in ("monai_version", "pytorch_version", "numpy_version"):
        assert VERSION.match(meta[key].split("+")[0]), (key, meta[key])
    packages = meta["required_packages_version"]
    assert isinstance(packages, dict) and all(VERSION.match(str(v)) for v in packages.values())
    assert {"lckd_med", "nibabel", "pytorch-ignite", "safetensors", "fire"} <= set(packages)
    # MONAI 1.6 renames a deprecated optional_packages_version to required_packages_version when it parses the
    # metadata, replacing the real list: the old key must not be there
    assert "optional_packages_version" not in meta
    assert meta["schema"].startswith("https://") and meta["schema"].endswith(".json")
    assert all(isinstance(meta[k], str) and meta[k] for k in ("task", "description", "authors", "copyright"))


def test_monai_version_satisfies_the_project_pin():
    pin = re.search(r'"monai\[fire\]>=([\d.]+),<([\d.]+)"', (REPO / "pyproject.toml").read_text()).groups()
    low, high = (tuple(int(x) for x in v.split(".")) for v in pin)
    for bundle in BUNDLES:
        v = tuple(int(x) for x in metadata(bundle)["monai_version"].split("."))
        assert low <= v < high


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("side, name, order", [("inputs", "image", MODALITIES), ("outputs", "pred", REGIONS)])
def test_tensor_specifiers(bundle, side, name, order):
    """The exported network (network_def) gives region logits for every method, RFNet's and mmFormer's softmax
    included (lckd_med.engines.export)."""
    spec = metadata(bundle)["network_data_format"][side][name]
    assert [k for k in TENSOR_KEYS if k not in spec] == []
    assert spec["num_channels"] == len(order)
    assert list(spec["channel_def"]) == [str(i) for i in range(len(order))]
    for i, key in enumerate(order):
        assert spec["channel_def"][str(i)].lower().startswith(key.lower()), (i, key, spec["channel_def"])
    assert len(spec["spatial_shape"]) == 3 and spec["dtype"] == "float32"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle, tmp_path):
    from monai.bundle import verify_net_in_out

    torch.manual_seed(0)
    # mmFormer's window is fixed: its tiny network has the published 128^3, the size its metadata gives
    net = tiny_method_network(bundle, **({"img_size": 128} if bundle == "mmformer" else {}))
    save_checkpoint(tmp_path / "model.pt", checkpoint_payload(net))
    assert load_checkpoint(tmp_path / "model.pt")["network"]["name"] == METHODS[bundle].network_class.__name__
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(REPO / "bundles" / bundle / "metadata.json"),
            # another method's inference.json is an overlay of LCKD's that only names its folder
            config_file=[str(REPO / "bundles" / b / "inference.json") for b in dict.fromkeys(("lckd", bundle))],
            device="cpu",
            n=2,
            ckpt_dir=str(tmp_path),
        )
    finally:
        torch.set_num_threads(before)
