"""``lckd-med import-checkpoint``: released RFNet / mmFormer checkpoints -> this project's checkpoint, then predict,
evaluate-folder and the 15-subset evaluation on it.

The released files cannot be downloaded here. The checks use files in the released layout built two ways: from the
committed manifests of the published key names and shapes with seeded weights (the full published networks, imported
without running them at full size), and from small networks saved in the published layout
(:func:`tests.testkit.published_rfnet_checkpoint`, :func:`tests.testkit.published_mmformer_checkpoint`), which run
on CPU in seconds. That the conversion reproduces the published model's outputs is pinned by
``tests/networks/test_rfnet_import.py`` and ``test_mmformer_import.py`` against fixtures made with the published code.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from lckd_med import cli
from lckd_med.constants import MODALITIES, SUBSET_NAMES
from lckd_med.data.synthetic import write_dataset
from lckd_med.engines.checkpoint import build_network, load_checkpoint
from lckd_med.engines.published_import import PUBLISHED_MODELS, published_checkpoint
from lckd_med.engines.workflow import prepare_datalist
from lckd_med.inference import Segmenter, SubsetEvaluator
from lckd_med.methods import METHODS
from lckd_med.networks import MMFormerNet, RFNet
from tests.testkit import (
    mri_like,
    published_mmformer_checkpoint,
    published_rfnet_checkpoint,
    save_tiny_checkpoint,
    tiny_mmformer,
    tiny_rfnet,
    write_nifti,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (24, 24, 16)
LPS = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, SHAPE[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1]])  # BraTS's orientation
TINY = {"rfnet": (tiny_rfnet, published_rfnet_checkpoint), "mmformer": (tiny_mmformer, published_mmformer_checkpoint)}


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    return lines[0]


def _case(folder: Path, seed: int = 0) -> dict[str, Path]:
    """One small skull-stripped-like case (zero background, a bright off-centre blob) stored LPS, as BraTS."""
    files = {}
    for i, m in enumerate(MODALITIES):
        data = np.zeros(SHAPE, np.float32)
        data[3:21, 2:22, 2:14] = mri_like((18, 20, 12), seed + i, 1.0, 3.0)
        data[8:14, 9:15, 5:10] *= 2.0 + i
        files[m] = write_nifti(folder / f"x_{m}.nii.gz", data, LPS)
    return files


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict[str, Path]:
    """Each tiny network saved in its published layout (wrapper, ``module.`` keys) and imported by the command."""
    root = tmp_path_factory.mktemp("published")
    out = {}
    for source, (make, save) in TINY.items():
        released = root / f"{source}_model_last.pth"
        torch.save(save(make(seed=3)), released)
        assert (
            cli.main(["import-checkpoint", "--from", source, str(released), "-o", str(root / source / "model.pt")]) == 0
        )
        out[source] = root / source / "model.pt"
        out[f"{source}_released"] = released
    return out


# ---------------------------------------------------------------------------------------------- conversion


@pytest.mark.parametrize("source", sorted(TINY))
@pytest.mark.parametrize(("prefix", "wrapper"), [("module.", True), ("", True), ("module.", False), ("", False)])
def test_every_saved_form_imports_to_the_same_network(source, prefix, wrapper):
    """The wrapper or a bare state dict, with or without ``module.``: the imported network's outputs equal the
    network the weights came from, for a subset with a missing sequence."""
    make, save = TINY[source]
    net = make(seed=1).eval()
    payload = published_checkpoint(save(net, prefix=prefix, wrapper=wrapper), source)
    rebuilt = build_network(payload, load_weights=True).eval()
    size = net.img_size if source == "mmformer" else (16, 16, 16)
    x, mask = torch.randn(1, 4, *size), torch.tensor([[True, False, True, True]])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x, mask), net(x, mask), rtol=0, atol=0)
    assert payload["published"]["epoch"] == (299 if wrapper else None)


def test_the_recorded_facts(imported):
    """What the checkpoint says the published code assumed, which inference applies."""
    for source, title in (("rfnet", "RFNet"), ("mmformer", "MMFormerNet")):
        ckpt = load_checkpoint(imported[source])
        assert ckpt["network"]["name"] == title and ckpt["modalities"] == list(MODALITIES)
        assert ckpt["method"] == source and ckpt["method"] in METHODS  # the registered method of the same name
        assert ckpt["train_config"]["intensity"] == "published" and ckpt["label_convention"] == "brats2018"
        window = [80, 80, 80] if source == "rfnet" else [32, 32, 32]  # mmFormer: its img_size (128 published)
        assert ckpt["inference"] == {
            "roi_size": window,
            "overlap": 0.5,
            "average": "probabilities",
            "mode": "constant",
            "decision": "argmax",
        }
        pub = ckpt["published"]
        assert pub["source"] == source and pub["modalities"] == ["flair", "t1ce", "t1", "t2"]
        assert pub["class_labels"] == [0, 1, 2, 4] and pub["file"] == f"{source}_model_last.pth"
        assert pub["commit"] == PUBLISHED_MODELS[source].recipe["source"]["commit"]
        assert ckpt["imported_from"] == str(imported[f"{source}_released"].resolve())
        seg = Segmenter.from_checkpoint(imported[source], device="cpu")
        assert (seg.output_kind, seg.decision, seg.overlap, seg.average, seg.intensity) == (
            "classes",
            "argmax",
            0.5,
            "probabilities",
            "published",
        )
        assert list(seg.roi_size) == window


def test_the_full_published_manifests_import(tmp_path):
    """A file with every key and shape of each released model (seeded weights) imports to the published networks;
    the RFNet one through the command (36 MB), the mmFormer one (147 MB) in memory."""
    from tests.networks.mmformer_fixture import published_state_dict
    from tests.networks.test_rfnet_import import published_checkpoint as published_rfnet

    released = tmp_path / "rfnet_brats2018_split1.pth"
    torch.save(published_rfnet(), released)
    assert cli.main(["import-checkpoint", "--from", "rfnet", str(released), "-o", str(tmp_path / "model.pt")]) == 0
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt["network"]["hparams"] == RFNet().hparams and ckpt["inference"]["roi_size"] == [80, 80, 80]
    payload = published_checkpoint({"epoch": 999, "state_dict": published_state_dict()}, "mmformer")
    assert payload["network"]["hparams"] == MMFormerNet().hparams and payload["inference"]["roi_size"] == [128] * 3
    assert sum(v.numel() for v in payload["model"].values()) == 36_654_416 - 4 * (128 * 512 + 128)  # unused convs


# ---------------------------------------------------------------------------------------------- through the tools


def test_predict_segments_a_case_as_the_published_pipeline(imported, tmp_path, capsys):
    """``lckd-med predict --ckpt imported.pt``: BraTS labels; with a window covering the case, the label map is the
    published pipeline done by hand: the arrays as stored (LPS), z-score over the brain mask on every voxel, the
    network's softmax, argmax, class 3 -> label 4."""
    files = _case(tmp_path / "in")
    args = ["predict", *[a for m in ("flair", "t1ce", "t2") for a in (f"--{m}", str(files[m]))]]
    out = tmp_path / "seg.nii.gz"
    assert cli.main([*args, "--ckpt", str(imported["rfnet"]), "--device", "cpu", "-o", str(out)]) == 0
    labels = np.asarray(nib.load(out).dataobj)
    assert labels.shape == SHAPE and set(np.unique(labels)) <= {0, 1, 2, 4}
    # by hand, one window = the whole case
    whole = tmp_path / "whole.nii.gz"
    assert cli.main([*args, "--ckpt", str(imported["rfnet"]), "--roi_size", *map(str, SHAPE), "-o", str(whole)]) == 0
    raw = np.stack(
        [
            nib.load(files[m]).get_fdata(dtype=np.float32) if m != "t1" else np.zeros(SHAPE, np.float32)
            for m in MODALITIES
        ]
    )
    brain = raw.sum(0) > 0
    norm = np.stack(
        [(x - x[brain].mean()) / x[brain].std() if m != "t1" else x for m, x in zip(MODALITIES, raw, strict=True)]
    )
    net = build_network(load_checkpoint(imported["rfnet"]), load_weights=True).eval()
    with torch.no_grad():
        probs = torch.softmax(net(torch.from_numpy(norm)[None], torch.tensor([[True, False, True, True]])), dim=1)
    want = np.asarray([0, 1, 2, 4])[probs[0].argmax(0).numpy()]
    np.testing.assert_array_equal(np.asarray(nib.load(whole).dataobj), want)
    assert len(np.unique(want)) > 1
    capsys.readouterr()


