"""The one-stage modality distillation (OMD) training iteration as a MONAI ``SupervisedTrainer``.

One iteration, one optimizer, one stage (transfer and fusion learned together, as multi-task learning):

1. draw a modality dropout (per batch or per sample, as LCKD's phase 2); the dropped sequences stay in the input,
   since their real features are the restoration targets, but the prediction under the dropout mask never reads them;
2. one encoding and one decoder pass of ``2B`` samples (:meth:`lckd_med.networks.OMDNet.forward` with
   ``available``): the prediction from restored features (under the dropout mask) and the prediction from real
   features (under the availability mask), with the restored and the real feature maps;
3. ``loss = seg(restored path) + real_seg_weight * seg(real path) + mmd_weight * MMD(restored, real.detach())
   + kl_weight * T^2 KL(real path.detach() || restored path)``.

The iteration is :class:`lckd_med.engines.MethodTrainer`'s, with :class:`lckd_med.methods.OMDMethod` computing the
loss. No teacher election: the "teacher" is the model's own prediction from real features, in the same step.
"""

from __future__ import annotations

from lckd_med.engines.trainer import MethodTrainer

__all__ = ["OMDTrainer"]


class OMDTrainer(MethodTrainer):
    """:class:`MethodTrainer` running :class:`~lckd_med.methods.OMDMethod`: dropout -> two-path forward -> seg +
    adaptation losses -> one optimizer step.

    Takes :class:`~lckd_med.methods.OMDMethod`'s arguments (``mmd_loss``, ``kl_loss``, ``mmd_weight``, ``kl_weight``,
    ``real_seg_weight``, ``mmd_levels``) as keywords beside :class:`MethodTrainer`'s, ``method`` excepted;
    ``network`` is an :class:`~lckd_med.networks.OMDNet` (bare or DDP-wrapped) and ``phase1_iterations`` defaults to
    0 (one stage from the first iteration; > 0 mimics LCKD's warm-up, for ablations).
    """

    method_name = "omd"
