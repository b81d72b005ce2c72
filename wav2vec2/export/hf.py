"""Hugging Face ``transformers`` folders from toolkit models, and back.

:func:`save_hf` writes ``config.json`` + ``model.safetensors`` + ``preprocessor_config.json``:

- a model whose structure fits a stock class (every layer keeps its attention and FFN blocks
  with the same heads and units, ``heads * head_dim == hidden``, WavLM layers keep all their
  heads, the channel scale ``dummy_weight`` is all ones) becomes a stock ``HubertModel`` /
  ``Wav2Vec2Model`` / ``WavLMModel`` folder: ``AutoModel.from_pretrained(folder)``;
- any other model ships ``modeling_speech_ssl_compress.py`` (registered through ``auto_map``)
  whose config carries per-layer heads / FFN units / skipped blocks in ``per_layer_config``:
  ``AutoModel.from_pretrained(folder, trust_remote_code=True)``.

Pruned CNN channels fit the stock classes (``conv_dim`` is a per-layer list). Waveform
normalisation is the feature extractor's job in ``transformers``: ``preprocessor_config.json``
has ``do_normalize`` equal to the model's ``normalize_waveform`` (its epsilon is 1e-7, ours
1e-5). The stock classes' first GroupNorm counts padded samples (ours and the shipped code use
valid samples only), so stock folders match the toolkit on unpadded input.

:func:`load_hf` reads either kind of folder back into a toolkit ``Wav2Vec2Model``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..model import Wav2Vec2Model
from .graph import dense_copy
from ..optional import require

MODELING_FILE = Path(__file__).with_name("modeling_speech_ssl_compress.py")
REMOTE_MODEL_TYPE = "speech_ssl_compress"
STOCK_FAMILIES = ("hubert", "wav2vec2", "wavlm")


class HFExportError(ValueError):
    """A model or folder that cannot be exported / imported; the message names the reason."""


def _layers(model: Wav2Vec2Model) -> list[nn.Module]:
    return list(model.encoder.transformer.layers)


def stock_misfits(model: Wav2Vec2Model) -> list[str]:
    """Why ``model`` does not fit a stock ``transformers`` class (empty list: it fits)."""
    reasons: list[str] = []
    layers = _layers(model)
    width = model.encoder.feature_projection.projection.out_features
    if any(layer.attention is None for layer in layers):
        reasons.append("pruned-away attention blocks")
    if any(layer.feed_forward is None for layer in layers):
        reasons.append("pruned-away FFN blocks")
    heads = {layer.attention.num_heads for layer in layers if layer.attention is not None}
    if len(heads) > 1:
        reasons.append(f"per-layer attention heads {sorted(heads)}")
    for layer in layers:
        attention = layer.attention
        if attention is not None and attention.num_heads * attention.head_dim != width:
            reasons.append(f"heads x head width {attention.num_heads} x {attention.head_dim} != hidden size {width}")
            break
    units = {layer.feed_forward.interm_features for layer in layers if layer.feed_forward is not None}
    if len(units) > 1:
        reasons.append(f"per-layer FFN widths {sorted(units)}")
    if model.is_wavlm:
        totals = set(model.config["encoder_total_num_heads"] if isinstance(model.config["encoder_total_num_heads"], list)
                     else [model.config["encoder_total_num_heads"]])
        if len(totals) > 1:
            reasons.append("per-layer WavLM head counts")
        for layer in layers:
            attention = layer.attention
            if attention is not None and attention.remaining_heads != list(range(attention.total_num_heads)):
                reasons.append("WavLM layers keeping a subset of their heads")
                break
    if not torch.all(model.feature_extractor.dummy_weight == 1.0):
        reasons.append("scaled CNN output channels (dummy_weight)")
    if any(type(m).__name__ == "HardConcrete" for m in model.modules()):
        reasons.append("hard-concrete gates (prune the model first)")
    return reasons


def _conv(model: Wav2Vec2Model) -> tuple[list[int], list[int], list[int]]:
    blocks = list(model.feature_extractor.conv_layers)
    return [b.out_channels for b in blocks], [b.kernel_size for b in blocks], [b.stride for b in blocks]


def _common_fields(model: Wav2Vec2Model) -> dict[str, Any]:
    cfg = model.config
    conv_dim, conv_kernel, conv_stride = _conv(model)
    return dict(
        conv_dim=conv_dim, conv_kernel=conv_kernel, conv_stride=conv_stride,
        conv_bias=bool(cfg["extractor_conv_bias"]),
        hidden_size=int(cfg["encoder_embed_dim"]),
        num_hidden_layers=int(cfg["encoder_num_layers"]),
        num_conv_pos_embeddings=int(cfg["encoder_pos_conv_kernel"]),
        num_conv_pos_embedding_groups=int(cfg["encoder_pos_conv_groups"]),
        do_stable_layer_norm=bool(cfg["encoder_layer_norm_first"]),
        hidden_dropout=float(cfg["encoder_dropout"]),
        attention_dropout=float(cfg["encoder_attention_dropout"]),
        activation_dropout=float(cfg["encoder_ff_interm_dropout"]),
        feat_proj_dropout=float(cfg["encoder_projection_dropout"]),
        layerdrop=float(cfg["encoder_layer_drop"]),
        layer_norm_eps=1e-5,
    )


def stock_config(model: Wav2Vec2Model, family: str) -> Any:
    """The ``HubertConfig`` / ``Wav2Vec2Config`` / ``WavLMConfig`` of a model that fits one."""
    transformers = require("transformers", "Hugging Face export")
    layers = _layers(model)
    fields = _common_fields(model)
    fields.update(
        feat_extract_norm="group" if model.config["extractor_mode"] == "group_norm" else "layer",
        num_attention_heads=layers[0].attention.num_heads if layers else 1,
        intermediate_size=layers[0].feed_forward.interm_features if layers else 1,
        hidden_act="gelu", feat_extract_activation="gelu",
    )
    if family == "wavlm":
        fields.update(num_buckets=int(model.config["encoder_num_buckets"]),
                      max_bucket_distance=int(model.config["encoder_max_distance"]))
    if family == "hubert":
        fields["feat_proj_layer_norm"] = True
    config_class = {"hubert": "HubertConfig", "wav2vec2": "Wav2Vec2Config", "wavlm": "WavLMConfig"}[family]
    return getattr(transformers, config_class)(**fields)


def remote_config(model: Wav2Vec2Model, family: str) -> Any:
    """The shipped class's config: global values plus sparse ``per_layer_config`` overrides."""
    module = _modeling_module()
    from ..state_dicts import plain

    layers = _layers(model)
    settings = []
    for layer in layers:
        entry: dict[str, Any] = {"skip": []}
        if layer.attention is None:
            entry["skip"].append("attention")
        else:
            entry["num_attention_heads"] = layer.attention.num_heads
            if model.is_wavlm:
                entry["remaining_heads"] = list(layer.attention.remaining_heads)
        if layer.feed_forward is None:
            entry["skip"].append("feed_forward")
        else:
            entry["intermediate_size"] = layer.feed_forward.interm_features
        settings.append(entry)
    heads = [s["num_attention_heads"] for s in settings if "num_attention_heads" in s] or [1]
    units = [s["intermediate_size"] for s in settings if "intermediate_size" in s] or [1]
    default_heads, default_units = max(set(heads), key=heads.count), max(set(units), key=units.count)
    fields = _common_fields(model)
    fields.update(family=family, extractor_mode=model.config["extractor_mode"],
                  num_attention_heads=default_heads, intermediate_size=default_units)
    if model.is_wavlm:
        totals = model.config["encoder_total_num_heads"]
        total = int(totals[0] if isinstance(totals, list) else totals)
        fields.update(total_num_heads=total, attention_head_dim=fields["hidden_size"] // total,
                      remaining_heads=list(range(total)), num_buckets=int(model.config["encoder_num_buckets"]),
                      max_bucket_distance=int(model.config["encoder_max_distance"]))
    else:
        fields["attention_head_dim"] = int(model.config["encoder_head_dim"])
    overrides: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(settings):
        diff = {k: v for k, v in entry.items() if k != "skip" and v != fields.get(k)}
        if entry["skip"]:
            diff["skip"] = entry["skip"]
        if diff:
            overrides[str(index)] = diff
    fields["toolkit_config"] = plain(model.config)
    if overrides:
        fields["per_layer_config"] = overrides
    return module.SpeechSSLCompressConfig(**fields)


