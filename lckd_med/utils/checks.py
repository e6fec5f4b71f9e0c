"""Argument validators written once: constructors call these so every bad value gets the same clear message."""

from __future__ import annotations

__all__ = ["positive_int", "non_negative_int", "fraction"]


def positive_int(value: object, name: str) -> int:
    """``value`` when it is an int >= 1 (``bool`` is refused: ``True`` is not a count).

    Raises:
        ValueError: naming the argument and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(value: object, name: str) -> int:
    """``value`` when it is an int >= 0 (``bool`` refused).

    Raises:
        ValueError: naming the argument and the value given.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def fraction(value: object, name: str, low_open: bool = False, high_open: bool = True) -> float:
    """``value`` as a float in the unit interval: ``[0, 1)`` by default; ``low_open``/``high_open`` exclude an end.

    Raises:
        ValueError: naming the argument, the interval and the value given.
    """
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    v = float(value)
    if (v <= 0 if low_open else v < 0) or (v >= 1 if high_open else v > 1):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return v
