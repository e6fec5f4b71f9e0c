from __future__ import annotations

import numpy as np
import pytest

from lckd_med import constants as C


def test_orders():
    assert C.MODALITIES == ("flair", "t1", "t1ce", "t2")
    assert C.REGIONS == ("ET", "TC", "WT")


def test_subsets_are_the_15_in_canonical_order():
    assert len(C.SUBSET_NAMES) == 15 == len(set(C.SUBSET_NAMES))
    assert C.SUBSET_NAMES[:4] == C.MODALITIES
    assert C.SUBSET_NAMES[-1] == C.FULL_SUBSET == "flair+t1+t1ce+t2"
    sizes = [len(s.split("+")) for s in C.SUBSET_NAMES]
    assert sizes == sorted(sizes)
    assert "t1ce+t2" in C.SUBSET_NAMES


@pytest.mark.parametrize(
    "given, expected",
    [(["t2", "t1ce"], "t1ce+t2"), (["flair"], "flair"), (["t2", "t1", "t1ce", "flair"], "flair+t1+t1ce+t2")],
)
def test_subset_name_canonicalises(given, expected):
    assert C.subset_name(given) == expected
    assert "+".join(C.parse_subset("+".join(given))) == expected


@pytest.mark.parametrize("bad", [[], ["t1", "t1"], ["T1c"], ["dwi"]])
def test_subset_name_rejects(bad):
    with pytest.raises(ValueError):
        C.subset_name(bad)


@pytest.mark.parametrize("bad", ["", "  ", None, "t1++t2"])
def test_parse_subset_rejects(bad):
    with pytest.raises(ValueError):
        C.parse_subset(bad)


@pytest.mark.parametrize("name", C.SUBSET_NAMES)
def test_mask_round_trip(name):
    mask = C.subset_to_mask(name)
    assert mask.dtype == bool and mask.shape == (4,)
    assert C.mask_to_subset(mask) == name


@pytest.mark.parametrize("bad", [[True, False, True], [False] * 4])
def test_mask_to_subset_rejects(bad):
    with pytest.raises(ValueError):
        C.mask_to_subset(bad)


@pytest.mark.parametrize(
    "release, et", [(2017, 4), (2018, 4), ("2021", 4), (2022, 4), (2023, 3), (2024, 3), ("brats2023", 3)]
)
def test_label_convention(release, et):
    conv = C.label_convention(release)
    assert conv.et == et
    assert conv.region_labels["ET"] == (et,)
    assert set(conv.region_labels["WT"]) == {1, 2, et}


@pytest.mark.parametrize("bad", ["brats", "20x", 1999, 3000])
def test_label_convention_rejects(bad):
    with pytest.raises(ValueError):
        C.label_convention(bad)


@pytest.mark.parametrize("conv", [C.BRATS_LEGACY, C.BRATS_2023])
def test_regions_to_labels_nests(conv):
    wt = np.zeros((4, 4, 4), bool)
    tc = np.zeros_like(wt)
    et = np.zeros_like(wt)
    wt[:3] = True
    tc[:2] = True
    et[:1] = True
    labels = conv.regions_to_labels(et, tc, wt)
    assert labels.dtype == np.uint8
    assert (labels[0] == conv.et).all() and (labels[1] == conv.ncr).all() and (labels[2] == conv.ed).all()
    assert (labels[3] == 0).all()


@pytest.mark.parametrize("release, suffix", [(2018, "t1ce"), (2021, "t1ce"), (2023, "t1c"), ("legacy", "t1ce")])
def test_file_suffixes(release, suffix):
    assert C.file_suffixes(release)["t1ce"] == suffix


def test_brats_affine():
    np.testing.assert_array_equal(C.brats_affine(1.0), C.BRATS_AFFINE_1MM)
    aff2 = C.brats_affine(2.0)
    assert aff2[0, 0] == -2 and aff2[1, 1] == -2 and aff2[2, 2] == 2
    with pytest.raises(ValueError):
        C.brats_affine(0)


def test_one_affine_tolerance():
    from lckd_med.constants import AFFINE_ATOL_MM
    from lckd_med.data import validation
    from lckd_med.inference import geometry
    from lckd_med.reports import folder_scores

    assert validation.AFFINE_ATOL_MM is folder_scores.AFFINE_ATOL_MM is geometry.AFFINE_ATOL is AFFINE_ATOL_MM
