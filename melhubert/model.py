"""The MelHuBERT model's historical import path (``from melhubert.model import MelHuBERTConfig,
MelHuBERTModel``), kept for users' scripts; the model lives in ``wav2vec2.melhubert``."""

from wav2vec2.melhubert import IGNORE_INDEX, MelHuBERTConfig, MelHuBERTModel, masked_prediction_loss, param_count

__all__ = ["IGNORE_INDEX", "MelHuBERTConfig", "MelHuBERTModel", "masked_prediction_loss", "param_count"]
