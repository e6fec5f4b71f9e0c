"""The two baselines of :mod:`lckd_med.compare` as methods: LCKD's network with the plain segmentation loss."""

from __future__ import annotations

from lckd_med.methods.base import SegmentationMethod
from lckd_med.networks.lckd_net import LCKDNet
from lckd_med.networks.reference_net import ReferenceLCKDNet

__all__ = ["NoDistillationMethod", "FullModalityMethod"]


class NoDistillationMethod(SegmentationMethod):
    """ "LCKD w/o KD": the LCKD network with modality dropout, segmentation loss only (no teachers, no election)."""

    label = "LCKD w/o KD"
    network_class = LCKDNet
    #: ``network_preset reference`` builds the LCKD reference network instead (also for :class:`FullModalityMethod`)
    other_networks = (ReferenceLCKDNet,)


class FullModalityMethod(NoDistillationMethod):
    """ "All-4 only": the LCKD network trained on all sequences, never any modality dropout."""

    label = "All-4 only"
    drops_modalities = False
