"""Method registry: name -> method class (what ``lckd_med.compare`` and the bundles select by name)."""

from __future__ import annotations

from lckd_med.methods.base import TrainingMethod
from lckd_med.methods.baselines import FullModalityMethod, NoDistillationMethod
from lckd_med.methods.lckd import LCKDMethod
from lckd_med.methods.omd import OMDMethod

__all__ = ["METHODS", "get_method"]

#: Registered training methods; the name is also the key of :data:`lckd_med.networks.presets.METHODS` family
#: (``network_name`` says which network the method trains).
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
