"""MelHuBERT checkpoints: the released key names, the file format, and strict loading.

Released MelHuBERT files (and the compression repository's outputs) name parameters after
fairseq's modules; our model is built from the shared ``wav2vec2.components`` blocks, whose
names differ. The map below translates **module paths** (not parameter names), so every leaf
a module may hold passes through unchanged: ``weight``/``bias``, weight-norm ``weight_g``/
``weight_v``, ``torch.nn.utils.prune``'s ``weight_orig``/``weight_mask``, hard-concrete
``log_alpha``, or sub-modules a compression op adds under a mapped module.

==================================================  =========================================
ours (``MelHuBERTModel`` attribute path)            released (fairseq-style)
==================================================  =========================================
``encoder.pos_conv_embed.conv``                     ``encoder.pos_conv.0``
``encoder.layers.N.attention``                      ``encoder.layers.N.self_attn``
``encoder.layers.N.layer_norm``                     ``encoder.layers.N.self_attn_layer_norm``
``encoder.layers.N.feed_forward.intermediate_dense``  ``encoder.layers.N.fc1``
``encoder.layers.N.feed_forward.output_dense``      ``encoder.layers.N.fc2``
anything else (``pre_extract_proj``, ``encoder.layer_norm``, ``final_layer_norm``,
``final_proj``, ``mask_emb``)                        the same name
==================================================  =========================================

``MelHuBERTModel.state_dict()`` writes the released names and ``load_state_dict`` reads them
(our own attribute names are accepted too), so the original recipe works verbatim.

File format (a ``torch.save``\\ d dict, tensors and plain Python values only, so
``torch.load(weights_only=True)`` reads it)::

    {"model": released-name state dict,
     "Upstream_Config": {"melhubert": model config, "hubert": the same dict, "task": {"sequence_length": ...}},
     "Optimizer": optimizer state dict, "Step": updates done, "Runner": runner config}

Checkpoints written by ``train.py`` are Lightning checkpoints that carry these keys as well
(sharing the tensors, so nothing is stored twice): one file both resumes a run and serves as
``-i`` for any mode. Released files may also hold ``Args`` (an argparse Namespace, allowed
explicitly when reading), ``Pruned_heads`` (head pruning: per-layer head counts are derived
from it) and ``*_orig``/``*_mask`` pairs (weight pruning: folded into ``weight = orig * mask``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from .melhubert import MODULE_PATH_MAP, MelHuBERTConfig, MelHuBERTModel, to_internal_key, to_released_key
from .state_dicts import (
    CheckpointError,
    check_shapes,
    fold_pruning_masks,
    folded_state_dict,
    plain,
    read_checkpoint,
    write_atomically,
)

__all__ = [
    "CONFIG_SECTIONS", "MODULE_PATH_MAP", "CheckpointError", "ReleasedKey", "build_checkpoint", "config_from_checkpoint",
    "fold_pruning_masks", "folded_state_dict", "is_melhubert_checkpoint", "load_melhubert", "load_state_strictly",
    "model_from_checkpoint", "plain", "read_checkpoint", "released_layout", "save_checkpoint", "to_internal_key",
    "to_released_key", "upstream_config",
]

CONFIG_SECTIONS = ("melhubert", "hubert")  # where Upstream_Config keeps the model config (old files: hubert)

# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def is_melhubert_checkpoint(checkpoint: Mapping[str, Any]) -> bool:
    """True for a dict with ``model`` and ``Upstream_Config`` (ours, released, or a train.py checkpoint)."""
    return isinstance(checkpoint, Mapping) and "model" in checkpoint and "Upstream_Config" in checkpoint


def config_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> MelHuBERTConfig:
    """The model config of a MelHuBERT checkpoint, adjusted to the weights it holds.

    Reads ``Upstream_Config["melhubert"]`` (or ``["hubert"]`` in old files). Released
    head-pruned files keep the unpruned head count in the config and list removed heads in
    ``Pruned_heads`` (one ``{layer: [head, ...]}`` dict per pruning step); the per-layer
    counts are derived from it here.
    """
    upstream = checkpoint.get("Upstream_Config")
    if not isinstance(upstream, Mapping):
        raise CheckpointError(f"{source}: 'Upstream_Config' must be a dict, found {type(upstream).__name__}")
    section = next((name for name in CONFIG_SECTIONS if name in upstream), None)
    if section is None:
        raise CheckpointError(f"{source}: 'Upstream_Config' has no 'melhubert' (or 'hubert') section; found {sorted(upstream)}")
    raw = dict(upstream[section])
    pruned = checkpoint.get("Pruned_heads")
    if pruned and not isinstance(raw.get("encoder_attention_heads", 12), (list, tuple)):
        raw = _apply_pruned_heads(raw, pruned, source)
    try:
        return MelHuBERTConfig(raw)
    except ValueError as error:
        raise CheckpointError(f"{source}: Upstream_Config.{section}: {error}") from error


def _apply_pruned_heads(raw: dict[str, Any], pruned: Any, source: str) -> dict[str, Any]:
    heads = int(raw.get("encoder_attention_heads", 12))
    width = int(raw.get("encoder_embed_dim", 768))
    layers = int(raw.get("encoder_layers", 1))
    counts = [heads] * layers
    steps = pruned if isinstance(pruned, (list, tuple)) else [pruned]
    for step in steps:
        if not isinstance(step, Mapping):
            raise CheckpointError(f"{source}: 'Pruned_heads' entries must be {{layer: [heads]}} dicts, found {step!r}")
        for layer, removed in step.items():
            counts[int(layer)] -= len(removed)
    raw["encoder_attention_head_dim"] = raw.get("encoder_attention_head_dim") or width // heads
    raw["encoder_attention_heads"] = counts
    return raw


def load_state_strictly(model: MelHuBERTModel, state: Mapping[str, Tensor], source: str = "state_dict") -> None:
    """``model.load_state_dict(state)`` (strict) with errors that name the file and the released keys."""
    check_shapes(model, state, source)
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as error:
        raise CheckpointError(f"{source}: {error}") from error


def model_from_checkpoint(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> MelHuBERTModel:
    """Build the model a MelHuBERT checkpoint describes and load its weights strictly (eval mode)."""
    if not is_melhubert_checkpoint(checkpoint):
        raise CheckpointError(f"{source}: not a MelHuBERT checkpoint (needs 'model' and 'Upstream_Config'); found {sorted(checkpoint)}")
    model = MelHuBERTModel(config_from_checkpoint(checkpoint, source))
    load_state_strictly(model, checkpoint["model"], source)
    return model.eval()


def load_melhubert(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> MelHuBERTModel:
    """Read a MelHuBERT checkpoint file and return the model in eval mode (for feature extraction)."""
    return model_from_checkpoint(read_checkpoint(path, map_location), str(path))


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------


def upstream_config(model: MelHuBERTModel, task: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"melhubert": the model's current config, "hubert": the same, "task": task}`` as plain values.

    ``hubert`` is the section name of the original MelHuBERT code and of its README's loading
    snippet (``all_states["Upstream_Config"]["hubert"]``); both names hold one dict object, which
    ``torch.save`` stores once.
    """
    config = plain(model.current_config())
    return {"melhubert": config, "hubert": config, "task": plain(dict(task or {}))}


