"""The distillation losses of every distiller in the toolkit, in one place.

* ``distill_loss``: layer-to-layer / prediction-head regression, L1 + cosine (raw or
  log-sigmoid) + optional L2, over valid frames only (DPHuBERT stages 1 and 3, the
  DistilHuBERT-style baseline, the suite's ``layer2layer`` distillation and the waveform
  family's retraining objective);
* ``posterior_loss``: KL to a teacher's cluster posteriors at a temperature, optionally mixed
  with cross-entropy on labels (the suite's ``masked`` / ``nomasked`` distillation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DistillLossTerms:
    total: Tensor
    l1: Tensor
    l2: Tensor
    cos: Tensor


def _masked_mean(values: Tensor, mask: Optional[Tensor]) -> Tensor:
    """Mean of ``values`` ``(B, T)`` over positions where ``mask`` ``(B, T)`` is True."""
    if mask is None:
        return values.mean()
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def distill_loss(
    student: list[Tensor],
    teacher: list[Tensor],
    frame_mask: Optional[Tensor],
    l1_weight: float = 1.0,
    l2_weight: float = 0.0,
    cos_weight: float = 1.0,
    cos_type: Literal["raw", "log_sig"] = "raw",
) -> DistillLossTerms:
    """Average over distilled layers of ``w1*L1 + w2*L2 + wc*cos_term``.

    student, teacher: lists of ``(B, T, D)`` (student already projected to the teacher's D);
    frame_mask: ``(B, T)`` True on valid frames, or None when nothing is padded.
    ``cos_term`` is ``-cos`` (raw) or ``-log sigmoid(cos)`` (log_sig), so the loss can be
    negative near convergence.
    """
    if len(student) != len(teacher) or not student:
        raise ValueError(f"need matching non-empty layer lists, got {len(student)} and {len(teacher)}")
    l1_terms, l2_terms, cos_terms = [], [], []
    for s, t in zip(student, teacher):
        s = s.float()
        t = t.float()
        l1_terms.append(_masked_mean((s - t).abs().mean(-1), frame_mask))
        l2_terms.append(_masked_mean((s - t).pow(2).mean(-1), frame_mask))
        cos = F.cosine_similarity(s, t, dim=-1)
        cos = F.logsigmoid(cos) if cos_type == "log_sig" else cos
        cos_terms.append(-_masked_mean(cos, frame_mask))
    l1 = torch.stack(l1_terms).mean()
    l2 = torch.stack(l2_terms).mean()
    cos = torch.stack(cos_terms).mean()
    return DistillLossTerms(total=l1_weight * l1 + l2_weight * l2 + cos_weight * cos, l1=l1, l2=l2, cos=cos)


def posterior_loss(logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float = 1.0,
                   alpha: float = 1.0, ignore_index: int = -100) -> tuple[Tensor, Tensor, Tensor]:
    """``alpha * KL(teacher || student) + (1 - alpha) * CE(labels)`` over scored frames.

    logits, teacher_logits: ``(M, C)`` float; labels: ``(M,)`` cluster ids (``ignore_index``
    where unknown). KL is ``batchmean`` over ``M`` of the temperature-softened posteriors.
    Returns ``(loss, kl, ce)``; with ``alpha == 1`` the loss is the KL alone.
    """
    kl = F.kl_div(F.log_softmax(logits / temperature, -1), F.log_softmax(teacher_logits / temperature, -1),
                  log_target=True, reduction="batchmean")
    keep = labels != ignore_index
    if bool(keep.any()):
        ce = F.cross_entropy(logits[keep], labels[keep])
    else:
        ce = logits.sum() * 0.0
    loss = alpha * kl + (1.0 - alpha) * ce if alpha < 1.0 else kl
    return loss, kl, ce
