"""MelHuBERT: HuBERT-style masked prediction on log-Mel input, on the shared transformer.

Shapes: ``B`` batch, ``T`` frames (10 ms, or 20 ms after stacking), ``F`` input dims
(40 or 80 = ``feat_emb_dim``), ``D`` model width, ``C`` clusters, ``N`` layers.

The encoder is ``wav2vec2.components.Transformer`` built from the same ``EncoderLayer`` /
``SelfAttention`` / ``FeedForward`` blocks as the waveform family, so every compression
operation works on both. What MelHuBERT adds around it:

* ``pre_extract_proj``: Linear(F -> D), omitted when F == D;
* span masking of the Mel input before the projection (``mask_emb``: constant 0 = the
  global mean of normalised features, or a learnt vector with ``learnable_mask_emb``);
* ``final_proj``: Linear(D -> C) logits of the K-means cluster ids, cross-entropy on frames
  that are masked and not padding.

The call contract of the original code is kept::

    model(mel, pad_mask, cluster_label=None, no_pred=False, mask=False, get_hidden=False,
          teacher_mask_indices=None)

``no_pred=True`` returns ``(hidden, None, None, None, None, layer_hiddens, pre_feat)``;
otherwise ``(hidden, logit_m, logit_u, label_m, label_u, layer_hiddens, pre_feat,
mask_indices)``. ``pad_mask`` is float ``(B, T)``, 1 = real frame. Unlike the original, the
caller's input tensor is never modified in place.

``extract_features(mel, lengths)`` mirrors ``Wav2Vec2Model.extract_features`` (``[h0..hN]``,
h0 = the projected input), so distillation and probing code treats both families alike.
Like every ``nn.Module`` it follows train/eval mode: call ``model.eval()`` before extracting
features (``wav2vec2.melhubert_checkpoint.load_melhubert`` returns the model in eval mode).

State dicts use the released (fairseq-style) key names (``MODULE_PATH_MAP`` below); the file
format is ``wav2vec2.melhubert_checkpoint``.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import components as c
from .low_rank import apply_low_rank_structure
from .masking import span_mask
from .state_dicts import fold_pruning_masks

IGNORE_INDEX = -100

# (our module path, released module path); "{i}" is a layer index.
MODULE_PATH_MAP: tuple[tuple[str, str], ...] = (
    ("encoder.pos_conv_embed.conv", "encoder.pos_conv.0"),
    ("encoder.layers.{i}.attention", "encoder.layers.{i}.self_attn"),
    ("encoder.layers.{i}.layer_norm", "encoder.layers.{i}.self_attn_layer_norm"),
    ("encoder.layers.{i}.feed_forward.intermediate_dense", "encoder.layers.{i}.fc1"),
    ("encoder.layers.{i}.feed_forward.output_dense", "encoder.layers.{i}.fc2"),
)


def _compile(template: str) -> re.Pattern[str]:
    # Match at the start of the key and only at a path-segment boundary, so that
    # "self_attn" never matches the start of "self_attn_layer_norm".
    pattern = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(rf"^{pattern}(?=\.|$)")


_TO_RELEASED = [(_compile(ours), released) for ours, released in MODULE_PATH_MAP]
_TO_OURS = [(_compile(released), ours) for ours, released in MODULE_PATH_MAP]


def _translate(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, target in rules:
        match = pattern.match(key)
        if match:
            replacement = target.replace("{i}", match.group("i")) if "{i}" in target else target
            return replacement + key[match.end():]
    return key


def to_released_key(key: str) -> str:
    """Our parameter / module path -> the released name (``encoder.layers.0.attention.q_proj.weight``
    -> ``encoder.layers.0.self_attn.q_proj.weight``); unmapped paths are returned unchanged."""
    return _translate(key, _TO_RELEASED)


def to_internal_key(key: str) -> str:
    """Released name -> our attribute path (the inverse of ``to_released_key``)."""
    return _translate(key, _TO_OURS)


# The original MelHuBERT code's defaults, used when a key is missing, so its yaml files and
# checkpoints (which omit keys at their defaults) build the same model.
DEFAULTS: dict[str, Any] = {
    "feat_emb_dim": 40,
    "pos_emb_type": "conv",
    "pos_conv_depth": 1,
    "conv_pos": 128,
    "conv_pos_groups": 16,
    "encoder_layers": 1,
    "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072,
    "encoder_attention_heads": 12,
    "encoder_attention_head_dim": None,  # ours: needed once heads differ per layer
    "activation_fn": "gelu",
    "layer_norm_first": False,
    "attention_type": "original",
    "num_cluster": 512,
    "final_dim": 40,  # unused by the original too
    "pred_masked_weight": 1.0,
    "pred_nomask_weight": 0.0,
    "skip_masked": False,
    "skip_nomask": True,
    "mask_prob": 0.8,
    "mask_length": 10,
    "mask_selection": "static",
    "mask_other": 0.0,
    "no_mask_overlap": False,
    "mask_min_space": 1,
    "learnable_mask_emb": False,
    "mask_before_proj": True,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "activation_dropout": 0.1,
    "encoder_layerdrop": 0.0,
    "low_rank": None,  # ours: {module path: rank} of linear maps factorised by wav2vec2.low_rank
}

# Keys that shape the weights; everything else only changes how the model is trained.
ARCHITECTURE_KEYS = frozenset({
    "feat_emb_dim", "pos_emb_type", "pos_conv_depth", "conv_pos", "conv_pos_groups", "encoder_layers",
    "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads", "encoder_attention_head_dim",
    "activation_fn", "layer_norm_first", "attention_type", "num_cluster", "learnable_mask_emb", "mask_before_proj",
    "low_rank",
})

_INT_KEYS = ("feat_emb_dim", "pos_conv_depth", "conv_pos", "conv_pos_groups", "encoder_layers", "encoder_embed_dim",
             "num_cluster", "final_dim", "mask_length", "mask_min_space")
_FLOAT_KEYS = ("pred_masked_weight", "pred_nomask_weight", "mask_prob", "mask_other", "dropout", "attention_dropout",
               "activation_dropout", "encoder_layerdrop")
_BOOL_KEYS = ("layer_norm_first", "skip_masked", "skip_nomask", "no_mask_overlap", "learnable_mask_emb", "mask_before_proj")
_CHOICES = {"pos_emb_type": ("conv",), "activation_fn": ("gelu",), "attention_type": ("original",), "mask_selection": ("static",)}


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"config key '{key}' must be an integer, got {value!r}")
    return int(value)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"config key '{key}' must be true or false, got {value!r}")


def _collapse(values: Sequence[int]) -> int | list[int]:
    """A per-layer list that is the same everywhere is written as one int (as the original does)."""
    if values and values[0] > 0 and all(v == values[0] for v in values):
        return int(values[0])
    return [int(v) for v in values]


class MelHuBERTConfig(dict):
    """The model section of a MelHuBERT config (``Upstream_Config["melhubert"]``), validated.

    A plain ``dict`` of the original yaml keys with the code defaults filled in, plus
    attribute access (``config.encoder_layers``). ``encoder_attention_heads`` and
    ``encoder_ffn_embed_dim`` are an int or a per-layer list (after head / row pruning; 0
    removes the block); ``encoder_attention_head_dim`` (ours) defaults to width / heads;
    ``low_rank`` (ours) lists factorised linear maps ``{module path: rank}`` (our attribute
    paths, e.g. ``encoder.layers.3.feed_forward.intermediate_dense``).
    Unsupported choices (non-GELU activations, causal attention, non-static masks, stacked
    positional convolutions) raise ValueError naming the key; unknown keys are kept and warned
    about once.
    """

    def __init__(self, config: Optional[Mapping[str, Any]] = None, **overrides: Any) -> None:
        given = dict(config or {})
        given.update(overrides)
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            warnings.warn(f"MelHuBERT config: keys not used by this implementation: {', '.join(unknown)}", stacklevel=2)
        merged = {**DEFAULTS, **given}
        super().__init__(merged)
        self._validate()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"MelHuBERTConfig has no key '{name}'") from None

    def __reduce__(self):  # pickle (and deepcopy) as a MelHuBERTConfig built from a plain dict
        return (MelHuBERTConfig, (dict(self),))

    def _validate(self) -> None:
        for key in _INT_KEYS:
            self[key] = _as_int(key, self[key])
        for key in _FLOAT_KEYS:
            if isinstance(self[key], bool) or not isinstance(self[key], (int, float)):
                raise ValueError(f"config key '{key}' must be a number, got {self[key]!r}")
            self[key] = float(self[key])
        for key in _BOOL_KEYS:
            self[key] = _as_bool(key, self[key])
        for key, allowed in _CHOICES.items():
            if self[key] not in allowed:
                raise ValueError(f"config key '{key}': {self[key]!r} is not supported (only {', '.join(allowed)})")
        if self["pos_conv_depth"] != 1:
            raise ValueError(f"config key 'pos_conv_depth': only 1 is supported, got {self['pos_conv_depth']}")
        if self["encoder_layers"] < 1:
            raise ValueError(f"config key 'encoder_layers' must be at least 1, got {self['encoder_layers']}")
        if self["no_mask_overlap"]:
            raise ValueError("config key 'no_mask_overlap': only false (overlapping spans) is supported")
        if not 0.0 <= self["mask_prob"] <= 1.0:
            raise ValueError(f"config key 'mask_prob' must be in [0, 1], got {self['mask_prob']}")
        if self["mask_length"] < 1:
            raise ValueError(f"config key 'mask_length' must be at least 1, got {self['mask_length']}")
        if self["pred_nomask_weight"] > 0 and self["skip_nomask"]:
            raise ValueError("config key 'pred_nomask_weight' > 0 needs 'skip_nomask: false' (unmasked logits are skipped)")
        if self["pred_masked_weight"] > 0 and self["skip_masked"]:
            raise ValueError("config key 'pred_masked_weight' > 0 needs 'skip_masked: false' (masked logits are skipped)")
        layers = self["encoder_layers"]
        heads = self._per_layer("encoder_attention_heads", layers)
        self._per_layer("encoder_ffn_embed_dim", layers)
        width = self["encoder_embed_dim"]
        if self["encoder_attention_head_dim"] is None:
            if isinstance(self["encoder_attention_heads"], list):
                raise ValueError("config key 'encoder_attention_head_dim' is required when 'encoder_attention_heads' is a per-layer list")
            if width % heads[0]:
                raise ValueError(f"config key 'encoder_embed_dim' ({width}) is not divisible by 'encoder_attention_heads' ({heads[0]})")
            self["encoder_attention_head_dim"] = width // heads[0]
        self["encoder_attention_head_dim"] = _as_int("encoder_attention_head_dim", self["encoder_attention_head_dim"])
        low_rank = self["low_rank"]
        if low_rank is not None:
            if not isinstance(low_rank, Mapping) or not all(isinstance(k, str) for k in low_rank):
                raise ValueError(f"config key 'low_rank' must map module paths to ranks, got {low_rank!r}")
            self["low_rank"] = {k: _as_int("low_rank", v) for k, v in low_rank.items()} or None
        if width % self["conv_pos_groups"]:
            raise ValueError(f"config key 'encoder_embed_dim' ({width}) is not divisible by 'conv_pos_groups' ({self['conv_pos_groups']})")

    def _per_layer(self, key: str, layers: int) -> list[int]:
        value = self[key]
        if isinstance(value, (list, tuple)):
            if len(value) != layers:
                raise ValueError(f"config key '{key}' has {len(value)} entries, expected one per layer ({layers})")
            values = [_as_int(key, v) for v in value]
            if min(values) < 0:
                raise ValueError(f"config key '{key}' has a negative entry: {values}")
            self[key] = values
            return values
        count = _as_int(key, value)
        if count < 1:
            raise ValueError(f"config key '{key}' must be positive, got {count}")
        self[key] = count
        return [count] * layers

    @property
    def heads_per_layer(self) -> list[int]:
        heads = self["encoder_attention_heads"]
        return list(heads) if isinstance(heads, list) else [heads] * self["encoder_layers"]

    @property
    def ffn_per_layer(self) -> list[int]:
        ffn = self["encoder_ffn_embed_dim"]
        return list(ffn) if isinstance(ffn, list) else [ffn] * self["encoder_layers"]

    @property
    def head_dim(self) -> int:
        return int(self["encoder_attention_head_dim"])

    def with_training_settings(self, other: Mapping[str, Any]) -> "MelHuBERTConfig":
        """This architecture with the non-architecture keys (masking, dropout, loss weights) of ``other``."""
        merged = dict(self)
        merged.update({k: v for k, v in other.items() if k not in ARCHITECTURE_KEYS})
        return MelHuBERTConfig(merged)

    def architecture_differences(self, other: Mapping[str, Any]) -> list[str]:
        """``key: ours vs other`` for every architecture key ``other`` sets to a different value."""
        theirs = MelHuBERTConfig(other) if not isinstance(other, MelHuBERTConfig) else other
        return [f"{k}: {self[k]!r} vs {theirs[k]!r}" for k in sorted(ARCHITECTURE_KEYS) if self[k] != theirs[k]]


def _bert_init(module: nn.Module) -> None:
    """BERT init of the encoder's linear maps (normal 0.02, zero bias), as fairseq's encoder does."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _persistent_state_names(module: nn.Module) -> set[str]:
    """Names ``nn.Module.state_dict`` would write (ours, before renaming), without computing tensors."""
    names = set()
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        names.update(f"{dot}{n}" for n, p in sub._parameters.items() if p is not None)
        names.update(f"{dot}{n}" for n, b in sub._buffers.items() if b is not None and n not in sub._non_persistent_buffers_set)
    return names


