"""Method registry: name -> method class (what ``lckd_med.compare`` and the bundles select by name)."""

from __future__ import annotations

import inspect
from typing import Any

from lckd_med.methods.base import TrainingMethod
from lckd_med.methods.baselines import FullModalityMethod, NoDistillationMethod
from lckd_med.methods.lckd import LCKDMethod
from lckd_med.methods.omd import OMDMethod

__all__ = ["METHODS", "get_method", "method_parameters", "build_method"]

#: Registered training methods (``network_family`` of each says which network it trains).
METHODS: dict[str, type[TrainingMethod]] = {
    "lckd": LCKDMethod,
    "omd": OMDMethod,
    "lckd_nokd": NoDistillationMethod,
    "all4": FullModalityMethod,
}


def get_method(name: str) -> type[TrainingMethod]:
    """The method class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


def method_parameters(name: str) -> frozenset[str]:
    """Names of the settings the constructor of method ``name`` takes.

    Raises:
        ValueError: unknown name.
    """
    return frozenset(inspect.signature(get_method(name).__init__).parameters) - {"self"}


def build_method(name: str, **settings: Any) -> TrainingMethod:
    """The method ``name`` built from the settings its constructor takes; the others are ignored.

    A bundle passes every setting of its method family (e.g. LCKD's ``teacher_state``, ``kd_loss``, ``kd_weight``,
    ``kd_levels``) so that switching ``method_name`` to a baseline that needs none of them is a one-key change.

    Raises:
        ValueError: unknown name.
    """
    accepted = method_parameters(name)
    return get_method(name)(**{k: v for k, v in settings.items() if k in accepted})