def build_checkpoint(
    model: MelHuBERTModel,
    task: Mapping[str, Any] | None = None,
    optimizer_state: Mapping[str, Any] | None = None,
    step: int = 0,
    runner: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict of the format above (tensors are the model's own, not copies)."""
    return {
        "model": model.state_dict(),
        "Upstream_Config": upstream_config(model, task),
        "Optimizer": dict(optimizer_state) if optimizer_state is not None else {},
        "Step": int(step),
        "Runner": plain(dict(runner or {})),
    }


def save_checkpoint(path: str | os.PathLike[str], model: MelHuBERTModel, **kwargs: Any) -> Path:
    """Write ``build_checkpoint(model, **kwargs)`` with CPU tensors, atomically."""
    checkpoint = build_checkpoint(model, **kwargs)
    checkpoint["model"] = {k: v.detach().cpu() for k, v in checkpoint["model"].items()}
    return write_atomically(checkpoint, path)


@dataclass(frozen=True)
class ReleasedKey:
    """One entry of the released state-dict layout (for documentation and tests)."""

    name: str
    shape: tuple[int, ...]


def released_layout(config: MelHuBERTConfig) -> list[ReleasedKey]:
    """The keys and shapes a released checkpoint of ``config`` holds, built from the config alone."""
    D, F_in = config.encoder_embed_dim, config.feat_emb_dim
    K, G = config.conv_pos, config.conv_pos_groups
    keys: list[ReleasedKey] = []
    if F_in != D:
        keys += [ReleasedKey("pre_extract_proj.weight", (D, F_in)), ReleasedKey("pre_extract_proj.bias", (D,))]
    keys += [
        ReleasedKey("encoder.pos_conv.0.bias", (D,)),
        ReleasedKey("encoder.pos_conv.0.weight_g", (1, 1, K)),
        ReleasedKey("encoder.pos_conv.0.weight_v", (D, D // G, K)),
        ReleasedKey("encoder.layer_norm.weight", (D,)),
        ReleasedKey("encoder.layer_norm.bias", (D,)),
    ]
    for i, (heads, ffn) in enumerate(zip(config.heads_per_layer, config.ffn_per_layer)):
        p = f"encoder.layers.{i}."
        inner = heads * config.head_dim
        if heads:
            for name in ("k_proj", "v_proj", "q_proj"):
                keys += [ReleasedKey(f"{p}self_attn.{name}.weight", (inner, D)), ReleasedKey(f"{p}self_attn.{name}.bias", (inner,))]
            keys += [ReleasedKey(f"{p}self_attn.out_proj.weight", (D, inner)), ReleasedKey(f"{p}self_attn.out_proj.bias", (D,))]
        keys += [ReleasedKey(f"{p}self_attn_layer_norm.weight", (D,)), ReleasedKey(f"{p}self_attn_layer_norm.bias", (D,))]
        if ffn:
            keys += [ReleasedKey(f"{p}fc1.weight", (ffn, D)), ReleasedKey(f"{p}fc1.bias", (ffn,)),
                     ReleasedKey(f"{p}fc2.weight", (D, ffn)), ReleasedKey(f"{p}fc2.bias", (D,))]
        keys += [ReleasedKey(f"{p}final_layer_norm.weight", (D,)), ReleasedKey(f"{p}final_layer_norm.bias", (D,))]
    keys += [ReleasedKey("final_proj.weight", (config.num_cluster, D)), ReleasedKey("final_proj.bias", (config.num_cluster,))]
    if config.learnable_mask_emb:
        keys.append(ReleasedKey("mask_emb", (F_in if config.mask_before_proj else D,)))
    return keys
