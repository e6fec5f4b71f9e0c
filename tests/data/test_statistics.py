"""lckd_med.data.statistics: region fractions, contrasts and cases without ET, on hand-made label maps."""

from __future__ import annotations

import numpy as np
import pytest

from lckd_med.data.statistics import case_statistics, summarize_statistics
from lckd_med.data.synthetic import generate_case


def _case(et: int, ncr: int, ed: int, label_et: int = 4) -> tuple[np.ndarray, dict, np.ndarray]:
    """A 10x10x10 brain (all voxels) whose first voxels are ET, then NCR, then ED; T1ce 3x brighter in ET."""
    seg = np.zeros(1000, np.uint8)
    seg[:et] = label_et
    seg[et : et + ncr] = 1
    seg[et + ncr : et + ncr + ed] = 2
    t1ce = np.full(1000, 100.0)
    t1ce[:et] = 300.0
    flair = np.full(1000, 100.0)
    flair[: et + ncr + ed] = 200.0
    shape = (10, 10, 10)
    return seg.reshape(shape), {"t1ce": t1ce.reshape(shape), "flair": flair.reshape(shape)}, np.ones(shape, bool)


@pytest.mark.parametrize(
    ("et", "ncr", "ed", "release", "tc_wt", "et_wt", "has_et"),
    [
        (20, 20, 60, 2018, 0.4, 0.2, True),
        (0, 30, 70, 2018, 0.3, 0.0, False),
        (10, 0, 90, 2023, 0.1, 0.1, True),  # ET = 3 from 2023
    ],
)
def test_fractions_and_contrast(et, ncr, ed, release, tc_wt, et_wt, has_et):
    seg, images, brain = _case(et, ncr, ed, label_et=4 if release < 2023 else 3)
    stats = case_statistics(seg, images, brain, grade="HGG", release=release)
    assert stats["tc_wt"] == pytest.approx(tc_wt) and stats["et_wt"] == pytest.approx(et_wt)
    assert stats["has_et"] is has_et and stats["wt_voxels"] == et + ncr + ed
    assert stats["contrast"]["WT"]["flair"] == pytest.approx(2.0)  # against the brain outside WT
    if has_et:
        assert stats["contrast"]["ET"]["t1ce"] == pytest.approx(3.0)
    else:
        assert np.isnan(stats["contrast"]["ET"]["t1ce"])


def test_empty_tumour_is_nan_not_an_error():
    stats = case_statistics(np.zeros((4, 4, 4), np.uint8))
    assert np.isnan(stats["tc_wt"]) and not stats["has_et"] and stats["contrast"]["WT"] == {}


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.zeros((4, 4)),), "3D"),
        ((np.zeros((4, 4, 4)), {"t1": np.zeros((4, 4, 3))}), "shape"),
        ((np.zeros((4, 4, 4)), None, np.ones((4, 4, 3), bool)), "shape"),
    ],
)
def test_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        case_statistics(*args)


def test_summary_groups_by_grade_and_counts_cases_without_et():
    cases = [
        case_statistics(*_case(20, 20, 60), grade="HGG"),
        case_statistics(*_case(0, 30, 70), grade="LGG"),
        case_statistics(*_case(10, 10, 80), grade="LGG"),
    ]
    summary = summarize_statistics(cases)
    assert {g: s["cases"] for g, s in summary.items()} == {"all": 3, "HGG": 1, "LGG": 2}
    assert summary["LGG"]["no_et_share"] == 0.5 and summary["HGG"]["no_et_share"] == 0.0
    assert summary["all"]["tc_wt_mean"] == pytest.approx(0.3)
    assert summary["LGG"]["contrast"]["ET"]["t1ce"] == pytest.approx(3.0)  # the case without ET is left out
    with pytest.raises(ValueError, match="at least one"):
        summarize_statistics([])


def test_synthetic_hgg_lesions_have_brats_like_proportions():
    """The generator's HGG core and enhancing parts are a realistic share of the whole tumour (docs/data.md), and
    each region is brightest on the sequence that carries it."""
    cases = []
    for seed in range(4):
        c = generate_case(seed, spacing=3.0, grade="HGG")
        cases.append(case_statistics(c["seg"], {m: c[m] for m in ("flair", "t1", "t1ce", "t2")}, c["brain"], "HGG"))
    s = summarize_statistics(cases)["HGG"]
    assert 0.2 < s["tc_wt_mean"] < 0.5 and 0.12 < s["et_wt_mean"] < 0.35
    assert max(s["contrast"]["ET"], key=s["contrast"]["ET"].get) == "t1ce"
    assert s["contrast"]["WT"]["flair"] > s["contrast"]["WT"]["t1ce"]