def test_predict_folder_evaluate_folder_and_the_15_subset_evaluation(imported, tmp_path, capsys):
    """Batch inference over a folder and evaluate-folder on its outputs (imported RFNet, its recorded 80^3 window);
    SubsetEvaluator, unchanged: the 15 subsets of the imported mmFormer, five of the RFNet."""
    write_dataset(tmp_path / "data", 6, seed=4, spacing=4.0, release=2018)
    datalist = Path(prepare_datalist(tmp_path / "data", tmp_path / "datalist.json"))
    case = json.loads(datalist.read_text())["testing"][0]
    folder = tmp_path / "cases" / case["case_id"]
    folder.mkdir(parents=True)
    for m in MODALITIES:
        (folder / Path(case[m]).name).symlink_to(case[m])
    preds = tmp_path / "preds"
    argv = ["predict", "-i", str(tmp_path / "cases"), "-o", str(preds), "--ckpt", str(imported["rfnet"])]
    assert cli.main([*argv, "--device", "cpu"]) == 0
    labels = np.asarray(nib.load(preds / f"{case['case_id']}.nii.gz").dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    labels_dir = Path(case["label"]).parent
    assert (
        cli.main(
            [
                "evaluate-folder",
                "--pred_dir",
                str(preds),
                "--labels",
                str(labels_dir),
                "-o",
                str(tmp_path / "scores"),
                "--no_progress",
            ]
        )
        == 0
    )
    assert (tmp_path / "scores" / "subset_summary.csv").is_file()
    # mmFormer all 15 subsets; RFNet (an 80^3 window, 9 s for 15 on CPU) the singles and all four
    for source, subsets in (("mmformer", SUBSET_NAMES), ("rfnet", [*MODALITIES, SUBSET_NAMES[-1]])):
        ckpt_dir = imported[source].parent
        df = SubsetEvaluator(
            ckpt_dir,
            datalist,
            tmp_path / f"eval_{source}",
            subsets=list(subsets),
            max_cases=1,
            device="cpu",
            amp=False,
            progress=False,
            num_workers=0,
        ).run()
        assert sorted(df["subset"].unique()) == sorted(subsets)
        assert len(df) == len(subsets) * 3 and df["dice"].between(0, 1).all()  # a row per subset and region
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------- refusals


def _not_a_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pth"
    path.write_text("not a torch file")
    return path


def _pickled(tmp_path: Path) -> Path:
    path = tmp_path / "pickled.pth"
    torch.save({"epoch": 1, "state_dict": {"x": torch.zeros(1)}, "optim_dict": Path("a")}, path)
    return path


def _lckd_checkpoint(tmp_path: Path) -> Path:
    return save_tiny_checkpoint(tmp_path / "lckd.pt")


def _other_kind(tmp_path: Path) -> Path:
    path = tmp_path / "mmformer.pth"
    torch.save(published_mmformer_checkpoint(tiny_mmformer()), path)
    return path


def _five_classes(tmp_path: Path) -> Path:
    path = tmp_path / "brats2015.pth"
    torch.save(
        published_rfnet_checkpoint(RFNet(filters=(4, 8, 8, 8), fusion_hidden=4, region_hidden=4, out_channels=5)), path
    )
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda t: t / "absent.pth", "no file at"),
        (lambda t: t, "is a folder; give the published RFNet checkpoint file"),
        (_not_a_checkpoint, "not a readable published RFNet checkpoint"),
        (_pickled, "pickled Python objects, which are refused for safety"),
        (_lckd_checkpoint, "is already an lckd_med checkpoint"),
        (_other_kind, "published RFNet checkpoint: unexpected key 'flair_pos'"),
        (_five_classes, "has 5 classes; only the four BraTS 2018-2021 classes"),
    ],
    ids=["missing", "folder", "not_torch", "pickled", "lckd_med", "mmformer_file", "five_classes"],
)
def test_a_file_that_is_not_a_released_checkpoint_is_one_line(tmp_path, capsys, make, match):
    src = make(tmp_path)
    out = tmp_path / "out" / "model.pt"
    assert cli.main(["import-checkpoint", "--from", "rfnet", str(src), "-o", str(out)]) == 1
    assert match in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_an_rfnet_file_given_as_mmformer_names_the_key(imported, tmp_path, capsys):
    argv = ["import-checkpoint", "--from", "mmformer", str(imported["rfnet_released"]), "-o", str(tmp_path / "m.pt")]
    assert cli.main(argv) == 1
    assert "unexpected key 'module.flair_encoder.e1_c1.conv.weight'" in _one_error_line(capsys.readouterr().err)
