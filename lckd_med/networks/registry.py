"""The network classes of this package that a checkpoint may name, by name.

A checkpoint stores ``network: {"name": <class name>, "hparams": {...}}``; the network is rebuilt with
``NETWORKS[name].from_hparams(hparams)`` (:func:`lckd_med.methods.registry.network_class` looks here and at every
registered method's own network). **Registering a network class defined in** ``lckd_med/networks/`` **is one line
here**: ``"MyNet": MyNet,`` (the key is the class name; ``tests/networks/test_registry.py`` checks it). The class
needs ``hparams`` and ``from_hparams`` (:class:`~lckd_med.networks.protocol.SegmentationNetwork`); a network that
only one method uses may instead live in that method's module (its ``network_class``), as HeMIS's does.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.mmformer import MMFormerNet
from lckd_med.networks.omd_net import OMDNet
from lckd_med.networks.rfnet import RFNet

__all__ = ["NETWORKS"]

#: Class name -> network class, for the networks defined in this package.
NETWORKS: Mapping[str, type[nn.Module]] = MappingProxyType(
    {
        "LCKDNet": LCKDNet,
        "OMDNet": OMDNet,
        "RFNet": RFNet,
        "MMFormerNet": MMFormerNet,
    }
)