def _modeling_module() -> Any:
    """The shipped modeling file, imported under its own name (as ``trust_remote_code`` would)."""
    import importlib.util
    import sys

    require("transformers", "Hugging Face export")
    name = MODELING_FILE.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODELING_FILE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return sys.modules[name]


def _stock_state_dict(hf_model: nn.Module, model: Wav2Vec2Model, source: str) -> dict[str, Tensor]:
    """Our weights under the stock class's names, matched through the importer's key table."""
    from ..convert import rename_weight
    from ..convert.hf import _KEY_RULES

    hf_state = hf_model.state_dict()
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    for hf_key, value in hf_state.items():
        if hf_key == "masked_spec_embed":
            # Used only by SpecAugment during fine-tuning; the toolkit has none. Zeros, so
            # nothing random hides in the file.
            out[hf_key] = torch.zeros_like(value)
            continue
        renamed: dict[str, Tensor] = {}
        if not rename_weight(renamed, hf_key, hf_key, value, _KEY_RULES, source):
            raise HFExportError(f"{source}: no toolkit name for the stock weight {hf_key}")
        ours_key = next(iter(renamed))
        if ours_key not in ours:
            raise HFExportError(f"{source}: the stock class has {hf_key} ({ours_key}), which the model lacks")
        out[hf_key] = ours[ours_key].detach().clone()
    return out


