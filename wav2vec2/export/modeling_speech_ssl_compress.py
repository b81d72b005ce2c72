"""Compressed HuBERT / wav2vec 2.0 / WavLM students for ``transformers`` (shipped with each export).

This file travels inside every exported folder whose model does not fit a stock
``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel``: layers with different numbers of heads or
FFN units, pruned-away attention or FFN blocks, WavLM layers that keep a subset of their
heads, a last convolution whose channels carry a scale (``dummy_weight``). It needs only
``torch`` and ``transformers``; load it with::

    AutoModel.from_pretrained(folder, trust_remote_code=True)

Per-layer settings use ``transformers``' ``per_layer_config`` (layer index -> the attributes that
differ from the global config: ``num_attention_heads``, ``intermediate_size``,
``remaining_heads``, and ``skip`` = ``["attention"]`` / ``["feed_forward"]``). On
``transformers`` versions without it, the same mapping is read by hand.

Shapes: ``B`` batch, ``L`` samples, ``T`` frames, ``D`` hidden size. Padding follows the
toolkit: with an ``attention_mask`` every padded utterance gives the same states as alone
(masked GroupNorm statistics, zeroed padded frames, key-padding masks). ``hidden_states``
follows ``transformers``: entry 0 is the transformer input (after the positional
convolution, and the encoder LayerNorm for post-norm models), entry i the output of layer i;
for pre-norm models ``last_hidden_state`` has the final LayerNorm and ``hidden_states[-1]``
has it only when the config sets ``tie_last_hidden_states`` (the stock classes' default).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

PER_LAYER_KEYS = ("num_attention_heads", "intermediate_size", "remaining_heads", "skip")


class SpeechSSLCompressConfig(PretrainedConfig):
    """Architecture of a compressed student; per-layer values live in ``per_layer_config``."""

    model_type = "speech_ssl_compress"

    family: str = "hubert"
    extractor_mode: str = "group_norm"
    conv_dim: list = (512, 512, 512, 512, 512, 512, 512)
    conv_kernel: list = (10, 3, 3, 3, 3, 2, 2)
    conv_stride: list = (5, 2, 2, 2, 2, 2, 2)
    conv_bias: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    attention_head_dim: int = 64
    intermediate_size: int = 3072
    total_num_heads: int = 12
    remaining_heads: Optional[list] = None
    num_buckets: int = 320
    max_bucket_distance: int = 800
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    layerdrop: float = 0.0
    layer_norm_eps: float = 1e-5
    toolkit_config: Optional[dict] = None


def layer_settings(config: SpeechSSLCompressConfig, index: int) -> dict[str, Any]:
    """Resolved per-layer values of layer ``index``: heads, FFN units, kept WavLM heads, skipped blocks."""
    if getattr(config, "is_heterogeneous", False):
        layer = config.per_layer_config[index]
        values = {key: getattr(layer, key, None) for key in PER_LAYER_KEYS}
    else:
        # Without transformers' heterogeneous configs the overrides are a plain dict attribute
        # (JSON keys are strings).
        table = getattr(config, "per_layer_config", None) or {}
        overrides = dict(table.get(str(index)) or table.get(index) or {})
        values = {key: overrides.get(key, getattr(config, key, None)) for key in PER_LAYER_KEYS}
    values["skip"] = list(values.get("skip") or [])
    return values


def valid_mask(lengths: Tensor, max_length: int) -> Tensor:
    """``(B, max_length)`` bool, True on the first ``lengths[b]`` positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class ConvLayerBlock(nn.Module):
    """Conv1d -> (GroupNorm over valid frames | LayerNorm over channels | none) -> GELU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, norm: Optional[nn.Module]) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.layer_norm = norm

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.clamp(torch.div(lengths - self.kernel_size, self.stride, rounding_mode="floor") + 1, min=0)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """``(B, C_in, L_in)`` -> ``(B, C_out, L_out)``."""
        x = self.conv(x)
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        if isinstance(self.layer_norm, nn.GroupNorm):
            x = self._group_norm(x, lengths)
        elif isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(x), lengths

    def _group_norm(self, x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        norm = self.layer_norm
        if lengths is None:
            return norm(x)
        mask = valid_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x * mask).sum(-1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + norm.eps)
        return x * norm.weight[None, :, None] + norm.bias[None, :, None]


class FeatureExtractor(nn.Module):
    """Conv stack ``(B, L)`` -> ``(B, T, C)``; ``dummy_weight`` scales the last block's channels."""

    def __init__(self, config: SpeechSSLCompressConfig) -> None:
        super().__init__()
        blocks = []
        in_channels = 1
        for i, (out_channels, kernel, stride) in enumerate(zip(config.conv_dim, config.conv_kernel, config.conv_stride)):
            if config.extractor_mode == "layer_norm":
                norm: Optional[nn.Module] = nn.LayerNorm(out_channels)
            elif i == 0:
                norm = nn.GroupNorm(out_channels, out_channels)
            else:
                norm = None
            blocks.append(ConvLayerBlock(in_channels, out_channels, kernel, stride, config.conv_bias, norm))
            in_channels = out_channels
        self.conv_layers = nn.ModuleList(blocks)
        self.dummy_weight = nn.Parameter(torch.ones(in_channels), requires_grad=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in self.conv_layers:
            lengths = block.output_lengths(lengths)
        return lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2) * self.dummy_weight, lengths


