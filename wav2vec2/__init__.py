"""Prunable wav2vec 2.0 / HuBERT / WavLM models (torchaudio-style, DPHuBERT-compatible)."""

from .checkpoint import CheckpointError, load_model, save_model, summary
from .model import (
    Wav2Vec2Model,
    hubert_base,
    hubert_large,
    hubert_xlarge,
    wav2vec2_base,
    wav2vec2_large,
    wav2vec2_large_lv60k,
    wav2vec2_model,
    wavlm_base,
    wavlm_base_plus,
    wavlm_large,
)

__all__ = [
    "CheckpointError",
    "load_model",
    "save_model",
    "summary",
    "Wav2Vec2Model",
    "hubert_base",
    "hubert_large",
    "hubert_xlarge",
    "wav2vec2_base",
    "wav2vec2_large",
    "wav2vec2_large_lv60k",
    "wav2vec2_model",
    "wavlm_base",
    "wavlm_base_plus",
    "wavlm_large",
]
