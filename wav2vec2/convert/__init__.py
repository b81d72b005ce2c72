"""Teacher conversion: Hugging Face and fairseq checkpoints -> our ``{"state_dict", "config"}`` files.

Neither torchaudio nor fairseq is needed. Both converters work in three explicit steps:

1. read the source config and map every field to the DPHuBERT config dict
   (``wav2vec2_model(**config)`` keys), refusing settings our model cannot represent;
2. rename every source weight through an explicit table (unknown names are errors, and the
   few training-only or task-head weights that are dropped are listed);
3. build our model and load the result strictly (``wav2vec2.checkpoint.load_weights``), so a
   missing weight or a shape mismatch stops the conversion with the key named.

Entry points: :func:`convert_hf_model` / :func:`config_from_hf` / :func:`convert_hf_state_dict`
(``wav2vec2.convert.hf``) and :func:`convert_fairseq_checkpoint` /
:func:`config_from_fairseq` / :func:`convert_fairseq_state_dict` / :func:`load_fairseq_checkpoint`
(``wav2vec2.convert.fairseq``); :func:`build_converted_model` and :func:`save_converted` are
shared by both command-line scripts (``convert_hubert_from_hf.py``, ``convert_from_fairseq.py``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional

from torch import Tensor

from ..checkpoint import CheckpointError, build_model, load_model, load_weights, save_model
from ..model import PRUNE_SWITCHES, Wav2Vec2Model


class ConversionError(CheckpointError):
    """A source checkpoint or config that cannot be converted; the message names the field or key."""


# Defined before the submodule imports below: ``hf`` and ``fairseq`` import these helpers.


def rename_weight(
    out: dict[str, Tensor], key: str, name: str, value: Tensor, rules: "list[tuple[Any, str]]", source: str
) -> bool:
    """Rename ``name`` with the first matching ``(pattern, replacement)`` rule into ``out``.

    Returns False when no rule matches (the caller reports it as unknown); a second source key
    landing on the same target is an error. Weights are stored as float32 CPU tensors.
    """
    for pattern, replacement in rules:
        if pattern.match(name):
            target = pattern.sub(replacement, name)
            break
    else:
        return False
    if target in out:
        raise ConversionError(f"{source}: two source keys map to {target} (second: {key})")
    tensor = value.detach().cpu()
    out[target] = tensor.float() if tensor.is_floating_point() else tensor
    return True


def make_config(
    *,
    source: str,
    family: str,
    extractor_mode: str,
    conv_layers: list[tuple[int, int, int]],
    conv_bias: bool,
    embed_dim: int,
    projection_dropout: float,
    pos_conv_kernel: int,
    pos_conv_groups: int,
    num_layers: int,
    num_heads: int,
    ff_interm_features: int,
    attention_dropout: float,
    ff_interm_dropout: float,
    dropout: float,
    layer_norm_first: bool,
    layer_drop: float,
    normalize_waveform: bool,
    num_buckets: Optional[int] = None,
    max_distance: Optional[int] = None,
) -> dict[str, Any]:
    """The DPHuBERT config dict of an unpruned model (per-layer lists, all prune switches off).

    ``family`` is ``"hubert"``, ``"wav2vec2"`` or ``"wavlm"``; WavLM gets
    ``encoder_total_num_heads`` / ``encoder_remaining_heads`` (all heads kept) and the
    relative-position bucket settings instead of ``encoder_num_heads`` / ``encoder_head_dim``.
    Divisibility is checked here so the error names the source field, not a model internal.
    """
    if num_heads < 1 or embed_dim % num_heads:
        raise ConversionError(f"{source}: hidden size {embed_dim} is not divisible by {num_heads} attention heads")
    if pos_conv_groups < 1 or embed_dim % pos_conv_groups:
        raise ConversionError(
            f"{source}: hidden size {embed_dim} is not divisible by {pos_conv_groups} positional-conv groups"
        )
    L = num_layers
    config: dict[str, Any] = dict(
        extractor_mode=extractor_mode,
        extractor_conv_layer_config=[[int(c), int(k), int(s)] for c, k, s in conv_layers],
        extractor_conv_bias=bool(conv_bias),
        encoder_embed_dim=int(embed_dim),
        encoder_projection_dropout=float(projection_dropout),
        encoder_pos_conv_kernel=int(pos_conv_kernel),
        encoder_pos_conv_groups=int(pos_conv_groups),
        encoder_num_layers=int(L),
        encoder_use_attention=[True] * L,
        encoder_use_feed_forward=[True] * L,
        encoder_attention_dropout=float(attention_dropout),
        encoder_ff_interm_features=[int(ff_interm_features)] * L,
        encoder_ff_interm_dropout=float(ff_interm_dropout),
        encoder_dropout=float(dropout),
        encoder_layer_norm_first=bool(layer_norm_first),
        encoder_layer_drop=float(layer_drop),
        aux_num_out=None,
        normalize_waveform=bool(normalize_waveform),
    )
    if family == "wavlm":
        config["encoder_total_num_heads"] = [int(num_heads)] * L
        config["encoder_remaining_heads"] = [list(range(num_heads)) for _ in range(L)]
        config["encoder_num_buckets"] = int(num_buckets if num_buckets is not None else 320)
        config["encoder_max_distance"] = int(max_distance if max_distance is not None else 800)
    else:
        config["encoder_num_heads"] = [int(num_heads)] * L
        config["encoder_head_dim"] = int(embed_dim // num_heads)
    config.update({switch: False for switch in PRUNE_SWITCHES})
    return config


def build_converted_model(config: Mapping[str, Any], state_dict: Mapping[str, Tensor], source: str) -> Wav2Vec2Model:
    """Build our model from ``config`` and load ``state_dict`` strictly; eval mode.

    ``feature_extractor.dummy_weight`` must be in ``state_dict`` (the converters add it), so
    nothing is left at its initial value. Raises :class:`CheckpointError` naming every
    missing / unexpected key and every shape mismatch.
    """
    model = build_model(config, source=source)
    filled = load_weights(model, state_dict, source=source)
    if filled:  # the converters always supply every key; anything filled in is a converter bug
        raise ConversionError(f"{source}: converted state dict lacks {', '.join(filled)}")
    return model.eval()


def save_converted(path: str | os.PathLike[str], model: Wav2Vec2Model, verify: bool = True, **provenance: Any) -> Path:
    """``save_model(path, model, **provenance)``; with ``verify``, re-read the file strictly.

    Provenance values must be plain Python values (str, numbers, lists, dicts) so the file
    stays loadable with ``torch.load(weights_only=True)``; re-reading checks exactly that.
    """
    path = save_model(path, model, **provenance)
    if verify:
        load_model(path, verbose=False)
    return path


from .fairseq import (  # noqa: E402  (after the helpers the submodules import)
    config_from_fairseq,
    convert_fairseq_checkpoint,
    convert_fairseq_state_dict,
    load_fairseq_checkpoint,
)
from .hf import config_from_hf, convert_hf_model, convert_hf_state_dict  # noqa: E402

__all__ = [
    "ConversionError",
    "build_converted_model",
    "config_from_fairseq",
    "config_from_hf",
    "convert_fairseq_checkpoint",
    "convert_fairseq_state_dict",
    "convert_hf_model",
    "convert_hf_state_dict",
    "load_fairseq_checkpoint",
    "make_config",
    "save_converted",
]
