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
import tempfile
from pathlib import Path
from typing import Any, Mapping, MutableMapping

import torch
from torch import Tensor, nn

ORIG_SUFFIX, MASK_SUFFIX = "_orig", "_mask"  # torch.nn.utils.prune's re-parametrisation


class CheckpointError(ValueError):
    """A model file or state dict that does not fit the model or the format; the message names
    the file and the key."""


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a dict; released files' ``Args`` Namespace is allowed.

    Raises FileNotFoundError for a missing file and CheckpointError (naming the file) for
    anything unreadable or not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    # torch's safe_globals context removes its entries again on exit, even ones allowed process-wide
    # before (e.g. by the root model.py of the original MelHuBERT README): only enter it when needed.
    allowed = argparse.Namespace in torch.serialization.get_safe_globals()
    try:
        with contextlib.nullcontext() if allowed else torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # re-raised with the file named
        raise CheckpointError(f"{path}: not a readable torch file holding only tensors and plain values ({error})") from error
    return checkpoint


def write_atomically(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` into a temporary file beside ``path``, flushed to disk, then renamed over it.

    A crash or a full disk leaves either the old file or the complete new one, never half a
    model; the rename is atomic because both names live in the same folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(dict(payload), stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes owner-only files; a model file is shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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
