"""The one method registry: name -> method class. **Adding a method is one module in this package and one line in
:data:`METHODS`** (the guide, from HeMIS's own diff, is ``docs/methods.md``).

Everything that runs methods looks them up here: the bundles (``method_name`` picks the method and, through its
:meth:`~lckd_med.methods.base.TrainingMethod.build_network`, the network), the trainer, the checkpoint handler (it
records the method's name and saves its :meth:`~lckd_med.methods.base.TrainingMethod.state_dict`), checkpoint
loading (:func:`network_class` rebuilds the network a checkpoint names), ``lckd_med.compare``, the benchmark
suite, the demo and the tests.

Network classes a checkpoint may name: every method's ``network_class`` and ``other_networks`` (so a method defining
its own network in its module, as HeMIS, needs nothing more) and the classes registered in
:data:`lckd_med.networks.NETWORKS` (the
networks defined in ``lckd_med/networks/``, one line each there). Both live below the engines, so inference
rebuilds a network without the trainer.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from lckd_med.methods.base import TrainingMethod
from lckd_med.methods.baselines import FullModalityMethod, NoDistillationMethod
from lckd_med.methods.hemis import HeMISMethod
from lckd_med.methods.lckd import LCKDMethod
from lckd_med.methods.mmformer import MMFormerMethod
from lckd_med.methods.omd import OMDMethod
from lckd_med.methods.rfnet import RFNetMethod
from lckd_med.networks.registry import NETWORKS

__all__ = [
    "METHODS",
    "get_method",
    "method_name",
    "method_parameters",
    "build_method",
    "build_network",
    "network_classes",
    "network_class",
    "network_name",
]

#: Registered training methods, in the order tables and runs list them.
METHODS: Mapping[str, type[TrainingMethod]] = MappingProxyType(
    {
        "lckd": LCKDMethod,
        "lckd_nokd": NoDistillationMethod,
        "all4": FullModalityMethod,
        "omd": OMDMethod,
        "hemis": HeMISMethod,
        "rfnet": RFNetMethod,
        "mmformer": MMFormerMethod,
    }
)


def get_method(name: str) -> type[TrainingMethod]:
    """The method class registered as ``name``.

    Raises:
        ValueError: unknown name (the message lists the registered ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {list(METHODS)}")
    return METHODS[name]


def method_name(method: TrainingMethod | type[TrainingMethod]) -> str:
    """The registered name of a method (instance or class; its exact class, subclasses are other methods).

    Raises:
        ValueError: the method's class is not registered.
    """
    cls = method if isinstance(method, type) else type(method)
    for name, registered in METHODS.items():
        if registered is cls:
            return name
    raise ValueError(f"{cls.__name__} is not a registered method; registered: {list(METHODS)}")


def method_parameters(name: str) -> frozenset[str]:
    """Names of the settings the constructor of method ``name`` takes.

    Raises:
        ValueError: unknown name.
    """
    return frozenset(inspect.signature(get_method(name).__init__).parameters) - {"self"}


def build_method(name: str, **settings: Any) -> TrainingMethod:
    """The method ``name`` built from the settings its constructor takes; the others are ignored.

    A bundle passes every setting it has (e.g. LCKD's ``teacher_state``, ``kd_loss``, ``kd_weight``, ``kd_levels``)
    so that switching ``method_name`` to a method that needs none of them is a one-key change.

    Raises:
        ValueError: unknown name.
    """
    accepted = method_parameters(name)
    return get_method(name)(**{k: v for k, v in settings.items() if k in accepted})


def build_network(method: str, preset: str | None = None, **options: Any) -> nn.Module:
    """The untrained network method ``method`` trains, from network preset ``preset`` (``None``: the method's
    ``default_preset``; what ``network_def`` of the bundles calls); see
    :meth:`~lckd_med.methods.base.TrainingMethod.build_network` (options the network does not take are ignored).

    Raises:
        ValueError: unknown method or preset, or a bad option value.
    """
    cls = get_method(method)
    return cls.build_network(cls.default_preset if preset is None else preset, **options)


def network_classes() -> dict[str, type[nn.Module]]:
    """Every network class a checkpoint may name, by class name: :data:`lckd_med.networks.NETWORKS` and each
    registered method's ``network_class`` and ``other_networks``.

    Raises:
        RuntimeError: two different classes under one name.
    """
    found = dict(NETWORKS)
    for cls in METHODS.values():
        for net in (cls.network_class, *cls.other_networks):
            if found.setdefault(net.__name__, net) is not net:
                raise RuntimeError(f"two network classes are named {net.__name__}; rename one")
    return found


def network_class(name: str) -> type[nn.Module]:
    """The network class registered as ``name`` (a checkpoint's ``network.name``).

    Raises:
        ValueError: unknown name (the message lists the known ones).
    """
    known = network_classes()
    if name not in known:
        raise ValueError(f"network {name!r} is unknown; known: {sorted(known)}")
    return known[name]


def network_name(network: nn.Module) -> str:
    """The registered name of a (bare) network's class, as a checkpoint stores it.

    Raises:
        ValueError: its class is not registered.
    """
    name = type(network).__name__
    if network_classes().get(name) is not type(network):
        raise ValueError(
            f"{name} is not a registered network class (register it in lckd_med.networks.NETWORKS, or make it a "
            "method's network_class); a checkpoint could not rebuild it"
        )
    return name
