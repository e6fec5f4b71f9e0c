"""Named network configurations (presets) for every :class:`~lckd_med.networks.model.MissingModalityNet`.

A preset fixes the architecture (channels per level, the stride of the first level, the full-resolution head);
the network class (:class:`~lckd_med.networks.lckd_net.LCKDNet`, :class:`~lckd_med.networks.omd_net.OMDNet`, a
method's own, e.g. HeMIS's) and every other constructor argument (``fill_levels``, ``share_encoder``, ...) are
given separately. The bundles build their network through the method
(:meth:`lckd_med.methods.TrainingMethod.build_network`), which calls :func:`build_preset` with its class.

Compute per input voxel (``FlopCounterMode``, see
``docs/performance.md``, measured by ``python -m lckd_med.benchmarks.suite``):

=============== ======================== ============ ===================================================
preset          channels per level       first stride  purpose
=============== ======================== ============ ===================================================
``lean``        32, 64, 128, 256, 320    (2, 2, 1)     default: the reference network's strided stem (its
                                                       (1, 2, 2) in (D, H, W) order), light full-res head
``lean_small``  16, 32, 64, 128          (2, 2, 1)     CPU demo and short comparisons
``fullres``     32, 64, 128, 256, 320    (1, 1, 1)     lckd_med's network before the lean default: the whole
                                                       U-Net at full resolution (2.6 MFLOP/voxel to train)
=============== ======================== ============ ===================================================

``reference`` (LCKD and its baselines) is not a U-Net configuration but the LCKD reference network itself, one
shared ResNet-50 + ASPP encoder and the reference decoder (:mod:`lckd_med.networks.reference_net`, 43,656,672
parameters, 1.06 MFLOP/voxel to train): :func:`build_preset` builds it from :data:`NETWORK_PRESETS` in place of
:class:`~lckd_med.networks.lckd_net.LCKDNet`.

Axis order is the project's ``(H, W, D)`` (D = axial slices), so ``(2, 2, 1)`` halves the in-plane resolution
only, as the reference's first convolution does on its ``(D, H, W)`` crops.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from lckd_med.networks.encoder import SPATIAL_DIMS, check_filters, check_spatial_dims
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.model import MissingModalityNet
from lckd_med.networks.reference_net import REFERENCE_PRESET, build_reference_preset
from lckd_med.networks.registry import NETWORKS

__all__ = ["PRESETS", "NETWORK_PRESETS", "DEFAULT_PRESET", "preset_hparams", "build_preset"]

#: Preset name -> architecture: ``filters`` per level, ``stem_stride`` (stride of the first level; the other levels
#: halve every axis) and ``head_filters`` of the full-resolution head (``None``: the network's default,
#: ``filters[0] // 2``; ignored without a strided stem).
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "lean": MappingProxyType({"filters": (32, 64, 128, 256, 320), "stem_stride": (2, 2, 1), "head_filters": 16}),
        "lean_small": MappingProxyType({"filters": (16, 32, 64, 128), "stem_stride": (2, 2, 1), "head_filters": 8}),
        "fullres": MappingProxyType(
            {"filters": (32, 64, 128, 256, 320), "stem_stride": (1, 1, 1), "head_filters": None}
        ),
    }
)
#: Presets that are whole networks of their own: name -> ``builder(network_class, **overrides)``, where
#: ``network_class`` is the class the method would otherwise build (the builder refuses classes it does not replace).
NETWORK_PRESETS: Mapping[str, Any] = MappingProxyType({REFERENCE_PRESET: build_reference_preset})
#: The preset the bundles and the benchmark suite use unless told otherwise.
DEFAULT_PRESET = "lean"


def _network(network: type[MissingModalityNet] | str) -> type[MissingModalityNet]:
    if isinstance(network, str):
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}; registered: {sorted(NETWORKS)}")
        network = NETWORKS[network]
    if not (isinstance(network, type) and issubclass(network, MissingModalityNet)):
        raise TypeError(f"network presets build MissingModalityNet subclasses, got {network!r}")
    return network


def preset_hparams(
    name: str = DEFAULT_PRESET, network: type[MissingModalityNet] | str = LCKDNet, **overrides: Any
) -> dict[str, Any]:
    """Constructor arguments of preset ``name`` for the ``network`` class, with ``overrides`` applied.

    Overrides set to ``None`` are ignored (bundle configs pass ``null`` for "the preset's value"). Overriding
    ``filters`` keeps the preset's stem: the strides become ``stem_stride`` then 2 for every further level; the
    head then gets the network's default width unless ``head_filters`` is given too. ``spatial_dims=2`` (a 2-D
    :class:`~lckd_med.modalities.ModalitySpec`, with ``in_modalities`` and ``in_channels``) keeps the stem's
    in-plane strides.

    Args:
        name: a key of :data:`PRESETS`.
        network: a :class:`~lckd_med.networks.model.MissingModalityNet` subclass, or the name of one in
            :data:`lckd_med.networks.NETWORKS`.
        overrides: any constructor argument of the network.

    Returns:
        keyword arguments for the network class (``network(**hparams)``).

    Raises:
        ValueError: unknown preset, network or argument.
        TypeError: ``network`` is not a MissingModalityNet class.
    """
    if name not in PRESETS:
        if name in NETWORK_PRESETS:
            raise ValueError(
                f"network preset {name!r} is a whole network with no U-Net hyper-parameters; use build_preset"
            )
        raise ValueError(f"unknown network preset {name!r}; choose from {sorted([*PRESETS, *NETWORK_PRESETS])}")
    cls = _network(network)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    preset = PRESETS[name]
    allowed = cls.hparam_names()
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} arguments {unknown}; allowed: {sorted(allowed)}")
    filters = check_filters(overrides.get("filters", preset["filters"]))
    dims = check_spatial_dims(overrides.get("spatial_dims", SPATIAL_DIMS))
    # a 2-D network keeps the stem's stride of the two in-plane axes (H, W); the 3-D stems halve only those anyway
    stem = tuple(preset["stem_stride"])[:dims]
    hparams: dict[str, Any] = {
        "filters": list(filters),
        "strides": [list(stem)] + [[2] * dims] * (len(filters) - 1),
    }
    if any(v != 1 for v in stem) and "filters" not in overrides and preset["head_filters"] is not None:
        hparams["head_filters"] = preset["head_filters"]
    hparams.update(overrides)
    hparams["filters"] = list(filters)
    return hparams


def build_preset(
    name: str = DEFAULT_PRESET, network: type[MissingModalityNet] | str = LCKDNet, **overrides: Any
) -> MissingModalityNet:
    """The ``network`` of preset ``name`` (untrained); see :func:`preset_hparams`.

    Example (what ``bundles/lckd/train.json`` builds, through ``LCKDMethod.build_network``)::

        net = build_preset("lean", LCKDNet, fill_levels="bottleneck", filters=None)

    ``name`` may also be a key of :data:`NETWORK_PRESETS` (``"reference"``): its builder gets the network class and
    refuses the classes its network cannot stand in for.
    """
    cls = _network(network)
    if name in NETWORK_PRESETS:
        return NETWORK_PRESETS[name](cls, **overrides)
    return cls(**preset_hparams(name, cls, **overrides))
