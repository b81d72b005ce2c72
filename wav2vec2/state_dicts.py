"""What every model file of the toolkit shares: its error class, reading, atomic writing,
plain-value configs, strict-shape checks and the folding of weight-pruning masks.

Model files hold only tensors and plain Python values, so ``torch.load(weights_only=True)``
reads them; the one exception allowed by name is the ``argparse.Namespace`` that released
MelHuBERT files keep under ``Args``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any, Mapping, MutableMapping

import torch
from torch import Tensor, nn

from .atomic_io import atomic_torch_save
from .finite import check_finite_checkpoint

ORIG_SUFFIX, MASK_SUFFIX = "_orig", "_mask"  # torch.nn.utils.prune's re-parametrisation


class CheckpointError(ValueError):
    """A model file or state dict that does not fit the model or the format; the message names
    the file and the key."""


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict; released files' ``Args`` Namespace is allowed.

    The one reader of model files and training checkpoints. Raises FileNotFoundError for a
    missing file and CheckpointError naming the file for an empty file (a write that was cut
    off), anything unreadable (truncated, pickled objects, not a torch file). ``mmap``: map the
    tensors instead of reading them (for a glance at a file's config or provenance).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), e.g. a write that was cut off")
    # torch's safe_globals context removes its entries again on exit, even ones allowed process-wide
    # before (e.g. by the root model.py of the original MelHuBERT README): only enter it when needed.
    allowed = argparse.Namespace in torch.serialization.get_safe_globals()
    try:
        with contextlib.nullcontext() if allowed else torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # re-raised with the file named
        message = " ".join(str(error).split())[:300] or type(error).__name__
        if "Weights only load failed" in message:  # torch's advice (weights_only=False) would run pickled code
            message = ("it holds pickled Python objects, or is not a torch file at all; only tensors and plain "
                       "values are read (weights_only=True)")
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {message})") from error
    return checkpoint


def write_atomically(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The one writer of model files and checkpoints: refuse NaN / inf weights, then write atomically.

    ``check_finite_checkpoint`` raises ``NonFiniteError`` naming the file and the keys before
    anything is written (a diverged model must never overwrite a good one);
    ``atomic_torch_save`` writes a temporary file beside ``path``, fsyncs it, renames it over
    ``path`` and fsyncs the folder, so a crash, a full disk or a signal leaves either the old
    file or the complete new one, never half a model.
    """
    payload = dict(payload)
    check_finite_checkpoint(payload, str(path))
    return atomic_torch_save(payload, path)


def plain(value: Any) -> Any:
    """Dict subclasses to dicts, tuples to lists, paths to strings, recursively, so configs are
    JSON-like and ``weights_only=True`` can read them."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def check_shapes(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """CheckpointError naming every key whose shape differs between ``state`` and ``model``."""
    own = model.state_dict()
    wrong = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in state.items()
        if key in own and isinstance(value, Tensor) and tuple(value.shape) != tuple(own[key].shape)
    ]
    if wrong:
        raise CheckpointError(f"{source}: shape mismatch for " + "; ".join(wrong))


# --------------------------------------------------------------------------------------------
# Weight-pruning masks: X_orig * X_mask -> X
# --------------------------------------------------------------------------------------------


def _fold(original: Tensor, mask: Tensor) -> Tensor:
    return original * mask.to(original.dtype)


def fold_pruning_masks(state: MutableMapping[str, Tensor], own_keys: set[str]) -> list[str]:
    """In ``state``, replace ``X_orig`` + ``X_mask`` pairs by ``X = X_orig * X_mask`` where the
    model holds plain ``X`` (for reading a file).

    Keys are relative to the model. A model that is itself in pruning form (holds ``X_orig``)
    keeps the pair. Returns the folded names ``X``.
    """
    folded = []
    for key in [k for k in state if k.endswith(ORIG_SUFFIX)]:
        base = key[: -len(ORIG_SUFFIX)]
        mask_key = base + MASK_SUFFIX
        if key in own_keys or base not in own_keys or mask_key not in state or base in state:
            continue
        original = state.pop(key)
        state[base] = _fold(original, state.pop(mask_key))
        folded.append(base)
    return folded


def folded_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model.state_dict()`` with every ``X_orig`` / ``X_mask`` pair replaced by ``X`` (for writing
    a file of a model under weight pruning).

    Unmasked tensors are the model's own (shared, not copied); the module is not changed.
    """
    state = model.state_dict()
    folded: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(MASK_SUFFIX) and key[: -len(MASK_SUFFIX)] + ORIG_SUFFIX in state:
            continue
        if key.endswith(ORIG_SUFFIX) and key[: -len(ORIG_SUFFIX)] + MASK_SUFFIX in state:
            base = key[: -len(ORIG_SUFFIX)]
            folded[base] = _fold(value, state[base + MASK_SUFFIX]).detach()
            continue
        folded[key] = value
    return folded
