"""Saving and strictly loading ``{"state_dict", "config", ...}`` model files.

The files hold only tensors and plain Python values, so ``torch.load(weights_only=True)``
reads them. Loading is strict: the only keys allowed to be missing are the frozen
``feature_extractor.dummy_weight`` (absent from teacher files converted by DPHuBERT's
scripts; it is all ones there) and hard-concrete ``log_alpha`` gates when the caller asks for
a masked student built from an unmasked teacher. Each allowed gap is reported, never hidden.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import Tensor

from .atomic_io import atomic_torch_save
from .finite import check_finite_checkpoint
from .model import Wav2Vec2Model, wav2vec2_model

DUMMY_WEIGHT_KEY = "feature_extractor.dummy_weight"
GATE_SUFFIX = ".log_alpha"


class CheckpointError(ValueError):
    """A model file or state dict that does not fit the model; the message names the key."""


def build_model(config: Mapping[str, Any], source: str = "config") -> Wav2Vec2Model:
    """``wav2vec2_model(**config)`` with errors that name the source and the bad key."""
    try:
        return wav2vec2_model(**config)
    except TypeError as error:
        raise CheckpointError(f"{source}: invalid model config: {error}") from error
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from error


def load_weights(
    model: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "state_dict",
    allow_missing_gates: bool = False,
) -> list[str]:
    """Load strictly; returns the allowed missing keys that kept their initial values.

    Raises ``CheckpointError`` naming every unexpected key, every missing key outside the
    allow-list, and every shape mismatch.
    """
    own = model.state_dict()
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state_dict.items()
        if key in own and tuple(value.shape) != tuple(own[key].shape)
    ]
    if mismatched:
        raise CheckpointError(f"{source}: shape mismatch for " + "; ".join(mismatched))
    result = model.load_state_dict(dict(state_dict), strict=False)
    allowed = [k for k in result.missing_keys if k == DUMMY_WEIGHT_KEY or (allow_missing_gates and k.endswith(GATE_SUFFIX))]
    missing = [k for k in result.missing_keys if k not in allowed]
    problems = []
    if missing:
        problems.append("missing keys " + ", ".join(missing))
    if result.unexpected_keys:
        problems.append("unexpected keys " + ", ".join(result.unexpected_keys))
    if problems:
        raise CheckpointError(f"{source}: " + "; ".join(problems))
    return allowed


def _read(path: str | os.PathLike[str], map_location: str | torch.device) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # re-raised with the file named
        raise CheckpointError(f"{path}: not a readable torch file holding only tensors and plain values ({error})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{path}: expected a dict with 'state_dict' and 'config', found {keys}")
    return checkpoint


def summary(model: Wav2Vec2Model, name: str = "model") -> str:
    """One line: family, layers, kept blocks, width, parameter count."""
    layers = list(model.encoder.transformer.layers)
    attention = sum(layer.attention is not None for layer in layers)
    ffn = sum(layer.feed_forward is not None for layer in layers)
    family = "WavLM" if model.is_wavlm else "wav2vec2/HuBERT"
    norm = "pre-norm" if model.encoder.transformer.layer_norm_first else "post-norm"
    width = model.encoder.feature_projection.projection.out_features
    params = sum(p.numel() for p in model.parameters())
    return (f"{name}: {family} ({norm}), {len(layers)} layers ({attention} attention, {ffn} FFN blocks kept), "
            f"width {width}, {params:,} params")


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    verbose: bool = True,
) -> Wav2Vec2Model:
    """Build the model of a ``{"state_dict", "config"}`` file and load it strictly (eval mode)."""
    checkpoint = _read(path, map_location)
    model = build_model(checkpoint["config"], source=str(path))
    filled = load_weights(model, checkpoint["state_dict"], source=str(path))
    model.eval()
    if verbose:
        note = f" (filled in: {', '.join(filled)})" if filled else ""
        print(summary(model, str(path)) + note)
    return model


def save_model(path: str | os.PathLike[str], model: Wav2Vec2Model, **extra: Any) -> Path:
    """Write ``{"state_dict", "config", **extra}`` with CPU tensors and plain values only.

    Atomic (temporary file in the same folder, fsync, rename); refuses NaN / inf weights
    (``wav2vec2.finite.NonFiniteError`` naming the file and keys) and then writes nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": _plain(model.config),
    }
    payload.update(extra)
    check_finite_checkpoint(payload, str(path))
    atomic_torch_save(payload, path)
    return path


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so configs are JSON-like and weights_only-safe."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def state_dict_without(state_dict: Mapping[str, Tensor], suffixes: Iterable[str]) -> dict[str, Tensor]:
    """A copy without the keys ending in any of ``suffixes`` (e.g. gates before export)."""
    suffixes = tuple(suffixes)
    return {k: v for k, v in state_dict.items() if not k.endswith(suffixes)}
