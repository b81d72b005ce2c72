"""The check that no model file, checkpoint or export is written with NaN / inf tensors.

A non-finite weight poisons everything trained or measured from it, and it usually shows up
hours later as an unrelated error. Every saver calls :func:`check_finite` on what it is about
to write, so a non-finite tensor stops the save with an error naming the file and the keys.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

# Keys of a Lightning checkpoint that hold weights and optimizer moments. Other entries may be
# legitimately infinite (e.g. ModelCheckpoint's initial "kth_value" is inf).
LIGHTNING_WEIGHT_KEYS = ("state_dict", "optimizer_states")
# Keys of the toolkit's plain model files (wav2vec2 / MelHuBERT formats and train.py extras).
MODEL_FILE_WEIGHT_KEYS = ("state_dict", "model", "distill_linear_projs", "wav2vec2", "Optimizer")


class NonFiniteError(ValueError):
    """A tensor about to be written (or read) holds NaN or inf; the message names file and keys."""


def _tensors(value: Any, prefix: str) -> Iterator[tuple[str, Tensor]]:
    if isinstance(value, Tensor):
        yield prefix, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{prefix}.{index}" if prefix else str(index))


def non_finite_entries(value: Any, prefix: str = "") -> list[tuple[str, int, int]]:
    """``(key path, non-finite count, numel)`` of every floating tensor in ``value`` holding NaN / inf."""
    found = []
    for name, tensor in _tensors(value, prefix):
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor.detach())).sum())
            if bad:
                found.append((name, bad, tensor.numel()))
    return found


def describe(entries: list[tuple[str, int, int]], limit: int = 5) -> str:
    shown = ", ".join(f"{name} ({bad} of {total})" for name, bad, total in entries[:limit])
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{len(entries)} tensor(s) with NaN/inf values: {shown}{more}"


def check_finite(payload: Mapping[str, Any], source: str, keys: tuple[str, ...] | None = None) -> None:
    """Raise :class:`NonFiniteError` naming ``source`` if ``payload[k]`` (every ``k`` in ``keys``;
    the whole payload when ``keys`` is None) holds a non-finite floating tensor."""
    if keys is None:
        entries = non_finite_entries(payload)
    else:
        entries = [e for key in keys if key in payload for e in non_finite_entries(payload[key], key)]
    if entries:
        raise NonFiniteError(f"{source}: refusing to write {describe(entries)}; "
                             "the weights diverged (lower the learning rate, check the data with prepare_data.py --verify)")


def check_finite_checkpoint(checkpoint: Mapping[str, Any], source: str) -> None:
    """:func:`check_finite` on the weight-bearing entries of a Lightning checkpoint or a model file."""
    check_finite(checkpoint, source, tuple(dict.fromkeys(LIGHTNING_WEIGHT_KEYS + MODEL_FILE_WEIGHT_KEYS)))
