"""The one door in and out of a model file: ``load_model`` / ``open_model_file`` / ``save_model``.

Every on-disk format the toolkit writes or accepts is told apart here, by content
(``detect_format``), never by file name:

============================  ============================================================
format                        keys (all files: tensors and plain values only)
============================  ============================================================
``wav2vec2``                  ``{"state_dict", "config"[, "low_rank"], ...}``: converted
                              teachers, DPHuBERT ``pruned.pth`` / final ``*-dp-*.pth``,
                              baseline outputs; ``wav2vec2_model(**ckpt["config"])`` loads it
``train.py-wav2vec2``         a ``train.py`` checkpoint of a waveform model: the same files
                              nested under ``"wav2vec2"`` (Lightning owns the top level)
``melhubert``                 ``{"model", "Upstream_Config", ...}``: released MelHuBERT files
                              and every ``train.py`` checkpoint of a MelHuBERT model
                              (``wav2vec2.melhubert_checkpoint``)
``dphubert-stage``            a DPHuBERT stage-1 / stage-3 Lightning checkpoint
                              (``student_config`` + ``student.*`` weights, gates included)
safetensors export            ``model.safetensors`` (+ ``config.json``), read as ``wav2vec2``
                              (``wav2vec2.export.safetensors``; the file or its folder)
============================  ============================================================

Compression outputs are read as they are: weight-pruning pairs ``X_orig`` / ``X_mask`` are
folded into ``X`` (zeros stay zeros), and a low-rank structure ``{module path: rank}``
(``config["low_rank"]`` or a ``"low_rank"`` key beside ``config``) rebuilds the factor modules
before the strict load.

Loading is strict: the only keys allowed to be missing are the frozen
``feature_extractor.dummy_weight`` (absent from teacher files converted by DPHuBERT's scripts;
it is all ones there) and hard-concrete ``log_alpha`` gates when the caller asks for a masked
student built from an unmasked teacher. Each allowed gap is reported, never hidden. Every
problem is a ``CheckpointError`` naming the file and the key.

``save_model`` writes through ``state_dicts.write_atomically``: NaN / inf weights are refused
(``wav2vec2.finite.NonFiniteError`` naming the file and keys, nothing written), then the file is
written atomically (temporary file in the destination folder, fsync, rename), so an interrupted
run never leaves half a model behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

from .low_rank import apply_low_rank_structure
from .melhubert import MelHuBERTModel
from .melhubert_checkpoint import is_melhubert_checkpoint, model_from_checkpoint, save_checkpoint
from .model import Wav2Vec2Model, wav2vec2_model
from .state_dicts import CheckpointError, check_shapes, fold_pruning_masks, plain, read_checkpoint, write_atomically

DUMMY_WEIGHT_KEY = "feature_extractor.dummy_weight"
GATE_SUFFIX = ".log_alpha"
WAV2VEC2_KEY = "wav2vec2"  # train.py checkpoints of waveform models: {"wav2vec2": {"state_dict", "config"}}
STUDENT_PREFIX = "student."

WAV2VEC2, TRAIN_WAV2VEC2, MELHUBERT, DPHUBERT_STAGE = "wav2vec2", "train.py-wav2vec2", "melhubert", "dphubert-stage"
FORMATS = (WAV2VEC2, TRAIN_WAV2VEC2, MELHUBERT, DPHUBERT_STAGE)
FAMILY_OF_FORMAT = {WAV2VEC2: "wav2vec2", TRAIN_WAV2VEC2: "wav2vec2", MELHUBERT: "melhubert", DPHUBERT_STAGE: "wav2vec2"}
_EXPECTED = ("a MelHuBERT checkpoint ('model' + 'Upstream_Config'), a wav2vec2-family model file ('state_dict' + "
             f"'config', or both under '{WAV2VEC2_KEY}') or a DPHuBERT stage checkpoint ('student_config' + 'state_dict')")

__all__ = [
    "CheckpointError", "DUMMY_WEIGHT_KEY", "FORMATS", "ModelFile", "build_model", "detect_format", "load_model",
    "load_weights", "model_from_dict", "open_model_file", "save_model", "state_dict_without", "summary",
    "wav2vec2_files", "wav2vec2_from_files",
]


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
    check_shapes(model, state_dict, source)
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


# --------------------------------------------------------------------------------------------
# Telling the formats apart
# --------------------------------------------------------------------------------------------


def detect_format(checkpoint: Any, source: str = "checkpoint") -> str:
    """One of ``FORMATS``, from the keys of a loaded file; CheckpointError naming the keys otherwise."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{source}: expected {_EXPECTED}, found a {type(checkpoint).__name__}")
    if is_melhubert_checkpoint(checkpoint):
        return MELHUBERT
    nested = checkpoint.get(WAV2VEC2_KEY)
    if isinstance(nested, Mapping) and "state_dict" in nested and "config" in nested:
        return TRAIN_WAV2VEC2
    if "state_dict" in checkpoint and "config" in checkpoint:
        return WAV2VEC2
    if "student_config" in checkpoint and "state_dict" in checkpoint:
        return DPHUBERT_STAGE
    raise CheckpointError(f"{source}: neither {_EXPECTED}; found keys {sorted(checkpoint)}")


