"""Stack variable-length waveforms into one zero-padded batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from speech_data.dataset import AudioItem


class AudioBatch(NamedTuple):
    """One batch. Unpack the first two fields for the model: ``waveforms, lengths, *_ = batch``.

    waveforms: float32 [B, T_max]; row b holds ``lengths[b]`` real samples, then zeros.
    lengths: int64 [B], real samples per row (the model derives its attention mask from these).
    indices: int64 [B], positions of the utterances in the file list.
    utterance_ids: B strings, e.g. "103-1240-0000" (for looking up labels).
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    indices: torch.Tensor
    utterance_ids: list[str]


def collate_audio(items: Sequence[AudioItem]) -> AudioBatch:
    """Zero-pad ``items`` to the longest one. Raises ValueError on an empty batch."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([item.waveform.shape[0] for item in items], dtype=torch.long)
    waveforms = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for row, item in enumerate(items):
        waveforms[row, : item.waveform.shape[0]] = item.waveform
    indices = torch.tensor([item.index for item in items], dtype=torch.long)
    return AudioBatch(waveforms, lengths, indices, [item.utterance_id for item in items])