class FeatureProjection(nn.Module):
    def __init__(self, in_features: int, config: SpeechSSLCompressConfig) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features)
        self.projection = nn.Linear(in_features, config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class WeightNormConv1d(nn.Module):
    """Grouped conv with ``weight = g * v / ||v||`` (norm over all axes but the kernel axis)."""

    def __init__(self, channels: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        self.groups = groups
        self.weight_v = nn.Parameter(torch.empty(channels, channels // groups, kernel_size))
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


class PositionalConv(nn.Module):
    def __init__(self, config: SpeechSSLCompressConfig) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(config.hidden_size, config.num_conv_pos_embeddings, config.num_conv_pos_embedding_groups)
        self.num_remove = 1 if config.num_conv_pos_embeddings % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.transpose(1, 2))
        if self.num_remove:
            x = x[..., : -self.num_remove]
        return F.gelu(x).transpose(1, 2)


def relative_position_buckets(length: int, num_buckets: int, max_distance: int, device: torch.device) -> Tensor:
    """Bidirectional log-spaced buckets of ``key - query`` offsets, ``(T, T)`` long."""
    positions = torch.arange(length, device=device)
    offsets = positions[None, :] - positions[:, None]
    half = num_buckets // 2
    buckets = (offsets > 0).long() * half
    distance = offsets.abs()
    exact = half // 2
    log_scaled = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    far = torch.clamp((exact + log_scaled).long(), max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class SelfAttention(nn.Module):
    """Multi-head attention with ``H`` heads of width ``d`` (``H * d`` may differ from ``D``)."""

    def __init__(self, config: SpeechSSLCompressConfig, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = config.attention_dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(config.hidden_size, inner)
        self.k_proj = nn.Linear(config.hidden_size, inner)
        self.v_proj = nn.Linear(config.hidden_size, inner)
        self.out_proj = nn.Linear(inner, config.hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def _bias(self, x: Tensor, key_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Optional[Tensor]:
        return None if key_mask is None else key_mask[:, None, None, :]

    def forward(self, x: Tensor, key_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Tensor:
        """``(B, T, D)``, key mask ``(B, T)`` True on valid frames -> ``(B, T, D)``."""
        B, T, _ = x.shape
        q, k, v = self._split(self.q_proj(x)), self._split(self.k_proj(x)), self._split(self.v_proj(x))
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self._bias(x, key_mask, position_bias), dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(context.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))


class WavLMSelfAttention(SelfAttention):
    """Attention with WavLM's gated relative position bias over all original heads, then the kept ones."""

    def __init__(self, config: SpeechSSLCompressConfig, total_num_heads: int, remaining_heads: list[int], has_bias: bool) -> None:
        head_dim = config.hidden_size // total_num_heads
        super().__init__(config, len(remaining_heads), head_dim)
        self.total_num_heads = total_num_heads
        # A plain list, not a buffer: from_pretrained does not restore non-persistent buffers.
        self.remaining_heads = [int(h) for h in remaining_heads]
        self.rel_attn_embed = nn.Embedding(config.num_buckets, total_num_heads) if has_bias else None
        self.gru_rel_pos_linear = nn.Linear(head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, total_num_heads, 1, 1))

    def _bias(self, x: Tensor, key_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Optional[Tensor]:
        if position_bias is None:
            return super()._bias(x, key_mask, position_bias)
        B, T, _ = x.shape
        chunks = x.view(B, T, self.total_num_heads, self.head_dim).transpose(1, 2)
        gate_a, gate_b = torch.sigmoid(self.gru_rel_pos_linear(chunks).view(B, self.total_num_heads, T, 2, 4).sum(-1)).chunk(2, dim=-1)
        gate = gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0
        bias = (gate * position_bias.unsqueeze(0)).index_select(1, torch.tensor(self.remaining_heads, device=x.device)).to(x.dtype)
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return bias


class FeedForward(nn.Module):
    def __init__(self, config: SpeechSSLCompressConfig, units: int) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(config.hidden_size, units)
        self.intermediate_dropout = nn.Dropout(config.activation_dropout)
        self.output_dense = nn.Linear(units, config.hidden_size)
        self.output_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.output_dropout(self.output_dense(self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))))


class EncoderLayer(nn.Module):
    """Post-norm (Base) or pre-norm (Large) layer; a skipped block is absent (post-norm keeps its LayerNorm)."""

    def __init__(self, config: SpeechSSLCompressConfig, index: int) -> None:
        super().__init__()
        settings = layer_settings(config, index)
        self.attention: Optional[SelfAttention] = None
        if "attention" not in settings["skip"]:
            if config.family == "wavlm":
                self.attention = WavLMSelfAttention(config, config.total_num_heads, settings["remaining_heads"], index == 0)
            else:
                self.attention = SelfAttention(config, settings["num_attention_heads"], config.attention_head_dim)
        self.feed_forward = None if "feed_forward" in settings["skip"] else FeedForward(config, settings["intermediate_size"])
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm_first = config.do_stable_layer_norm

    def forward(self, x: Tensor, key_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Tensor:
        if self.layer_norm_first:
            if self.attention is not None:
                x = x + self.dropout(self.attention(self.layer_norm(x), key_mask, position_bias))
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x
        if self.attention is not None:
            x = x + self.dropout(self.attention(x, key_mask, position_bias))
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x)


class Transformer(nn.Module):
    def __init__(self, config: SpeechSSLCompressConfig) -> None:
        super().__init__()
        self.pos_conv_embed = PositionalConv(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layer_norm_first = config.do_stable_layer_norm
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layer_drop = config.layerdrop
        self.layers = nn.ModuleList(EncoderLayer(config, i) for i in range(config.num_hidden_layers))
        first = self.layers[0].attention if len(self.layers) else None
        # WavLM whose layer-0 attention was pruned away keeps the bucket embedding here.
        self.rel_attn_embed = (
            nn.Embedding(config.num_buckets, config.total_num_heads)
            if config.family == "wavlm" and first is None else None
        )
        self.num_buckets = config.num_buckets
        self.max_distance = config.max_bucket_distance

    def position_bias(self, num_frames: int, device: torch.device) -> Optional[Tensor]:
        embedding = self.rel_attn_embed
        if embedding is None and len(self.layers):
            embedding = getattr(self.layers[0].attention, "rel_attn_embed", None)
        if embedding is None:
            return None
        buckets = relative_position_buckets(num_frames, self.num_buckets, self.max_distance, device)
        return embedding(buckets).permute(2, 0, 1)


class Encoder(nn.Module):
    def __init__(self, in_features: int, config: SpeechSSLCompressConfig) -> None:
        super().__init__()
        self.feature_projection = FeatureProjection(in_features, config)
        self.transformer = Transformer(config)


class SpeechSSLCompressPreTrainedModel(PreTrainedModel):
    config_class = SpeechSSLCompressConfig
    base_model_prefix = "speech_ssl_compress"
    main_input_name = "input_values"

    def _init_weights(self, module: nn.Module) -> None:
        # Weights always come from the exported file; random init only for unseen modules.
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class SpeechSSLCompressModel(SpeechSSLCompressPreTrainedModel):
    """``input_values`` ``(B, L)`` 16 kHz, ``attention_mask`` ``(B, L)`` (1 = sample) -> ``BaseModelOutput``."""

    def __init__(self, config: SpeechSSLCompressConfig) -> None:
        super().__init__(config)
        self.feature_extractor = FeatureExtractor(config)
        self.encoder = Encoder(int(list(config.conv_dim)[-1]), config)
        self.post_init()

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """Valid frames for utterances of ``sample_lengths`` samples, ``(B,)``."""
        return self.feature_extractor.output_lengths(sample_lengths)

    def forward(
        self,
        input_values: Tensor,
        attention_mask: Optional[Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs: Any,
    ) -> BaseModelOutput | tuple:
        output_hidden_states = self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        lengths = None if attention_mask is None else attention_mask.long().sum(-1)
        features, frames = self.feature_extractor(input_values, lengths)
        x = self.encoder.feature_projection(features)
        key_mask = None
        if frames is not None:
            key_mask = valid_mask(frames, x.shape[1])
            x = x * key_mask.unsqueeze(-1).to(x.dtype)
        transformer = self.encoder.transformer
        x = x + transformer.pos_conv_embed(x)
        if not transformer.layer_norm_first:
            x = transformer.layer_norm(x)
        x = transformer.dropout(x)
        position_bias = transformer.position_bias(x.shape[1], x.device)
        states = [x]
        for layer in transformer.layers:
            if not (self.training and transformer.layer_drop > 0.0 and torch.rand(()).item() < transformer.layer_drop):
                x = layer(x, key_mask, position_bias)
            states.append(x)
        if transformer.layer_norm_first:
            x = transformer.layer_norm(x)
            if getattr(self.config, "tie_last_hidden_states", None):
                states[-1] = x
        hidden_states = tuple(states) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (x, hidden_states) if v is not None)
        return BaseModelOutput(last_hidden_state=x, hidden_states=hidden_states)


SpeechSSLCompressConfig.register_for_auto_class()
SpeechSSLCompressModel.register_for_auto_class("AutoModel")
