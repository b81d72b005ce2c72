"""An s3prl upstream over any toolkit model: SUPERB downstream tasks on compressed models.

s3prl's upstream contract (``s3prl/upstream/interfaces.py``), reproduced without importing
s3prl (it pins an old torchaudio): the expert is an ``nn.Module`` with

- ``get_downsample_rates(key) -> int``: input samples per output frame (320 for 20 ms);
- ``forward(wavs: list[Tensor]) -> dict``: ``wavs`` are 1-D 16 kHz waveforms of any lengths;
  the result holds ``"hidden_states"``, a list of ``(B, T, D)`` tensors (input projection,
  then every layer), plus ``"last_hidden_state"`` and ``"frame_lengths"`` ``(B,)``.

Padded frames of shorter rows are computed as if each utterance were alone (the toolkit's
models take lengths) and zeroed, so a downstream's pooling over them is harmless.

Use it from s3prl with ``hubconf.py``::

    python3 run_downstream.py -m train -u speech_ssl_compress -k /path/to/model.pth -d asr -n exp
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from .upstream import SAMPLE_RATE, load_upstream

#: Upstream keys s3prl asks downsample rates for; every one is a frame-rate hidden state.
FEATURE_KEYS = ("hidden_states", "last_hidden_state", "default")


class UpstreamExpert(nn.Module):
    """s3prl ``UpstreamExpert`` for a toolkit model file (``ckpt``) or factory name."""

    def __init__(self, ckpt: str | os.PathLike[str], model_config: Optional[str] = None, mean_std: Optional[str] = None, **kwargs) -> None:
        super().__init__()
        # model_config is part of s3prl's constructor signature; toolkit files carry their config.
        self.upstream = load_upstream(ckpt, mean_std=mean_std)
        self.upstream.requires_grad_(False)

    def get_downsample_rates(self, key: str) -> int:
        """Samples per frame for the feature ``key`` (320 for the 20 ms models, 160 for 10 ms)."""
        if key not in FEATURE_KEYS:
            raise KeyError(f"{self.upstream.name}: unknown feature key {key!r}; available: {', '.join(FEATURE_KEYS)}")
        if self.upstream.family == "wav2vec2":
            stride = 1
            for block in self.upstream.model.feature_extractor.conv_layers:
                stride *= block.stride
            return stride
        return SAMPLE_RATE * self.upstream.frame_period_ms // 1000

    def forward(self, wavs: list[Tensor]) -> dict[str, list[Tensor] | Tensor]:
        """``wavs``: 1-D float waveforms -> hidden states, each ``(B, T, D)``."""
        if not wavs:
            raise ValueError(f"{self.upstream.name}: forward needs at least one waveform")
        for i, wav in enumerate(wavs):
            if wav.ndim != 1:
                raise ValueError(f"{self.upstream.name}: wavs[{i}] has shape {tuple(wav.shape)}, expected 1-D samples")
        device = next(self.upstream.buffers(), next(self.upstream.parameters(), torch.empty(0))).device
        lengths = torch.tensor([len(w) for w in wavs], dtype=torch.long, device=device)
        waves = pad_sequence([w.to(device=device, dtype=torch.float32) for w in wavs], batch_first=True)
        states, frames = self.upstream.layers(waves, lengths)
        valid = (torch.arange(states[0].shape[1], device=device)[None, :] < frames[:, None]).unsqueeze(-1)
        states = [s * valid.to(s.dtype) for s in states]
        return {"hidden_states": states, "last_hidden_state": states[-1], "default": states[-1], "frame_lengths": frames}
