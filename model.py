"""``from model import MelHuBERTConfig, MelHuBERTModel``: the original MelHuBERT README's import.

A re-export of ``wav2vec2.melhubert`` so the README's "Load models" snippet runs verbatim from the
repository root. Checkpoints written by the original code pickle an ``argparse.Namespace``
(``Args``); it is allow-listed for ``torch.load``'s default ``weights_only=True`` (torch >= 2.6),
which the snippet's plain ``torch.load(model_ckpt, map_location="cpu")`` uses. A Namespace only
holds plain values, so this opens nothing else.
"""

import argparse

import torch

from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel

torch.serialization.add_safe_globals([argparse.Namespace])

__all__ = ["MelHuBERTConfig", "MelHuBERTModel"]
