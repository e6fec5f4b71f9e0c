from __future__ import annotations

import pytest

from lckd_med.data import layouts, naming
from lckd_med.data.naming import is_nifti, match_sequence_file, nifti_stem
from lckd_med.inference import batch


@pytest.mark.parametrize(
    ("name", "stem"),
    [("a_t1.nii.gz", "a_t1"), ("A_T1.NII.GZ", "A_T1"), ("b.nii", "b"), ("c.nii.gz.bak", None), ("d.txt", None)],
)
def test_nifti_stem(name, stem):
    assert nifti_stem(name) == stem
    assert is_nifti(name) is (stem is not None)


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("X_flair.nii.gz", "flair"),
        ("X-t2f.nii.gz", "flair"),
        ("X_t1ce.nii", "t1ce"),
        ("X-t1c.nii.gz", "t1ce"),
        ("x-T1N.nii.gz", "t1"),
        ("X_t2.nii.gz", "t2"),
        ("X-t2w.nii.gz", "t2"),
        ("X_seg.nii.gz", None),
        ("X-seg.nii.gz", None),
        (".X_t1.nii.gz", None),
        ("X_t1.txt", None),
    ],
)
def test_match_sequence_file(name, modality):
    assert match_sequence_file(name) == modality


def test_one_definition():
    assert layouts.NIFTI_EXTENSIONS is batch.NIFTI_EXTENSIONS is naming.NIFTI_EXTENSIONS
    assert batch.match_sequence_file is naming.match_sequence_file