def save_hf(
    model: Wav2Vec2Model,
    folder: str | os.PathLike[str],
    family: Optional[str] = None,
    force_remote_code: bool = False,
) -> dict[str, Any]:
    """Write ``model`` as a ``transformers`` folder; returns ``{"kind": "stock"|"remote", "class", "reasons", "family"}``.

    ``family``: ``"hubert"`` (default for the wav2vec 2.0 / HuBERT architecture, which is the
    same network) or ``"wav2vec2"``; WavLM models are always ``"wavlm"``. Low-rank factors are
    multiplied back into dense weights. The folder is written in a temporary sibling and
    renamed, so a failure leaves no half-written export.
    """
    transformers = require("transformers", "Hugging Face export")
    model = dense_copy(model).eval()
    if model.aux is not None:
        raise HFExportError("models with an aux head are not exported (the head is not part of the encoder)")
    family = "wavlm" if model.is_wavlm else (family or "hubert")
    if family not in STOCK_FAMILIES or (family == "wavlm") != model.is_wavlm:
        raise HFExportError(f"family {family!r} does not match the model ({'WavLM' if model.is_wavlm else 'wav2vec2/HuBERT'})")
    reasons = stock_misfits(model)
    if any("gates" in r for r in reasons):
        raise HFExportError("model still has hard-concrete gates: prune it first (wav2vec2 model.prune())")
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    if reasons or force_remote_code:
        config = remote_config(model, family)
        hf_model = _modeling_module().SpeechSSLCompressModel(config)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        kind, class_name = "remote", "SpeechSSLCompressModel"
    else:
        config = stock_config(model, family)
        class_name = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}[family]
        hf_model = getattr(transformers, class_name)(config)
        state = _stock_state_dict(hf_model, model, "export")
        kind = "stock"
    hf_model.load_state_dict(state, strict=True)  # every weight mapped, none left at its random init
    hf_model.eval()
    hf_model.save_pretrained(str(tmp))
    _write_preprocessor(tmp, bool(model.normalize_waveform))
    if kind == "remote" and not (tmp / MODELING_FILE.name).is_file():
        shutil.copy(MODELING_FILE, tmp / MODELING_FILE.name)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return {"kind": kind, "class": class_name, "reasons": reasons, "family": family}


def _write_preprocessor(folder: Path, do_normalize: bool) -> None:
    transformers = require("transformers", "Hugging Face export")
    extractor = transformers.Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=do_normalize, return_attention_mask=True
    )
    extractor.save_pretrained(str(folder))


def load_hf(folder: str | os.PathLike[str]) -> Wav2Vec2Model:
    """A toolkit model from an exported (or any stock HuBERT / wav2vec 2.0 / WavLM) folder, eval mode."""
    from ..checkpoint import build_model, load_weights
    from ..convert import build_converted_model
    from ..convert.hf import convert_hf_model

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    document = json.loads(config_path.read_text(encoding="utf-8"))
    if document.get("model_type") == REMOTE_MODEL_TYPE:
        toolkit = document.get("toolkit_config")
        if not isinstance(toolkit, dict):
            raise HFExportError(f"{config_path}: a {REMOTE_MODEL_TYPE} config without 'toolkit_config'")
        from safetensors.torch import load_file

        model = build_model(toolkit, source=str(config_path))
        load_weights(model, load_file(str(folder / "model.safetensors")), source=str(folder / "model.safetensors"))
        return model.eval()
    config, state_dict = convert_hf_model(str(folder), local_files_only=True)
    return build_converted_model(config, state_dict, source=str(folder)).eval()
