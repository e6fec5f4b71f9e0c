"""Checkpoints whose content is broken are refused with the file and the tensor or metadata key named: a weights hash
written with every checkpoint and safetensors export and verified on load (a bit flip inside a tensor, which torch's
zip reader does not notice), non-finite and absurdly large weights, invalid safetensors metadata, and an imported
inference checkpoint used to resume training."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lckd_med.engines.checkpoint import MAX_ABS_WEIGHT, load_checkpoint, save_checkpoint, weights_hash
from lckd_med.engines.safetensors_io import export_safetensors, import_safetensors, read_safetensors
from tests.testkit import checkpoint_payload, save_tiny_checkpoint, tiny_lckd_net


def _flip_a_bit_inside_a_tensor(path, tensor: torch.Tensor) -> None:
    raw = bytearray(path.read_bytes())
    data = tensor.contiguous().numpy().tobytes()
    at = raw.find(data)
    assert at >= 0, "the tensor's bytes are stored verbatim in the zip"
    raw[at + len(data) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


def test_a_bit_flip_inside_a_tensor_is_caught(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "model.pt")
    ckpt = load_checkpoint(path)
    assert ckpt["weights_sha256"] == weights_hash(ckpt["model"])
    name = max(ckpt["model"], key=lambda k: ckpt["model"][k].numel())
    _flip_a_bit_inside_a_tensor(path, ckpt["model"][name])
    torch.load(path, weights_only=True)  # torch itself loads the damaged file without a word
    with pytest.raises(ValueError, match="differ from the content hash recorded when the file was written"):
        load_checkpoint(path)


def test_a_checkpoint_written_before_hashes_existed_still_loads(tmp_path):
    path = tmp_path / "old.pt"
    payload = checkpoint_payload(tiny_lckd_net())
    torch.save(payload, path)  # no weights_sha256
    assert "weights_sha256" not in load_checkpoint(path)


@pytest.mark.parametrize(
    ("value", "match"),
    [(float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (MAX_ABS_WEIGHT * 10, "beyond")],
    ids=["nan", "inf", "huge"],
)
def test_non_finite_or_absurd_weights_are_refused_naming_the_tensor(tmp_path, value, match):
    net = tiny_lckd_net()
    state = net.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone()
    state[name].view(-1)[0] = value
    path = save_checkpoint(tmp_path / "model.pt", {**checkpoint_payload(net), "model": state})
    with pytest.raises(ValueError, match=match) as info:
        load_checkpoint(path)
    assert name in str(info.value) and str(path) in str(info.value)


def test_a_folder_given_as_the_checkpoint_says_so(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give the checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.fixture
def export(tmp_path):
    return export_safetensors(
        save_tiny_checkpoint(
            tmp_path / "model.pt", method="lckd", method_state={"teachers": ["t1ce"], "history": []}, iteration=5
        )
    )


def _rewrite(path, meta_changes: dict, drop_hash: bool = False, tensors_change=None) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    if drop_hash:
        meta.pop("weights_sha256")
    if tensors_change is not None:
        tensors_change(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_safetensors_exports_carry_and_verify_the_weights_hash(export, tmp_path):
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert read_safetensors(export)["model"].keys() == ckpt["model"].keys()
    with safe_open(str(export), framework="pt") as f:
        assert f.metadata()["weights_sha256"] == ckpt["weights_sha256"]

    def flip(tensors):
        name = next(iter(tensors))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] += 1e-3

    _rewrite(export, {}, tensors_change=flip)
    with pytest.raises(ValueError, match="differ from the content hash"):
        import_safetensors(export, tmp_path / "back.pt")
    assert not (tmp_path / "back.pt").exists()


BAD_METADATA = {
    "network_not_json": ({"network": "{name"}, "metadata 'network' is not valid JSON"),
    "network_not_a_dict": ({"network": json.dumps(["LCKDNet"])}, "metadata 'network' must be"),
    "network_unknown": ({"network": json.dumps({"name": "UNet", "hparams": {}})}, "unknown network 'UNet'"),
    "network_hparams": ({"network": json.dumps({"name": "LCKDNet", "hparams": []})}, "hparams that are not"),
    "network_misfit": (
        {"network": json.dumps({"name": "LCKDNet", "hparams": {"filters": [8, 16, 32]}})},
        "metadata 'network' does not fit the weights",
    ),
    "regions": ({"regions": json.dumps(["WT", "TC", "ET"])}, "metadata 'regions' must be"),
    "modalities": ({"modalities": json.dumps("flair")}, "metadata 'modalities' must be a list"),
    "label_convention": ({"label_convention": "brats1999"}, "metadata 'label_convention' is invalid"),
    "method": ({"method": json.dumps("unet")}, "metadata 'method' names an unknown method 'unet'"),
    "method_state": ({"method_state": json.dumps(["pet"])}, "metadata 'method_state' must be a dictionary"),
    "iteration": ({"iteration": json.dumps("5")}, "metadata 'iteration' must be a whole number"),
    "subset_dice": ({"subset_dice": json.dumps({"t1": {"ET": 2.0}})}, "metadata 'subset_dice' entry 't1'"),
    "train_config": ({"train_config": json.dumps([1])}, "metadata 'train_config' must be a dictionary"),
}


@pytest.mark.parametrize("case", sorted(BAD_METADATA))
def test_invalid_metadata_is_refused_at_import_naming_the_file_and_key(export, tmp_path, case):
    changes, match = BAD_METADATA[case]
    _rewrite(export, changes, drop_hash=case == "network_misfit")
    with pytest.raises(ValueError) as info:
        import_safetensors(export, tmp_path / "back.pt")
    assert match in str(info.value) and str(export) in str(info.value)
    assert not (tmp_path / "back.pt").exists()