def wav2vec2_files(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The ``{"state_dict", "config"[, "low_rank"], ...}`` part of a wav2vec2-family file."""
    nested = checkpoint.get(WAV2VEC2_KEY)
    return nested if isinstance(nested, Mapping) and "state_dict" in nested else checkpoint


def wav2vec2_from_files(files: Mapping[str, Any], source: str = "checkpoint", notes: Optional[list[str]] = None,
                        filled_in: Optional[list[str]] = None) -> Wav2Vec2Model:
    """Rebuild a waveform model from ``{"state_dict", "config"[, "low_rank"]}`` (strict, eval mode).

    A low-rank structure is re-applied before the load and weight-pruning masks are folded;
    each is recorded in ``notes`` when given; ``filled_in`` receives the allowed missing keys.
    """
    config = dict(files["config"])
    ranks = config.pop("low_rank", None) or files.get("low_rank")
    model = build_model(config, source=source)
    if ranks:
        apply_low_rank_structure(model, {str(k): int(v) for k, v in dict(ranks).items()})
        if notes is not None:
            notes.append(f"low-rank: {len(ranks)} factorised linear maps")
    state = dict(files["state_dict"])
    folded = fold_pruning_masks(state, set(model.state_dict()))
    if folded and notes is not None:
        notes.append(f"weight-pruning masks folded into {len(folded)} tensors")
    filled = load_weights(model, state, source=source)
    if filled_in is not None:
        filled_in.extend(filled)
    return model.eval()


def student_from_stage_checkpoint(checkpoint: Mapping[str, Any], source: str) -> Wav2Vec2Model:
    """The (gated) student of a DPHuBERT stage-1 / stage-3 checkpoint, loaded strictly."""
    student = build_model(checkpoint["student_config"], source=source)
    state = {k[len(STUDENT_PREFIX):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(STUDENT_PREFIX)}
    load_weights(student, state, source=source)
    return student


@dataclass
class ModelFile:
    """A model file opened: its format, the model family, the model (eval mode), the raw dict and
    what loading had to do (``notes``)."""

    path: Path
    format: str
    family: str  # "wav2vec2" or "melhubert"
    model: nn.Module
    checkpoint: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    filled_in: list[str] = field(default_factory=list)  # allowed missing keys that kept their initial values


def model_from_dict(checkpoint: Mapping[str, Any], source: str = "checkpoint",
                    notes: Optional[list[str]] = None, filled_in: Optional[list[str]] = None) -> tuple[str, nn.Module]:
    """``(format, model in eval mode)`` of a loaded file of any format (see ``wav2vec2_from_files``)."""
    fmt = detect_format(checkpoint, source)
    if fmt == MELHUBERT:
        return fmt, model_from_checkpoint(checkpoint, source)
    if fmt == DPHUBERT_STAGE:
        return fmt, student_from_stage_checkpoint(checkpoint, source).eval()
    return fmt, wav2vec2_from_files(wav2vec2_files(checkpoint), source, notes, filled_in)


def open_model_file(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ModelFile:
    """Read a model file of any format; FileNotFoundError or CheckpointError (naming the file).

    Also reads a safetensors export (a ``.safetensors`` file, or a folder with
    ``model.safetensors`` and its ``config.json``) written by ``wav2vec2.export.safetensors``.
    """
    from .export.safetensors import is_safetensors_model, read_safetensors

    path = Path(path)
    if is_safetensors_model(path):
        config, state_dict = read_safetensors(path)
        checkpoint: dict[str, Any] = {"config": config, "state_dict": {k: v.to(map_location) for k, v in state_dict.items()}}
    else:
        checkpoint = read_checkpoint(path, map_location)
    notes: list[str] = []
    filled_in: list[str] = []
    fmt, model = model_from_dict(checkpoint, str(path), notes, filled_in)
    return ModelFile(path, fmt, FAMILY_OF_FORMAT[fmt], model, checkpoint, notes, filled_in)


def load_model(
    path: str | os.PathLike[str],
    map_location: str | torch.device = "cpu",
    verbose: bool = True,
    family: Optional[str] = None,
) -> nn.Module:
    """The model of a file of any format, loaded strictly, in eval mode.

    ``family="wav2vec2"`` (or ``"melhubert"``) makes a file of the other family an error.
    """
    opened = open_model_file(path, map_location)
    if family is not None and opened.family != family:
        raise CheckpointError(f"{path}: expected a {family} model file, found a {opened.format} file")
    if verbose:
        notes = opened.notes + ([f"filled in: {', '.join(opened.filled_in)}"] if opened.filled_in else [])
        note = f" ({'; '.join(notes)})" if notes else ""
        print(summary(opened.model, str(path)) + note)
    return opened.model


def save_model(path: str | os.PathLike[str], model: nn.Module, **extra: Any) -> Path:
    """Write a model with CPU tensors and plain values only, atomically; returns the path.

    A wav2vec2-family model becomes ``{"state_dict", "config", **extra}``; a MelHuBERT model the
    MelHuBERT format (``extra``: ``task``, ``optimizer_state``, ``step``, ``runner``).
    """
    if isinstance(model, MelHuBERTModel):
        return save_checkpoint(path, model, **extra)
    payload: dict[str, Any] = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "config": plain(model.config),
    }
    payload.update(extra)
    return write_atomically(payload, path)


def summary(model: nn.Module, name: str = "model") -> str:
    """One line: family, layers, kept blocks, width, parameter count."""
    params = sum(p.numel() for p in model.parameters())
    if isinstance(model, MelHuBERTModel):
        return f"{name}: MelHuBERT, {model.num_layers} layers, width {model.embed_dim}, {params:,} params"
    layers = list(model.encoder.transformer.layers)
    attention = sum(layer.attention is not None for layer in layers)
    ffn = sum(layer.feed_forward is not None for layer in layers)
    family = "WavLM" if model.is_wavlm else "wav2vec2/HuBERT"
    norm = "pre-norm" if model.encoder.transformer.layer_norm_first else "post-norm"
    width = model.encoder.feature_projection.projection.out_features
    return (f"{name}: {family} ({norm}), {len(layers)} layers ({attention} attention, {ffn} FFN blocks kept), "
            f"width {width}, {params:,} params")


def state_dict_without(state_dict: Mapping[str, Tensor], suffixes: Iterable[str]) -> dict[str, Tensor]:
    """A copy without the keys ending in any of ``suffixes`` (e.g. gates before export)."""
    suffixes = tuple(suffixes)
    return {k: v for k, v in state_dict.items() if not k.endswith(suffixes)}
