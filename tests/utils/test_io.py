from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from lckd_med.utils.io import atomic_path, save_label_map, save_nifti_atomic, write_text_atomic


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_atomic_creates_folder_and_leaves_no_temp(tmp_path):
    out = write_text_atomic(tmp_path / "a" / "b.csv", "x,y\n1,2\n")
    assert out.read_text() == "x,y\n1,2\n"
    assert _leftovers(out.parent) == []


def test_atomic_path_keeps_previous_file_on_error(tmp_path):
    target = tmp_path / "r.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("name, suffix", [("x.nii.gz", ".nii.gz"), ("x.png", ".png"), ("x", "")])
def test_atomic_path_keeps_suffix(tmp_path, name, suffix):
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.endswith(".tmp" + suffix)
        assert tmp.parent == tmp_path
        tmp.write_bytes(b"1")
    assert (tmp_path / name).read_bytes() == b"1"


def test_save_nifti_atomic_is_compressed(tmp_path):
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), np.eye(4))
    path = save_nifti_atomic(img, tmp_path / "c.nii.gz")
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    assert nib.load(path).shape == (3, 3, 3)


def test_save_label_map_copies_reference_grid(tmp_path):
    aff = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    ref = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), aff)
    ref.set_qform(aff, code=1)
    ref.set_sform(aff, code=1)
    labels = np.zeros((4, 5, 6), np.int64)
    labels[1, 2, 3] = 4
    out = nib.load(save_label_map(labels, ref, tmp_path / "p.nii.gz"))
    assert out.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(out.affine, aff)
    assert int(out.header["qform_code"]) == 1 and int(out.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(out.dataobj), labels)


def test_save_label_map_rejects_wrong_shape(tmp_path):
    ref = nib.Nifti1Image(np.ones((4, 5, 6), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="differs"):
        save_label_map(np.zeros((4, 5, 5)), ref, tmp_path / "p.nii.gz")
    assert not (tmp_path / "p.nii.gz").exists()
