from __future__ import annotations

import pytest

from lckd_med.utils.checks import fraction, non_negative_int, positive_int


@pytest.mark.parametrize(("fn", "value"), [(positive_int, 1), (positive_int, 7), (non_negative_int, 0)])
def test_int_accepted(fn, value):
    assert fn(value, "n") == value


@pytest.mark.parametrize(
    ("fn", "value"),
    [(positive_int, 0), (positive_int, -1), (positive_int, True), (positive_int, 2.0), (positive_int, "3")]
    + [(non_negative_int, -1), (non_negative_int, False), (non_negative_int, 1.5)],
)
def test_int_refused_names_argument(fn, value):
    with pytest.raises(ValueError, match=f"n must be .*got {value!r}"):
        fn(value, "n")


@pytest.mark.parametrize(
    ("value", "kwargs", "ok"),
    [
        (0, {}, True),
        (0.5, {}, True),
        (1, {}, False),
        (0, {"low_open": True}, False),
        (1, {"high_open": False}, True),
        (True, {}, False),
        ("0.5", {}, False),
    ],
)
def test_fraction(value, kwargs, ok):
    if ok:
        assert fraction(value, "x", **kwargs) == float(value)
    else:
        with pytest.raises(ValueError, match="x must be a number in"):
            fraction(value, "x", **kwargs)
