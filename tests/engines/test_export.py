"""Tests of lckd_med.engines.export and of ``python -m monai.bundle ckpt_export`` for every method's network and
bundle: the TorchScript file reproduces the eager network, whatever subset of sequences is present."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from lckd_med.demo import method_bundles
from lckd_med.engines.checkpoint import load_checkpoint, save_checkpoint
from lckd_med.engines.export import ExportableSegmenter
from lckd_med.methods import METHODS
from lckd_med.networks import LCKDNet
from lckd_med.networks.outputs import output_kind, region_probabilities
from tests.testkit import checkpoint_payload, tiny_method_network, tiny_size

REPO = Path(__file__).resolve().parents[2]
#: one registered method per network class (the tiny networks are built the way the registry's tests build them)
BY_NETWORK = {cls.network_class.__name__: name for name, cls in reversed(METHODS.items())}


def _tiny(method: str) -> torch.nn.Module:
    return tiny_method_network(method)


def _window(method: str) -> tuple[int, int, int] | None:
    """The fixed window of the method's tiny network (mmFormer's position embeddings), else None."""
    return (tiny_size(method),) * 3 if method == "mmformer" else None


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(shape=(2, 4, 16, 32, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch whose samples miss different sequences (all-zero channels), and its availability mask."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(shape, generator=g) + 0.1
    mask = torch.ones(shape[0], 4, dtype=torch.bool)
    mask[0, 1] = False  # flair, t1ce, t2
    mask[1, [0, 1, 3]] = False  # t1ce only
    return x * mask[:, :, None, None, None], mask


def assert_same_export(exported: torch.Tensor, eager: torch.Tensor, net: torch.nn.Module) -> None:
    """The export's region logits equal the network's output: its logits, or for a softmax network (RFNet, mmFormer)
    its region probabilities (compared as probabilities: the logit of WT = 1 - p(background) near 1 magnifies float
    round-off)."""
    kind = output_kind(net)
    if kind == "regions":
        torch.testing.assert_close(exported, eager, rtol=1e-4, atol=1e-4)
    else:
        want = region_probabilities(eager, kind, dim=1)
        torch.testing.assert_close(torch.sigmoid(exported), want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", sorted(BY_NETWORK))
def test_wrapper_equals_network_and_trace_generalises(name):
    torch.manual_seed(0)
    net = _tiny(BY_NETWORK[name]).eval()
    wrapper = ExportableSegmenter(net).eval()
    window = _window(BY_NETWORK[name])
    with torch.no_grad():
        # traced at another size (a fixed window: the same) and batch
        traced = torch.jit.trace(wrapper, torch.rand(1, 4, *(window or (16, 16, 16))))
        x, mask = inputs((2, 4, *window) if window else (2, 4, 16, 32, 16))
        eager = net(x, mask)
        assert_same_export(wrapper(x), eager, net)
        assert_same_export(traced(x), eager, net)
    assert wrapper.state_dict().keys() == net.state_dict().keys()


def test_wrapper_refuses_a_plain_module():
    with pytest.raises(TypeError, match="encode"):
        ExportableSegmenter(torch.nn.Conv3d(4, 3, 1))


def test_wrapper_load_state_dict_says_what_to_fix():
    wrapper = ExportableSegmenter(LCKDNet(filters=(4, 8, 16)))
    with pytest.raises(RuntimeError, match="must name the same checkpoint"):
        wrapper.load_state_dict(LCKDNet(filters=(4, 8)).state_dict())


def readme_command(bundle: str, start: str) -> list[str]:
    """The command of ``bundles/<bundle>/README.md`` that begins with ``start``, as argv (continuation lines
    joined)."""
    lines = (REPO / "bundles" / bundle / "README.md").read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    text = ""
    for line in lines[first:]:
        text += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            break
    return shlex.split(text)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", method_bundles())
def test_bundle_ckpt_export_reproduces_eager_output(bundle, tmp_path):
    name = METHODS[bundle].network_class.__name__
    torch.manual_seed(1)
    net = tiny_method_network(bundle, seed=1).eval()
    models = tmp_path / "models"
    save_checkpoint(models / "model.pt", checkpoint_payload(net))
    assert load_checkpoint(models / "model.pt")["network"]["name"] == name
    ts = models / "model.ts"
    # the command documented in bundles/<bundle>/README.md, exactly as written there, with only its folder of
    # models pointing at this test's (both export with LCKD's inference.json, which rebuilds the network the
    # --ckpt_file checkpoint describes; no --ckpt_dir needed)
    documented = readme_command(bundle, "python -m monai.bundle ckpt_export")
    assert "--ckpt_dir" not in documented
    cmd = [
        sys.executable if a == "python" else a.replace(f"bundles/{bundle}/runs/models", str(models)) for a in documented
    ]
    window = _window(bundle)
    if window:  # mmFormer: the documented --input_shape is the published window; the tiny network's is smaller
        assert "[1,4,128,128,128]" in cmd
        cmd = [a.replace("[1,4,128,128,128]", f"[1,4,{','.join(map(str, window))}]") for a in cmd]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "TracerWarning" not in done.stderr
    loaded = torch.jit.load(str(ts))
    x, mask = inputs((2, 4, *window) if window else (2, 4, 16, 32, 16))
    with torch.no_grad():
        assert_same_export(loaded(x), net(x, mask), net)
    with zipfile.ZipFile(ts) as z:
        names = {Path(n).name for n in z.namelist()}
        meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("extra/metadata.json"))))
    assert {"metadata.json", "inference.json"} <= names
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 4


def test_a_softmax_network_exports_region_logits():
    """RFNet (output kind ``"classes"``) through the wrapper: ``(B, 3, ...)`` logits whose sigmoid is its region
    probabilities (ET, TC, WT from the softmax), the documented output of every export."""
    from lckd_med.networks.outputs import region_probabilities
    from tests.testkit import tiny_rfnet

    net = tiny_rfnet(seed=2).eval()
    x = torch.randn(1, 4, 16, 16, 16)
    x[:, 1] = 0  # T1 missing
    with torch.no_grad():
        out = ExportableSegmenter(net)(x)
        want = region_probabilities(net(x, torch.tensor([[True, False, True, True]])), "classes", dim=1)
    assert out.shape == (1, 3, 16, 16, 16)
    torch.testing.assert_close(torch.sigmoid(out), want, rtol=0, atol=1e-5)
