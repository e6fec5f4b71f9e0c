"""Tests of lckd_med.engines.safetensors_io: weights and description survive export/import; foreign files refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lckd_med.constants import MODALITIES, REGIONS
from lckd_med.engines.checkpoint import CHECKPOINT_FORMAT, build_network, load_checkpoint, save_checkpoint
from lckd_med.engines.safetensors_io import export_safetensors, import_safetensors, read_safetensors
from lckd_med.networks import LCKDNet, OMDNet


def _ckpt(path: Path, net: torch.nn.Module, name: str) -> Path:
    return save_checkpoint(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "network": {"name": name, "hparams": net.hparams},
            "model": net.state_dict(),
            "modalities": list(MODALITIES),
            "regions": list(REGIONS),
            "label_convention": "brats2023",
            "method_state": {"teachers": ["t1ce", "flair"], "history": []},
            "iteration": 7,
        },
    )


@pytest.mark.parametrize(
    "name, make", [("LCKDNet", lambda: LCKDNet(filters=(4, 8))), ("OMDNet", lambda: OMDNet(filters=(4, 8)))]
)
def test_round_trip(tmp_path, name, make):
    torch.manual_seed(1)
    src = _ckpt(tmp_path / "model.pt", make(), name)
    st = export_safetensors(src)
    assert st == tmp_path / "model.safetensors" and st.is_file()
    assert b"pickle" not in st.read_bytes()[:64]
    got = read_safetensors(st)
    assert (
        got["method_state"]["teachers"] == ["t1ce", "flair"]
        and got["iteration"] == 7
        and got["label_convention"] == "brats2023"
    )
    back = load_checkpoint(import_safetensors(st, tmp_path / "back.pt"))
    x = torch.randn(1, 4, 8, 8, 8)
    with torch.no_grad():
        a, b = build_network(load_checkpoint(src)).eval()(x), build_network(back).eval()(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_foreign_safetensors_is_refused(tmp_path):
    p = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not an lckd_med safetensors export"):
        read_safetensors(p)


def test_not_safetensors_is_refused(tmp_path):
    p = tmp_path / "junk.safetensors"
    p.write_bytes(b"\x00" * 40)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        read_safetensors(p)
    with pytest.raises(FileNotFoundError):
        read_safetensors(tmp_path / "none.safetensors")


def test_mismatched_weights_are_refused(tmp_path):
    torch.manual_seed(1)
    st = export_safetensors(_ckpt(tmp_path / "m.pt", LCKDNet(filters=(4, 8)), "LCKDNet"))
    from safetensors import safe_open

    with safe_open(str(st), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(st), metadata=meta)
    with pytest.raises(ValueError, match="differ from the content hash"):
        import_safetensors(st, tmp_path / "x.pt")
    meta.pop("weights_sha256")  # a file without the hash: the network rebuilt from the metadata refuses the weights
    save_file(tensors, str(st), metadata=meta)
    with pytest.raises(ValueError, match="'network' does not fit"):
        import_safetensors(st, tmp_path / "x.pt")


def test_export_output_suffix(tmp_path):
    src = _ckpt(tmp_path / "m.pt", LCKDNet(filters=(4, 8)), "LCKDNet")
    with pytest.raises(ValueError, match=".safetensors"):
        export_safetensors(src, tmp_path / "m.bin")
