"""The original DPHuBERT ``wav2vec2.utils`` import helper (``import_huggingface_model``)."""

from .import_huggingface_wavlm import import_huggingface_model

__all__ = ["import_huggingface_model"]
