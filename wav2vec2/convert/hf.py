"""Hugging Face ``transformers`` HuBERT / wav2vec 2.0 / WavLM -> our config and state dict.

``convert_hf_model("facebook/hubert-base-ls960")`` downloads by hub id (a local directory
written by ``save_pretrained`` is read offline) and returns ``(config, state_dict)`` ready for
``wav2vec2.convert.build_converted_model``. Task checkpoints (``*ForCTC``,
``*ForPreTraining``, ``*ForSequenceClassification`` ...) are read through their base model
class, which ``from_pretrained`` supports; their heads are dropped and reported.

What is dropped, and why (everything else must map, or conversion fails):

- ``masked_spec_embed``: the learned vector that replaces masked frames during pre-training /
  SpecAugment. Inference never uses it and our model has no masking.
- Task heads outside the base model (``lm_head``, ``projector``, ``classifier``,
  ``layer_weights``, ``quantizer``, ``project_hid``, ``project_q``, ``tdnn``, the x-vector
  ``feature_extractor`` linear, ``objective``): they sit on top of the encoder whose
  features we convert.

Index conventions (for parity checks): transformers' ``hidden_states[0]`` is taken after the
positional convolution (and, for post-norm models, the encoder LayerNorm); our ``h0`` is the
feature-projection output before it. Our ``h_i`` (i >= 1) equals ``hidden_states[i]``, except
that for stable-layer-norm (pre-norm) models transformers applies the final LayerNorm to the
last entry, which our ``extract_features`` leaves out (``model(wave)`` applies it).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from . import ConversionError, make_config, rename_weight

#: model_type -> the transformers base class that holds the encoder, and its config class.
BASE_CLASSES: dict[str, str] = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}
CONFIG_CLASSES: dict[str, str] = {"hubert": "HubertConfig", "wav2vec2": "Wav2Vec2Config", "wavlm": "WavLMConfig"}

#: Attribute names under which the task classes keep their base model.
BASE_PREFIXES: tuple[str, ...] = ("hubert.", "wav2vec2.", "wavlm.")

#: Base-model weights used only in training (see the module docstring).
TRAINING_ONLY_KEYS: frozenset[str] = frozenset({"masked_spec_embed"})

#: Top-level modules of the task classes (outside the base model), dropped with a report.
HEAD_MODULES: frozenset[str] = frozenset(
    {"lm_head", "projector", "classifier", "layer_weights", "quantizer", "project_hid", "project_q", "tdnn", "objective"}
)
#: The x-vector head's linear is called ``feature_extractor`` too, but sits at top level with
#: no ``conv_layers``; only these exact names are treated as head weights.
_XVECTOR_LINEAR = frozenset({"feature_extractor.weight", "feature_extractor.bias"})

_POS_CONV = "encoder.transformer.pos_conv_embed.conv"

#: Explicit HF base-model name -> our name table (first match wins).
_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r) for p, r in [
        (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)$", r"feature_extractor.conv_layers.\1.conv.\2"),
        (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)$", r"feature_extractor.conv_layers.\1.layer_norm.\2"),
        (r"^feature_projection\.(layer_norm|projection)\.(weight|bias)$", r"encoder.feature_projection.\1.\2"),
        # Positional conv: old-style weight norm (weight_g / weight_v) or the parametrization
        # names newer torch writes (original0 = g, original1 = v); both land on our g / v.
        (r"^encoder\.pos_conv_embed\.conv\.(weight_g|weight_v|bias)$", _POS_CONV + r".\1"),
        (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", _POS_CONV + ".weight_g"),
        (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", _POS_CONV + ".weight_v"),
        (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.transformer.layer_norm.\1"),
        (r"^encoder\.layers\.(\d+)\.attention\.(q_proj|k_proj|v_proj|out_proj)\.(weight|bias)$",
         r"encoder.transformer.layers.\1.attention.\2.\3"),
        # WavLM: bucket embedding (layer 0 only) and the gated relative-position parameters.
        (r"^encoder\.layers\.(\d+)\.attention\.rel_attn_embed\.weight$", r"encoder.transformer.layers.\1.attention.rel_attn_embed.weight"),
        (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_linear\.(weight|bias)$",
         r"encoder.transformer.layers.\1.attention.gru_rel_pos_linear.\2"),
        (r"^encoder\.layers\.(\d+)\.attention\.gru_rel_pos_const$", r"encoder.transformer.layers.\1.attention.gru_rel_pos_const"),
        (r"^encoder\.layers\.(\d+)\.(layer_norm|final_layer_norm)\.(weight|bias)$", r"encoder.transformer.layers.\1.\2.\3"),
        (r"^encoder\.layers\.(\d+)\.feed_forward\.(intermediate_dense|output_dense)\.(weight|bias)$",
         r"encoder.transformer.layers.\1.feed_forward.\2.\3"),
    ]
]

_MISSING = object()


def _getter(hf_config: Any, source: str = "HF config"):
    """Field access for a ``PretrainedConfig`` or a plain dict (e.g. a parsed config.json).

    ``get(name)`` without a default raises :class:`ConversionError` naming a missing field.
    """
    def get(name: str, default: Any = _MISSING) -> Any:
        if isinstance(hf_config, Mapping):
            value = hf_config.get(name, _MISSING)
        else:
            value = getattr(hf_config, name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ConversionError(f"{source}: config lacks the field {name!r}")
            return default
        return value
    return get


def detect_family(hf_config: Any, source: str = "HF config") -> str:
    """``"hubert"``, ``"wav2vec2"`` or ``"wavlm"`` from ``model_type``; anything else is refused."""
    get = _getter(hf_config, source)
    model_type = get("model_type", None)
    if model_type in BASE_CLASSES:
        return str(model_type)
    architectures = get("architectures", None)
    raise ConversionError(
        f"{source}: unsupported model_type {model_type!r} (architectures {architectures}); "
        f"supported: {', '.join(sorted(BASE_CLASSES))}"
    )


def config_from_hf(
    hf_config: Any,
    do_normalize: Optional[bool] = None,
    normalize_waveform: Optional[bool] = None,
    source: str = "HF config",
) -> dict[str, Any]:
    """Map a transformers config (object, or a config.json dict) to the DPHuBERT config dict.

    A dict is read through its transformers config class, so absent fields take
    transformers' defaults, exactly as ``from_pretrained`` would.

    ``normalize_waveform``: an explicit choice wins; otherwise ``do_normalize`` (the
    ``preprocessor_config.json`` value: transformers normalises in its feature extractor, we
    inside the model); otherwise True exactly for stable-layer-norm (Large-style) models.

    Raises :class:`ConversionError` naming the field for settings our model cannot represent.
    """
    family = detect_family(hf_config, source)
    if isinstance(hf_config, Mapping):
        from ..optional import require

        transformers = require("transformers", "Hugging Face conversion")

        fields = {k: v for k, v in hf_config.items() if k != "model_type"}
        try:
            hf_config = getattr(transformers, CONFIG_CLASSES[family])(**fields)
        except Exception as error:  # transformers validates configs on construction (own error types)
            raise ConversionError(f"{source}: transformers rejects this config ({error})") from error
    get = _getter(hf_config, source)

    def refuse(field: str, value: Any, why: str) -> ConversionError:
        return ConversionError(f"{source}: unsupported {field}={value!r} ({why})")

    norm = get("feat_extract_norm", "group")
    modes = {"group": "group_norm", "layer": "layer_norm"}
    if norm not in modes:
        raise refuse("feat_extract_norm", norm, "expected 'group' or 'layer'")
    for field in ("feat_extract_activation", "hidden_act"):
        value = get(field, "gelu")
        if value != "gelu":  # our blocks use exact (erf) GELU, which is transformers' "gelu"
            raise refuse(field, value, "only 'gelu' is supported")
    if get("conv_pos_batch_norm", False):
        raise refuse("conv_pos_batch_norm", True, "the positional conv must be weight-normed, not batch-normed")
    if family == "hubert" and not get("feat_proj_layer_norm", True):
        raise refuse("feat_proj_layer_norm", False, "our feature projection always has a LayerNorm")
    if get("add_adapter", False):
        raise refuse("add_adapter", True, "output adapters are not part of our model")
    if get("adapter_attn_dim", None) is not None:
        raise refuse("adapter_attn_dim", get("adapter_attn_dim"), "attention adapters are not part of our model")
    eps = float(get("layer_norm_eps", 1e-5))
    if not math.isclose(eps, 1e-5, rel_tol=1e-6):
        raise refuse("layer_norm_eps", eps, "our LayerNorms use eps=1e-5")

    conv_dim, conv_kernel, conv_stride = (list(get(f)) for f in ("conv_dim", "conv_kernel", "conv_stride"))
    if not len(conv_dim) == len(conv_kernel) == len(conv_stride):
        raise refuse("conv_dim/conv_kernel/conv_stride", (len(conv_dim), len(conv_kernel), len(conv_stride)), "lengths differ")
    num_feat = get("num_feat_extract_layers", len(conv_dim))
    if num_feat != len(conv_dim):
        raise refuse("num_feat_extract_layers", num_feat, f"conv_dim has {len(conv_dim)} entries")

    hidden = int(get("hidden_size"))
    for field in ("num_attention_heads", "num_conv_pos_embedding_groups"):
        if int(get(field)) < 1 or hidden % int(get(field)):
            raise refuse(field, get(field), f"hidden_size {hidden} is not divisible by it")

    stable = bool(get("do_stable_layer_norm", False))
    if normalize_waveform is None:
        normalize_waveform = bool(do_normalize) if do_normalize is not None else stable

    wavlm = family == "wavlm"
    return make_config(
        source=source,
        family=family,
        extractor_mode=modes[norm],
        conv_layers=[(int(c), int(k), int(s)) for c, k, s in zip(conv_dim, conv_kernel, conv_stride)],
        conv_bias=bool(get("conv_bias", False)),
        embed_dim=hidden,
        projection_dropout=float(get("feat_proj_dropout", 0.0)),
        pos_conv_kernel=int(get("num_conv_pos_embeddings")),
        pos_conv_groups=int(get("num_conv_pos_embedding_groups")),
        num_layers=int(get("num_hidden_layers")),
        num_heads=int(get("num_attention_heads")),
        ff_interm_features=int(get("intermediate_size")),
        attention_dropout=float(get("attention_dropout", 0.0)),
        ff_interm_dropout=float(get("activation_dropout", 0.0)),
        dropout=float(get("hidden_dropout", 0.0)),
        layer_norm_first=stable,
        layer_drop=float(get("layerdrop", 0.0)),
        normalize_waveform=bool(normalize_waveform),
        num_buckets=int(get("num_buckets", 320)) if wavlm else None,
        max_distance=int(get("max_bucket_distance", 800)) if wavlm else None,
    )


def _is_head_key(key: str) -> bool:
    return key in _XVECTOR_LINEAR or key.split(".", 1)[0] in HEAD_MODULES


def convert_hf_state_dict(
    hf_state_dict: Mapping[str, Tensor],
    source: str = "HF state dict",
    info: Optional[dict[str, Any]] = None,
) -> dict[str, Tensor]:
    """Rename a transformers base-model (or task-model) state dict to our names.

    Accepts the base layout (``encoder.layers.0...``) or a task layout whose base model sits
    under ``hubert.`` / ``wav2vec2.`` / ``wavlm.``; head and training-only weights are
    dropped and listed in ``info["dropped"]``. Any other unrecognised key is an error naming
    it. Floating tensors are returned as float32 (half-precision checkpoints are upcast,
    which is exact). Adds ``feature_extractor.dummy_weight`` (ones). Missing weights and
    shape mismatches are caught when the result is loaded (``build_converted_model``).
    """
    prefixes = sorted({p for key in hf_state_dict for p in BASE_PREFIXES if key.startswith(p)})
    if len(prefixes) > 1:
        raise ConversionError(f"{source}: keys under several base-model prefixes {prefixes}")
    prefix = prefixes[0] if prefixes else ""

    dropped: list[str] = []
    unknown: list[str] = []
    out: dict[str, Tensor] = {}
    for key, value in hf_state_dict.items():
        if prefix:
            if not key.startswith(prefix):
                (dropped if _is_head_key(key) else unknown).append(key)
                continue
            name = key[len(prefix):]
        else:
            name = key
        if name in TRAINING_ONLY_KEYS:
            dropped.append(key)
            continue
        if not rename_weight(out, key, name, value, _KEY_RULES, source):
            unknown.append(key)
    if unknown:
        raise ConversionError(f"{source}: unrecognised keys {', '.join(sorted(unknown))}")

    conv_indices = [int(m.group(1)) for k in out if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))]
    if not conv_indices:
        raise ConversionError(f"{source}: no feature_extractor.conv_layers.N.conv.weight keys")
    last = out[f"feature_extractor.conv_layers.{max(conv_indices)}.conv.weight"]
    out["feature_extractor.dummy_weight"] = torch.ones(last.shape[0])  # frozen channel scale, ones until pruning
    if info is not None:
        info.setdefault("dropped", []).extend(sorted(dropped))
    return out


def read_do_normalize(
    model_id_or_dir: str,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
) -> tuple[Optional[bool], str]:
    """``do_normalize`` of ``preprocessor_config.json`` (None when absent) and where it came from."""
    path: Optional[str]
    if os.path.isdir(model_id_or_dir):
        candidate = Path(model_id_or_dir) / "preprocessor_config.json"
        path = str(candidate) if candidate.is_file() else None
    else:
        from transformers.utils import cached_file

        try:
            path = cached_file(
                model_id_or_dir, "preprocessor_config.json", revision=revision, cache_dir=cache_dir,
                local_files_only=local_files_only, _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
            )
        except OSError:  # e.g. gated / unreachable: fall back to the family default, and say so
            path = None
    if path is None:
        return None, "no preprocessor_config.json"
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("do_normalize")
    if value is None:
        return None, "preprocessor_config.json without do_normalize"
    return bool(value), "preprocessor_config.json do_normalize"


def convert_hf_model(
    model_id_or_dir: str,
    normalize_waveform: Optional[bool] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
    info: Optional[dict[str, Any]] = None,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Read a transformers HuBERT / wav2vec2 / WavLM checkpoint -> ``(config, state_dict)``.

    The config is checked (and refused with the field named) before any weights are read.
    ``from_pretrained`` loads the base class; weights it reports as missing (which it would
    silently initialise at random), mismatched, or unexpected outside the known heads are
    errors. ``info`` (optional dict) receives ``model_type``, ``dropped`` keys and
    ``normalize_waveform_from``.
    """
    from ..optional import require

    transformers = require("transformers", "Hugging Face conversion")

    source = str(model_id_or_dir)
    hub_kwargs: dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    hf_config = transformers.AutoConfig.from_pretrained(source, **hub_kwargs)
    family = detect_family(hf_config, source)
    if normalize_waveform is None:
        do_normalize, where = read_do_normalize(source, **hub_kwargs)
        if do_normalize is None:
            where += "; default for " + ("stable-layer-norm" if getattr(hf_config, "do_stable_layer_norm", False) else "post-norm") + " models"
    else:
        do_normalize, where = None, "explicit choice"
    config = config_from_hf(hf_config, do_normalize=do_normalize, normalize_waveform=normalize_waveform, source=source)

    model_class = getattr(transformers, BASE_CLASSES[family])
    # ignore_mismatched_sizes: transformers then reports mis-shaped weights (re-initialised)
    # instead of raising without naming them; the check below refuses them, by name.
    hf_model, loading = model_class.from_pretrained(
        source, config=hf_config, output_loading_info=True, ignore_mismatched_sizes=True, **hub_kwargs
    )
    missing = sorted(k for k in loading.get("missing_keys", ()) if k not in TRAINING_ONLY_KEYS)
    if missing:
        raise ConversionError(
            f"{source}: checkpoint lacks weights {', '.join(missing)} (transformers would initialise them randomly)"
        )
    mismatched = sorted(" ".join(map(str, k)) if isinstance(k, tuple) else str(k) for k in loading.get("mismatched_keys", ()))
    if mismatched:
        raise ConversionError(f"{source}: shape mismatch for {', '.join(mismatched)}")
    unexpected = sorted(loading.get("unexpected_keys", ()))
    stray = [k for k in unexpected if not _is_head_key(k) and k not in TRAINING_ONLY_KEYS]
    if stray:
        raise ConversionError(f"{source}: checkpoint weights not used by {BASE_CLASSES[family]}: {', '.join(stray)}")

    local: dict[str, Any] = {"dropped": list(unexpected)}
    state_dict = convert_hf_state_dict(hf_model.state_dict(), source=source, info=local)
    if info is not None:
        info.update(model_type=family, dropped=local["dropped"], normalize_waveform_from=where,
                    transformers_version=transformers.__version__)
    return config, state_dict
