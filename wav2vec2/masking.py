"""Span masking for masked prediction (HuBERT / MelHuBERT, fairseq's static strategy)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def span_mask(
    lengths: Tensor,
    max_length: int,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 2,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Boolean ``(B, max_length)`` mask, True on masked frames, False on padding.

    Per utterance of valid length ``n``: ``floor(mask_prob * n / mask_length + U(0, 1))``
    span starts (at least ``min_masks``), drawn without replacement from
    ``[0, n - mask_length)``; each masks ``mask_length`` frames; spans may overlap, so about
    ``1 - exp(-mask_prob)`` of the frames end up masked (53 % for 0.7... 0.8 with overlap).
    """
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    mask = torch.zeros(len(lengths), max_length, dtype=torch.bool)
    for row, length in enumerate(lengths.tolist()):
        length = min(int(length), max_length)
        if length <= 0:
            continue
        noise = float(torch.rand((), generator=generator))
        num_spans = max(min_masks, int(mask_prob * length / mask_length + noise))
        candidates = max(1, length - mask_length)
        num_spans = min(num_spans, candidates)
        starts = torch.randperm(candidates, generator=generator)[:num_spans]
        positions = (starts.unsqueeze(1) + torch.arange(mask_length)).reshape(-1)
        mask[row, positions[positions < length]] = True
    return mask.to(lengths.device)
