"""ModalitySpec: validation, derived layout and subsets, JSON round trip; BRATS equals the BraTS constants."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lckd_med.constants import (
    FULL_SUBSET,
    MODALITIES,
    RELEASE_FILE_SUFFIXES,
    SINGLE_SUBSETS,
    SUBSET_NAMES,
    SUBSETS,
    file_suffixes,
    mask_to_subset,
    subset_to_mask,
)
from lckd_med.modalities import BRATS, ModalitySpec, spec_of

TOY = ModalitySpec(
    ["rgb", "depth", "ir"], [3, 1, 1], spatial_dims=2, file_suffixes={"v1": {"rgb": "c", "depth": "d", "ir": "i"}}
)


def test_brats_spec_equals_the_constants():
    assert BRATS.names == MODALITIES
    assert BRATS.channels == (1, 1, 1, 1) and BRATS.total_channels == 4 and BRATS.spatial_dims == 3
    assert BRATS.subsets == SUBSETS and BRATS.subset_names == SUBSET_NAMES
    assert BRATS.full_subset == FULL_SUBSET and BRATS.single_subsets == SINGLE_SUBSETS
    for edition in RELEASE_FILE_SUFFIXES:
        assert BRATS.suffixes(edition) == file_suffixes(edition)
    for name in SUBSET_NAMES:
        assert np.array_equal(BRATS.subset_to_mask(name), subset_to_mask(name))
        assert BRATS.mask_to_subset(subset_to_mask(name)) == mask_to_subset(subset_to_mask(name)) == name


def test_layout_of_a_multichannel_spec():
    assert TOY.num_modalities == 3 and TOY.total_channels == 5
    assert TOY.channel_slices == (slice(0, 3), slice(3, 4), slice(4, 5))
    assert TOY.channel_index == (0, 0, 0, 1, 2)
    assert TOY.subset_names == ("rgb", "depth", "ir", "rgb+depth", "rgb+ir", "depth+ir", "rgb+depth+ir")
    assert TOY.subset_name(["ir", "rgb"]) == "rgb+ir" and TOY.parse_subset("IR+rgb") == ("rgb", "ir")
    assert TOY.subset_to_mask("depth+ir").tolist() == [False, True, True]
    assert TOY.mask_to_subset([True, False, True]) == "rgb+ir"
    assert TOY.suffixes("v1") == {"rgb": "c", "depth": "d", "ir": "i"} and TOY.editions == ("v1",)


@pytest.mark.parametrize("spec", [BRATS, TOY], ids=["brats", "toy"])
def test_json_round_trip(spec):
    again = ModalitySpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and hash(again) == hash(spec) and again.name == spec.name
    assert spec_of(spec.to_dict()) == spec and spec_of(spec) is spec and spec_of(None) is BRATS


def test_differences_name_every_field():
    assert BRATS.differences(BRATS) == []
    diff = BRATS.differences(TOY)
    assert [d.split(":")[0] for d in diff] == ["names", "channels", "spatial_dims", "file_suffixes"]
    with pytest.raises(
        ValueError, match=r"checkpoint differs from the data: names: .*channels: .*spatial_dims: 3 vs 2"
    ):
        BRATS.check_same(TOY, "checkpoint", "the data")
    TOY.check_same(ModalitySpec.from_dict({**TOY.to_dict(), "name": "other label"}), "a", "b")  # name not compared


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"names": []}, ValueError, "non-empty sequence"),
        ({"names": "rgb"}, ValueError, "non-empty sequence"),
        ({"names": ["rgb", "RGB"]}, ValueError, "lower-case"),
        ({"names": ["a+b"]}, ValueError, "lower-case"),
        ({"names": ["rgb", "rgb"]}, ValueError, "distinct"),
        ({"names": ["rgb", "d"], "channels": [3]}, ValueError, "1 entries for 2 modalities"),
        ({"names": ["rgb"], "channels": [0]}, ValueError, "positive ints"),
        ({"names": ["rgb"], "channels": [True]}, ValueError, "positive ints"),
        ({"names": ["rgb"], "spatial_dims": 4}, ValueError, "spatial_dims"),
        ({"names": ["rgb"], "spatial_dims": True}, ValueError, "spatial_dims"),
        ({"names": ["rgb"], "name": ""}, ValueError, "name"),
        ({"names": ["rgb", "d"], "file_suffixes": {"v1": {"rgb": "c"}}}, ValueError, "exactly the modalities"),
        ({"names": ["rgb", "d"], "file_suffixes": {"v1": {"rgb": "x", "d": "x"}}}, ValueError, "repeats"),
        ({"names": ["rgb"], "file_suffixes": [("v1", ["a"]), ("v1", ["b"])]}, ValueError, "edition twice"),
        ({"names": ["rgb"], "file_suffixes": [("v1",)]}, ValueError, "edition, suffixes"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModalitySpec(**kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: TOY.subset_name([]), "at least one"),
        (lambda: TOY.subset_name(["flair"]), "unknown modality"),
        (lambda: TOY.subset_name(["ir", "ir"]), "repeated"),
        (lambda: TOY.parse_subset(""), "non-empty"),
        (lambda: TOY.mask_to_subset([True, False]), "3 entries"),
        (lambda: TOY.suffixes("legacy"), "no file suffixes"),
        (lambda: ModalitySpec.from_dict({"names": ["a"], "colour": 1}), "unknown modality spec keys"),
        (lambda: ModalitySpec.from_dict({"channels": [1]}), "needs 'names'"),
    ],
)
def test_bad_queries(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_from_dict_refuses_a_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        ModalitySpec.from_dict(["rgb"])
