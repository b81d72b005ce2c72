"""The prunable wav2vec 2.0 / HuBERT / WavLM model and its config-driven builder.

``wav2vec2_model(**config)`` takes the same keys as the DPHuBERT release files
(``ckpt["config"]``) and builds a WavLM model when ``encoder_remaining_heads`` is present,
a wav2vec 2.0 / HuBERT model otherwise. Factories (``hubert_base`` ...) return full,
unpruned models with the published architectures.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import components as c

ConvConfig = Sequence[Sequence[int]]

DEFAULT_CONV_CONFIG: list[tuple[int, int, int]] = [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2

PRUNE_SWITCHES = (
    "extractor_prune_conv_channels",
    "encoder_prune_attention_heads",
    "encoder_prune_attention_layer",
    "encoder_prune_feed_forward_intermediate",
    "encoder_prune_feed_forward_layer",
)


class Wav2Vec2Model(nn.Module):
    """CNN feature extractor + transformer encoder (+ optional linear ``aux`` head).

    Call ``model(waveforms, lengths)`` for the last layer (with the final LayerNorm of
    pre-norm models, and layer drop in training) or ``model.extract_features(waveforms,
    lengths)`` for every layer.
    """

    def __init__(
        self,
        feature_extractor: c.FeatureExtractor,
        encoder: c.Encoder,
        aux: Optional[nn.Linear] = None,
        normalize_waveform: bool = False,
        config: Optional[dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        self.feature_extractor = feature_extractor
        self.encoder = encoder
        self.aux = aux
        self.normalize_waveform = normalize_waveform
        self.config: dict[str, Any] = copy.deepcopy(config) if config is not None else {}

    @property
    def is_wavlm(self) -> bool:
        return "encoder_remaining_heads" in self.config

    @property
    def num_layers(self) -> int:
        return len(self.encoder.transformer.layers)

    def _normalize(self, waveforms: Tensor, lengths: Optional[Tensor]) -> Tensor:
        """Per-utterance zero mean / unit variance over the valid samples."""
        if lengths is None:
            return F.layer_norm(waveforms, waveforms.shape[-1:])
        mask = c.valid_mask(lengths, waveforms.shape[-1]).to(waveforms.dtype)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (waveforms * mask).sum(-1, keepdim=True) / count
        var = (((waveforms - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        return (waveforms - mean) * torch.rsqrt(var + 1e-5) * mask

    def _features(self, waveforms: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if lengths is not None:
            lengths = lengths.to(device=waveforms.device)
            if lengths.shape != waveforms.shape[:1]:
                raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({waveforms.shape[0]},)")
        if self.normalize_waveform:
            waveforms = self._normalize(waveforms, lengths)
        return self.feature_extractor(waveforms, lengths)

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """waveforms ``(B, L)`` at 16 kHz, lengths ``(B,)`` -> ``(B, T, D)`` (or aux outputs), ``(B,)``."""
        features, lengths = self._features(waveforms, lengths)
        x = self.encoder(features, lengths)
        if self.aux is not None:
            x = self.aux(x)
        return x, lengths

    def extract_features(
        self,
        waveforms: Tensor,
        lengths: Optional[Tensor] = None,
        num_layers: Optional[int] = None,
        frame_mask: Optional[Tensor] = None,
        mask_embedding: Optional[Tensor] = None,
    ) -> tuple[list[Tensor], Optional[Tensor]]:
        """``([h0, ..., hN], frame_lengths)``; h0 is the feature-projection output, each ``(B, T, D)``.

        ``num_layers`` stops early (a distillation teacher needs only its deepest target layer).
        ``frame_mask`` ``(B, T)`` / ``mask_embedding`` ``(D,)`` mask frames before the
        transformer (masked prediction, masked distillation); ``num_frames`` gives ``T``.
        No layer drop here, so features are deterministic in eval mode.
        """
        features, lengths = self._features(waveforms, lengths)
        return self.encoder.extract_features(features, lengths, num_layers, frame_mask, mask_embedding), lengths

    def num_frames(self, lengths: Tensor) -> Tensor:
        """Frames the encoder produces for inputs of ``lengths`` samples, ``(B,)``."""
        return self.feature_extractor.output_lengths(lengths)

    def get_num_params(self) -> Tensor:
        """Expected parameter count under the hard-concrete gates (differentiable); the exact count without gates.

        The original DPHuBERT model's method; ``wav2vec2.counting.num_params`` is the same.
        """
        from .counting import num_params

        return num_params(self, "expected")

    def prune(self) -> dict[str, Any]:
        """Physically remove masked structures; returns (and stores) the new config."""
        from .pruning import prune_model

        return prune_model(self)


def _per_layer(value: Any, num_layers: int, name: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != num_layers:
            raise ValueError(f"config key '{name}' has {len(value)} entries, expected one per layer ({num_layers})")
        return list(value)
    return [value] * num_layers


def wav2vec2_model(
    extractor_mode: str,
    extractor_conv_layer_config: Optional[ConvConfig],
    extractor_conv_bias: bool,
    encoder_embed_dim: int,
    encoder_projection_dropout: float,
    encoder_pos_conv_kernel: int,
    encoder_pos_conv_groups: int,
    encoder_num_layers: int,
    encoder_ff_interm_features: int | Sequence[int],
    encoder_attention_dropout: float,
    encoder_ff_interm_dropout: float,
    encoder_dropout: float,
    encoder_layer_norm_first: bool,
    encoder_layer_drop: float,
    encoder_use_attention: bool | Sequence[bool] = True,
    encoder_use_feed_forward: bool | Sequence[bool] = True,
    encoder_num_heads: Optional[int | Sequence[int]] = None,
    encoder_head_dim: Optional[int] = None,
    aux_num_out: Optional[int] = None,
    normalize_waveform: bool = False,
    extractor_prune_conv_channels: bool = False,
    encoder_prune_attention_heads: bool = False,
    encoder_prune_attention_layer: bool = False,
    encoder_prune_feed_forward_intermediate: bool = False,
    encoder_prune_feed_forward_layer: bool = False,
    encoder_total_num_heads: Optional[int | Sequence[int]] = None,
    encoder_remaining_heads: Optional[Sequence[Sequence[int]]] = None,
    encoder_num_buckets: int = 320,
    encoder_max_distance: int = 800,
) -> Wav2Vec2Model:
    """Build a model from a DPHuBERT-style config (see the README for every key).

    Per-layer keys (``encoder_num_heads``, ``encoder_ff_interm_features``,
    ``encoder_use_attention``, ``encoder_use_feed_forward``, ``encoder_total_num_heads``)
    take a list with one entry per layer or a single value for all layers. A config with
    ``encoder_remaining_heads`` (the kept original head indices per layer) builds WavLM.
    """
    config = {k: v for k, v in locals().items()}
    is_wavlm = encoder_remaining_heads is not None
    if not is_wavlm:
        for key in ("encoder_total_num_heads",):
            if config[key] is not None:
                raise ValueError(f"config key '{key}' is only valid for WavLM (with encoder_remaining_heads)")
        config.pop("encoder_total_num_heads")
        config.pop("encoder_remaining_heads")
        config.pop("encoder_num_buckets")
        config.pop("encoder_max_distance")
        if encoder_num_heads is None or encoder_head_dim is None:
            raise ValueError("config needs 'encoder_num_heads' and 'encoder_head_dim' (or 'encoder_remaining_heads' for WavLM)")
    else:
        for key in ("encoder_num_heads", "encoder_head_dim"):
            if config.pop(key) is not None:
                raise ValueError(f"config key '{key}' is not used by WavLM (heads come from 'encoder_remaining_heads')")
        if encoder_total_num_heads is None:
            raise ValueError("WavLM config needs 'encoder_total_num_heads'")

    if extractor_mode not in ("group_norm", "layer_norm"):
        raise ValueError(f"config key 'extractor_mode' must be 'group_norm' or 'layer_norm', got {extractor_mode!r}")
    conv_config = [tuple(int(v) for v in layer) for layer in (extractor_conv_layer_config or DEFAULT_CONV_CONFIG)]
    for i, layer in enumerate(conv_config):
        if len(layer) != 3:
            raise ValueError(f"config key 'extractor_conv_layer_config'[{i}] must be (out_channels, kernel, stride), got {layer}")
    config["extractor_conv_layer_config"] = [list(layer) for layer in conv_config]

    blocks = []
    in_channels = 1
    for i, (out_channels, kernel, stride) in enumerate(conv_config):
        if extractor_mode == "layer_norm":
            norm: Optional[nn.Module] = nn.LayerNorm(out_channels, elementwise_affine=True)
        elif i == 0:
            norm = nn.GroupNorm(out_channels, out_channels, affine=True)
        else:
            norm = None
        blocks.append(c.ConvLayerBlock(in_channels, out_channels, kernel, stride, extractor_conv_bias, norm, extractor_prune_conv_channels))
        in_channels = out_channels
    feature_extractor = c.FeatureExtractor(nn.ModuleList(blocks))

    L = encoder_num_layers
    use_attention = _per_layer(encoder_use_attention, L, "encoder_use_attention")
    use_feed_forward = _per_layer(encoder_use_feed_forward, L, "encoder_use_feed_forward")
    ff_interm = _per_layer(encoder_ff_interm_features, L, "encoder_ff_interm_features")
    if is_wavlm:
        total_heads = _per_layer(encoder_total_num_heads, L, "encoder_total_num_heads")
        remaining = [[int(h) for h in heads] for heads in _per_layer(encoder_remaining_heads, L, "encoder_remaining_heads")]
        for i, (heads, total) in enumerate(zip(remaining, total_heads)):
            if len(set(heads)) != len(heads) or any(not 0 <= h < total for h in heads):
                raise ValueError(f"config key 'encoder_remaining_heads'[{i}] must hold distinct head indices in [0, {total}), got {heads}")
        config["encoder_remaining_heads"] = remaining
    else:
        num_heads = _per_layer(encoder_num_heads, L, "encoder_num_heads")

    layers = []
    transformer_rel_embed: Optional[nn.Embedding] = None
    for i in range(L):
        attention: Optional[c.SelfAttention] = None
        if is_wavlm:
            has_bias = i == 0
            if use_attention[i] and len(remaining[i]) > 0:
                attention = c.WavLMSelfAttention(
                    encoder_embed_dim, total_heads[i], remaining[i], encoder_attention_dropout,
                    encoder_prune_attention_heads, encoder_prune_attention_layer,
                    has_relative_attention_bias=has_bias, num_buckets=encoder_num_buckets, max_distance=encoder_max_distance,
                )
            elif has_bias:
                transformer_rel_embed = nn.Embedding(encoder_num_buckets, total_heads[0])
        elif use_attention[i] and num_heads[i] > 0:
            attention = c.SelfAttention(
                encoder_embed_dim, num_heads[i], encoder_head_dim, encoder_attention_dropout,  # type: ignore[arg-type]
                encoder_prune_attention_heads, encoder_prune_attention_layer,
            )
        feed_forward = None
        if use_feed_forward[i] and ff_interm[i] > 0:
            feed_forward = c.FeedForward(
                encoder_embed_dim, ff_interm[i], encoder_ff_interm_dropout, encoder_dropout,
                encoder_prune_feed_forward_intermediate, encoder_prune_feed_forward_layer,
            )
        layers.append(c.EncoderLayer(attention, encoder_dropout, encoder_layer_norm_first, feed_forward, encoder_embed_dim))

    # The stored config describes what was built (a block with 0 heads or units is absent).
    config["encoder_use_attention"] = [layer.attention is not None for layer in layers]
    config["encoder_use_feed_forward"] = [layer.feed_forward is not None for layer in layers]
    transformer = c.Transformer(
        c.ConvolutionalPositionalEmbedding(encoder_embed_dim, encoder_pos_conv_kernel, encoder_pos_conv_groups),
        encoder_dropout, nn.ModuleList(layers), encoder_layer_norm_first, encoder_layer_drop,
        rel_attn_embed=transformer_rel_embed, num_buckets=encoder_num_buckets, max_distance=encoder_max_distance,
    )
    encoder = c.Encoder(c.FeatureProjection(conv_config[-1][0], encoder_embed_dim, encoder_projection_dropout), transformer)
    aux = nn.Linear(encoder_embed_dim, aux_num_out) if aux_num_out is not None else None
    return Wav2Vec2Model(feature_extractor, encoder, aux, normalize_waveform, config)


# --------------------------------------------------------------------------------------------
# Published architectures
# --------------------------------------------------------------------------------------------


def _base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[list(layer) for layer in DEFAULT_CONV_CONFIG],
        extractor_conv_bias=False,
        encoder_embed_dim=768,
        encoder_projection_dropout=0.1,
        encoder_pos_conv_kernel=128,
        encoder_pos_conv_groups=16,
        encoder_num_layers=12,
        encoder_use_attention=[True] * 12,
        encoder_use_feed_forward=[True] * 12,
        encoder_num_heads=[12] * 12,
        encoder_head_dim=64,
        encoder_attention_dropout=0.1,
        encoder_ff_interm_features=[3072] * 12,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.1,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.05,
        aux_num_out=None,
        normalize_waveform=False,
    )
    config.update({k: False for k in PRUNE_SWITCHES})
    config.update(overrides)
    return config


def _large_config(**overrides: Any) -> dict[str, Any]:
    large: dict[str, Any] = dict(
        extractor_mode="layer_norm",
        encoder_embed_dim=1024,
        encoder_num_layers=24,
        encoder_use_attention=[True] * 24,
        encoder_use_feed_forward=[True] * 24,
        encoder_num_heads=[16] * 24,
        encoder_ff_interm_features=[4096] * 24,
        encoder_layer_norm_first=True,
        normalize_waveform=True,
    )
    large.update(overrides)
    return _base_config(**large)


def _wavlm(config: dict[str, Any]) -> dict[str, Any]:
    heads = config.pop("encoder_num_heads")
    config.pop("encoder_head_dim")
    config["encoder_total_num_heads"] = list(heads)
    config["encoder_remaining_heads"] = [list(range(h)) for h in heads]
    config["encoder_num_buckets"] = 320
    config["encoder_max_distance"] = 800
    return config


def hubert_base_config(**overrides: Any) -> dict[str, Any]:
    return _base_config(**overrides)


def hubert_large_config(**overrides: Any) -> dict[str, Any]:
    return _large_config(**overrides)


def wav2vec2_base_config(**overrides: Any) -> dict[str, Any]:
    return _base_config(**{"encoder_ff_interm_dropout": 0.1, "encoder_layer_drop": 0.1, **overrides})


def wav2vec2_large_config(**overrides: Any) -> dict[str, Any]:
    """wav2vec 2.0 Large (LibriSpeech 960 h): group_norm extractor, post-norm, like torchaudio."""
    return _large_config(**{
        "extractor_mode": "group_norm", "encoder_layer_norm_first": False, "normalize_waveform": False,
        "encoder_ff_interm_dropout": 0.1, "encoder_layer_drop": 0.1, **overrides,
    })


def wav2vec2_large_lv60k_config(**overrides: Any) -> dict[str, Any]:
    """wav2vec 2.0 Large (LibriVox 60k h): layer_norm extractor with conv bias, pre-norm."""
    return _large_config(**{"extractor_conv_bias": True, "encoder_ff_interm_dropout": 0.1, "encoder_layer_drop": 0.1, **overrides})


def hubert_xlarge_config(**overrides: Any) -> dict[str, Any]:
    """HuBERT X-Large: 48 pre-norm layers, width 1280, 16 heads of 80, FFN 5120."""
    return _large_config(**{
        "encoder_embed_dim": 1280, "encoder_num_layers": 48, "encoder_use_attention": [True] * 48,
        "encoder_use_feed_forward": [True] * 48, "encoder_num_heads": [16] * 48, "encoder_head_dim": 80,
        "encoder_ff_interm_features": [5120] * 48, **overrides,
    })


def wavlm_base_config(**overrides: Any) -> dict[str, Any]:
    """WavLM Base: the architecture of WavLM Base+ (they differ in pre-training data only)."""
    return _wavlm(_base_config(**overrides))


def wavlm_base_plus_config(**overrides: Any) -> dict[str, Any]:
    return _wavlm(_base_config(**overrides))


def wavlm_large_config(**overrides: Any) -> dict[str, Any]:
    return _wavlm(_large_config(**overrides))


def hubert_base(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**hubert_base_config(**overrides))


def hubert_large(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**hubert_large_config(**overrides))


def wav2vec2_base(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wav2vec2_base_config(**overrides))


def wav2vec2_large(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wav2vec2_large_config(**overrides))


def wav2vec2_large_lv60k(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wav2vec2_large_lv60k_config(**overrides))


def hubert_xlarge(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**hubert_xlarge_config(**overrides))


def wavlm_base(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wavlm_base_config(**overrides))


def wavlm_base_plus(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wavlm_base_plus_config(**overrides))


def wavlm_large(**overrides: Any) -> Wav2Vec2Model:
    return wav2vec2_model(**wavlm_large_config(**overrides))