def _rename_state_to_released(module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict) -> None:
    """state_dict post-hook: our key names -> released names, in place and in order."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    for key in keys:  # this module's keys are contiguous and last: popping and re-adding keeps the order
        state_dict[prefix + to_released_key(key[len(prefix):])] = state_dict.pop(key)
    metadata = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        for key in [k for k in metadata if k.startswith(prefix)]:
            metadata[prefix + to_released_key(key[len(prefix):])] = metadata.pop(key)


def _report_released_names(module: "MelHuBERTModel", incompatible: Any) -> None:
    """load_state_dict post-hook: name missing / unexpected keys as the file names them."""
    prefix = module._load_prefix
    for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
        for i, key in enumerate(keys):
            if key.startswith(prefix):
                keys[i] = prefix + to_released_key(key[len(prefix):])


class MelHuBERTModel(nn.Module):
    """Input projection + shared transformer + cluster classifier (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        config = config if isinstance(config, MelHuBERTConfig) else MelHuBERTConfig(config)
        self.config = config
        D, F_in = config.encoder_embed_dim, config.feat_emb_dim
        self.pre_extract_proj = nn.Linear(F_in, D) if F_in != D else None
        layers = []
        for heads, ffn in zip(config.heads_per_layer, config.ffn_per_layer):
            attention = c.SelfAttention(D, heads, config.head_dim, config.attention_dropout) if heads > 0 else None
            feed_forward = c.FeedForward(D, ffn, config.activation_dropout, config.dropout) if ffn > 0 else None
            layers.append(c.EncoderLayer(attention, config.dropout, config.layer_norm_first, feed_forward, D))
        self.encoder = c.Transformer(
            c.ConvolutionalPositionalEmbedding(D, config.conv_pos, config.conv_pos_groups),
            config.dropout, nn.ModuleList(layers), config.layer_norm_first, config.encoder_layerdrop,
        )
        self.encoder.layers.apply(_bert_init)
        self.final_proj = nn.Linear(D, config.num_cluster)
        mask_dim = F_in if config.mask_before_proj else D
        if config.learnable_mask_emb:
            self.mask_emb = nn.Parameter(torch.empty(mask_dim).uniform_())
        else:
            # The constant 0 = the corpus mean of normalised features; not part of the state dict.
            self.register_buffer("mask_emb", torch.zeros(mask_dim), persistent=False)
        if config.low_rank:
            # Empty factor modules of the recorded ranks, so a factorised state dict loads strictly.
            apply_low_rank_structure(self, config.low_rank)
        self._load_prefix = ""
        self.register_state_dict_post_hook(_rename_state_to_released)
        self.register_load_state_dict_post_hook(_report_released_names)

    # ----- state dict in the released names ----------------------------------------------
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[override]
        """Translate released names (and fold weight-pruning masks) before the children load."""
        self._load_prefix = prefix
        own = _persistent_state_names(self)
        renamed: dict[str, Any] = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            value = state_dict.pop(key)
            name = to_internal_key(key[len(prefix):])
            if name in renamed:
                error_msgs.append(f"{prefix}{to_released_key(name)} is given twice (under its released and its internal name)")
                continue
            renamed[name] = value
        fold_pruning_masks(renamed, own)
        state_dict.update({prefix + k: v for k, v in renamed.items()})
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    # ----- structure -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.encoder.layers)

    @property
    def embed_dim(self) -> int:
        return self.config.encoder_embed_dim

    def current_config(self) -> MelHuBERTConfig:
        """The config with the structure the modules have now (after any pruning / factorisation).

        Checkpoints store this, so a compressed model always rebuilds before a strict load,
        whichever operation changed it.
        """
        layers = list(self.encoder.layers)
        config = dict(self.config)
        config["encoder_attention_heads"] = _collapse([l.attention.num_heads if l.attention is not None else 0 for l in layers])
        config["encoder_ffn_embed_dim"] = _collapse([l.feed_forward.interm_features if l.feed_forward is not None else 0 for l in layers])
        config["encoder_attention_head_dim"] = self.config.head_dim
        ranks = {path: int(m.rank) for path, m in self.named_modules() if type(m).__name__ == "LowRankLinear"}
        config["low_rank"] = ranks or None
        return MelHuBERTConfig(config)

    def update_layer_structure(self, structure: Mapping[str, Any]) -> None:
        """Hook of ``wav2vec2.measure.sync_structure``: re-read the structure into ``self.config``."""
        self.config = self.current_config()

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames the encoder produces for inputs of ``lengths`` frames: the same (no down-sampling)."""
        return lengths

    # ----- forward ---------------------------------------------------------------------------
    def draw_mask(self, pad_mask: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Span mask ``(B, T)`` bool (True = masked; never on padding) with this config's prob / length."""
        valid = pad_mask.bool()
        lengths = valid.sum(-1).cpu()
        mask = span_mask(lengths, valid.shape[1], self.config.mask_prob, self.config.mask_length, min_masks=2, generator=generator)
        return mask.to(valid.device) & valid

    def _masked_input(self, feat: Tensor, valid: Tensor, mask_indices: Optional[Tensor], mask_embedding: Optional[Tensor] = None) -> Tensor:
        """``(B, T, F)`` -> projected ``(B, T, D)`` with masked frames replaced and padding zeroed."""
        has_mask = mask_indices is not None and bool(mask_indices.any())
        x = feat
        if has_mask and mask_embedding is None and self.config.mask_before_proj:
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        if self.pre_extract_proj is not None:
            x = self.pre_extract_proj(x)
        if has_mask and (mask_embedding is not None or not self.config.mask_before_proj):
            embedding = mask_embedding if mask_embedding is not None else self.mask_emb
            x = torch.where(mask_indices.unsqueeze(-1), embedding.to(x.dtype), x)
        return x * valid.unsqueeze(-1).to(x.dtype)

    def _check_input(self, feat: Tensor, pad_mask: Tensor) -> None:
        if feat.ndim != 3 or feat.shape[-1] != self.config.feat_emb_dim:
            raise ValueError(f"expected features (B, T, {self.config.feat_emb_dim}), got {tuple(feat.shape)}")
        if pad_mask.shape != feat.shape[:2]:
            raise ValueError(f"pad_mask has shape {tuple(pad_mask.shape)}, expected {tuple(feat.shape[:2])}")

    def forward(
        self,
        feat: Tensor,
        pad_mask: Tensor,
        cluster_label: Optional[Tensor] = None,
        no_pred: bool = False,
        mask: bool = False,
        get_hidden: bool = False,
        teacher_mask_indices: Optional[Tensor] = None,
    ) -> tuple[Any, ...]:
        """The original's contract.

        Args:
            feat: ``(B, T, F)`` normalised (stacked) log-Mel.
            pad_mask: ``(B, T)`` float or bool, 1 = real frame, 0 = padding.
            cluster_label: ``(B, T)`` long cluster ids (padding -100), or None.
            no_pred: return the 7-tuple without logits.
            mask: draw span masks (training); ignored when ``teacher_mask_indices`` is given.
            get_hidden: also return every layer's output.
            teacher_mask_indices: ``(B, T)`` bool masks to use instead of drawing (distillation).

        Returns:
            ``no_pred``: ``(hidden (B, T, D), None, None, None, None, layer_hiddens, pre_feat (B, T, D))``;
            otherwise ``(hidden, logit_m (M, C), logit_u (U, C), label_m (M,), label_u (U,), layer_hiddens,
            pre_feat, mask_indices (B, T) bool)`` where M / U count masked / unmasked real frames
            (logits of a skipped kind and labels without ``cluster_label`` are None);
            ``layer_hiddens`` is a list of N ``(B, T, D)`` tensors with ``get_hidden``, else ``[]``.
        """
        self._check_input(feat, pad_mask)
        valid = pad_mask.bool()
        if teacher_mask_indices is not None:
            mask_indices = teacher_mask_indices.to(device=feat.device, dtype=torch.bool) & valid
        elif mask:
            mask_indices = self.draw_mask(valid)
        else:
            mask_indices = torch.zeros_like(valid)
        pre_feat = self._masked_input(feat, valid, mask_indices)
        key_padding_mask = None if bool(valid.all()) else valid
        layer_hiddens: list[Tensor] = []
        if get_hidden:
            layer_hiddens = self.encoder.intermediate_outputs(pre_feat, key_padding_mask)
            hidden = layer_hiddens[-1]
            if self.config.layer_norm_first:  # pre-LN: the final LayerNorm follows the stack
                hidden = self.encoder.layer_norm(hidden)
        else:
            hidden = self.encoder(pre_feat, key_padding_mask)
        if no_pred:
            return hidden, None, None, None, None, layer_hiddens, pre_feat
        masked = mask_indices & valid
        unmasked = ~mask_indices & valid
        logit_m = None if self.config.skip_masked else self.final_proj(hidden[masked])
        logit_u = None if self.config.skip_nomask else self.final_proj(hidden[unmasked])
        label_m = label_u = None
        if cluster_label is not None:
            if cluster_label.shape != valid.shape:
                raise ValueError(f"cluster_label has shape {tuple(cluster_label.shape)}, expected {tuple(valid.shape)}")
            label_m = None if logit_m is None else cluster_label[masked]
            label_u = None if logit_u is None else cluster_label[unmasked]
        return hidden, logit_m, logit_u, label_m, label_u, layer_hiddens, pre_feat, mask_indices

    def extract_features(
        self,
        features: Tensor,
        lengths: Optional[Tensor] = None,
        num_layers: Optional[int] = None,
        frame_mask: Optional[Tensor] = None,
        mask_embedding: Optional[Tensor] = None,
    ) -> tuple[list[Tensor], Optional[Tensor]]:
        """``([h0, ..., hN], lengths)`` like ``Wav2Vec2Model.extract_features``; each ``(B, T, D)``.

        h0 is the projected input (padding zeroed), h_i the output of layer i (no final
        LayerNorm, no layer drop). ``frame_mask`` ``(B, T)`` (True = masked) masks frames: with
        ``mask_embedding`` ``(D,)`` on the projected input (as the waveform family does), without
        it with this model's own ``mask_emb`` where its config puts it. ``lengths`` are in frames.
        """
        if lengths is None:
            valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        else:
            lengths = lengths.to(features.device)
            valid = c.valid_mask(lengths, features.shape[1])
        self._check_input(features, valid)
        mask_indices = None if frame_mask is None else frame_mask.to(features.device).bool() & valid
        x = self._masked_input(features, valid, mask_indices, mask_embedding)
        # No mask for an unpadded batch in eager mode; always one while a graph is traced.
        key_padding_mask = None if lengths is None or c.all_valid(lengths, features.shape[1]) else valid
        return [x] + self.encoder.intermediate_outputs(x, key_padding_mask, num_layers), lengths


def masked_prediction_loss(
    outputs: Sequence[Any], config: Mapping[str, Any]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Weighted cross-entropy of an 8-tuple's logits, plus accuracies for logging.

    ``loss = pred_masked_weight * CE(logit_m, label_m) + pred_nomask_weight * CE(logit_u, label_u)``
    (means over frames, labels -100 ignored; logits in float32). A kind with no frames or a
    zero weight contributes 0.
    """
    _, logit_m, logit_u, label_m, label_u, *_ = outputs
    hidden = outputs[0]
    loss = hidden.new_zeros((), dtype=torch.float32)
    logs: dict[str, Tensor] = {}
    for kind, logits, labels, weight in (("masked", logit_m, label_m, config["pred_masked_weight"]),
                                         ("unmasked", logit_u, label_u, config["pred_nomask_weight"])):
        if logits is None or labels is None:
            continue
        keep = labels != IGNORE_INDEX
        if not bool(keep.any()):
            loss = loss + logits.sum() * 0.0  # keep the graph connected for DDP
            continue
        term = F.cross_entropy(logits[keep].float(), labels[keep])
        if weight:
            loss = loss + weight * term
        logs[f"loss_{kind}"] = term.detach()
        logs[f"accuracy_{kind}"] = (logits[keep].argmax(-1) == labels[keep]).float().mean().detach()
    return loss, logs


def param_count(model: nn.Module) -> int:
    """``sum(p.numel())`` (works on meta-device models too)."""
    return sum(p.numel() for p in model.parameters())

