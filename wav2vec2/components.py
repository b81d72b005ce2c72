"""Building blocks of the prunable wav2vec 2.0 / HuBERT / WavLM family.

Shapes: ``B`` batch, ``L`` samples, ``C`` conv channels, ``T`` frames, ``D`` model width,
``H`` attention heads kept in a layer, ``d`` head width, ``I`` FFN units.

Module and parameter names follow the torchaudio-derived layout of the DPHuBERT release
files (``feature_extractor.conv_layers.0.conv.weight``, ``encoder.transformer.layers.3.
attention.q_proj.weight`` ...), so those files load with ``strict=True``.

Padding: every block takes valid lengths and behaves on a padded utterance exactly as on the
utterance alone (masked statistics in the per-channel GroupNorm, zeroed padded frames before
the positional convolution, key-padding masks in attention).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .hardconcrete import HardConcrete


def valid_mask(lengths: Tensor, max_length: int) -> Tensor:
    """Boolean ``(B, max_length)`` mask, True on the first ``lengths[b]`` positions."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def is_tracing() -> bool:
    """True under ``torch.export`` / ``torch.compile`` / the TorchScript-tracing ONNX exporter."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def all_valid(lengths: Tensor, max_length: int) -> bool:
    """Eager-mode shortcut for an unpadded batch (plain GroupNorm, no attention mask: faster).

    Never taken while a graph is traced: a branch on tensor values would freeze the example's
    padding into the graph, so exported graphs always run the masked path, which gives the
    same result on unpadded rows.
    """
    return not is_tracing() and bool((lengths == max_length).all())


# --------------------------------------------------------------------------------------------
# Convolutional feature extractor
# --------------------------------------------------------------------------------------------


class ConvLayerBlock(nn.Module):
    """Conv1d -> norm -> GELU -> (channel gate).

    ``layer_norm`` is an ``nn.GroupNorm(C, C)`` (per-channel statistics over time, used in
    block 0 of the group_norm extractor), an ``nn.LayerNorm(C)`` over channels (layer_norm
    extractor), or None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        bias: bool,
        layer_norm: Optional[nn.Module],
        prune_conv_channels: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        self.layer_norm = layer_norm
        self.hard_concrete = HardConcrete(out_channels, init_mean=0.01) if prune_conv_channels else None

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return torch.clamp(torch.div(lengths - self.kernel_size, self.stride, rounding_mode="floor") + 1, min=0)

    def forward(self, x: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """x: ``(B, C_in, L_in)`` -> ``(B, C_out, L_out)``; lengths: ``(B,)`` or None."""
        x = self.conv(x)
        if lengths is not None:
            lengths = self.output_lengths(lengths)
        if isinstance(self.layer_norm, nn.GroupNorm):
            x = self._group_norm(x, lengths)
        elif isinstance(self.layer_norm, nn.LayerNorm):
            x = self.layer_norm(x.transpose(1, 2)).transpose(1, 2)
        x = F.gelu(x)
        if self.hard_concrete is not None:
            x = x * self.hard_concrete().unsqueeze(-1)
        return x, lengths

    def _group_norm(self, x: Tensor, lengths: Optional[Tensor]) -> Tensor:
        norm = self.layer_norm
        assert isinstance(norm, nn.GroupNorm)
        if lengths is None or all_valid(lengths, x.shape[-1]):
            return norm(x)
        if norm.num_groups != norm.num_channels:
            raise NotImplementedError("masked GroupNorm supports one channel per group only")
        # Statistics over valid frames only, so padding does not change the result.
        mask = valid_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        count = mask.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (x * mask).sum(-1, keepdim=True) / count
        var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
        x = (x - mean) * torch.rsqrt(var + norm.eps)
        if norm.affine:
            x = x * norm.weight[None, :, None] + norm.bias[None, :, None]
        return x


class FeatureExtractor(nn.Module):
    """Stack of conv blocks over raw audio: ``(B, L)`` -> ``(B, T, C_last)``.

    ``dummy_weight`` (``(C_last,)``, frozen, ones until pruning) scales the last block's
    channels; ``prune()`` folds the last block's soft gate values into it, because the
    LayerNorm of the feature projection sits between that block and the next linear map.
    """

    def __init__(self, conv_layers: nn.ModuleList) -> None:
        super().__init__()
        self.conv_layers = conv_layers
        last: ConvLayerBlock = conv_layers[-1]  # type: ignore[assignment]
        self.dummy_weight = nn.Parameter(torch.ones(last.out_channels), requires_grad=False)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        for block in self.conv_layers:
            lengths = block.output_lengths(lengths)
        return lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        if waveforms.ndim != 2:
            raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
        x = waveforms.unsqueeze(1)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2) * self.dummy_weight, lengths


# --------------------------------------------------------------------------------------------
# Encoder front: feature projection and convolutional positional embedding
# --------------------------------------------------------------------------------------------


class FeatureProjection(nn.Module):
    """LayerNorm -> Linear -> Dropout: ``(B, T, C)`` -> ``(B, T, D)``."""

    def __init__(self, in_features: int, out_features: int, dropout: float) -> None:
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features)
        self.projection = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class WeightNormConv1d(nn.Module):
    """Conv1d whose weight is ``g * v / ||v||`` with the norm taken over all axes but ``dim``.

    Stores ``weight_g`` / ``weight_v`` (the names of the DPHuBERT and fairseq files). State
    dicts written by ``torch.nn.utils.parametrizations.weight_norm``
    (``parametrizations.weight.original0`` / ``original1``) are accepted on load.
    """

    def __init__(self, channels: int, kernel_size: int, groups: int, dim: int = 2) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"positional conv: {channels} channels not divisible by {groups} groups")
        self.padding = kernel_size // 2
        self.groups = groups
        self.dim = dim
        weight = torch.empty(channels, channels // groups, kernel_size)
        nn.init.normal_(weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * channels)))
        self.weight_v = nn.Parameter(weight)
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(weight, dim=self._norm_dims(), keepdim=True))
        self.bias = nn.Parameter(torch.zeros(channels))

    def _norm_dims(self) -> list[int]:
        return [i for i in range(3) if i != self.dim]

    @property
    def weight(self) -> Tensor:
        # The fused kernel torch's own weight_norm uses: ~10x faster than an explicit norm.
        return torch._weight_norm(self.weight_v, self.weight_g, self.dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, padding=self.padding, groups=self.groups)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        for new_name, old_name in (("original0", "weight_g"), ("original1", "weight_v")):
            key = f"{prefix}parametrizations.weight.{new_name}"
            if key in state_dict:
                state_dict[f"{prefix}{old_name}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvolutionalPositionalEmbedding(nn.Module):
    """Grouped, weight-normed conv; drops the extra frame of an even kernel; GELU.

    ``(B, T, D)`` -> ``(B, T, D)`` (the caller adds it to its input).
    """

    def __init__(self, embed_dim: int, kernel_size: int, groups: int) -> None:
        super().__init__()
        self.conv = WeightNormConv1d(embed_dim, kernel_size, groups)
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.transpose(1, 2))
        if self.num_remove:
            x = x[..., : -self.num_remove]
        return F.gelu(x).transpose(1, 2)


# --------------------------------------------------------------------------------------------
# Self-attention
# --------------------------------------------------------------------------------------------


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional head gates and a whole-block gate.

    ``num_heads`` may be smaller than ``embed_dim // head_dim`` after pruning; q/k/v/out then
    map ``D -> H*d`` and ``H*d -> D``.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        prune_heads: bool = False,
        prune_layer: bool = False,
    ) -> None:
        super().__init__()
        if num_heads < 1:
            raise ValueError("an attention block needs at least one head; use encoder_use_attention=False instead")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.dropout = dropout
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner)
        self.k_proj = nn.Linear(embed_dim, inner)
        self.v_proj = nn.Linear(embed_dim, inner)
        self.out_proj = nn.Linear(inner, embed_dim)
        self.hard_concrete_for_heads = HardConcrete(num_heads, init_mean=0.01) if prune_heads else None
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    def _split_heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def _attention_bias(self, x: Tensor, key_padding_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Optional[Tensor]:
        """Boolean ``(B, 1, 1, T)`` key mask (True = attend) or None; WavLM overrides this."""
        if key_padding_mask is None:
            return None
        return key_padding_mask[:, None, None, :]

    def forward(
        self,
        x: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        position_bias: Optional[Tensor] = None,
    ) -> Tensor:
        """x: ``(B, T, D)``; key_padding_mask: ``(B, T)`` True on valid frames -> ``(B, T, D)``."""
        B, T, _ = x.shape
        q = self._split_heads(self.q_proj(x))
        k = self._split_heads(self.k_proj(x))
        v = self._split_heads(self.v_proj(x))
        attn_mask = self._attention_bias(x, key_padding_mask, position_bias)
        context = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, d)
        if self.hard_concrete_for_heads is not None:
            context = context * self.hard_concrete_for_heads().view(1, -1, 1, 1)
        out = self.out_proj(context.transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim))
        if self.hard_concrete_for_layer is not None:
            out = out * self.hard_concrete_for_layer()
        return out


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int, max_distance: int, device=None) -> Tensor:
    """T5-style bidirectional buckets of ``key - query`` offsets, ``(T_q, T_k)`` long tensor.

    Half the buckets per sign; offsets below a quarter of ``num_buckets`` get their own
    bucket, larger ones are log-spaced up to ``max_distance`` and clamped.
    """
    offsets = torch.arange(key_length, device=device)[None, :] - torch.arange(query_length, device=device)[:, None]
    half = num_buckets // 2
    buckets = (offsets > 0).long() * half
    distance = offsets.abs()
    exact = half // 2
    log_scaled = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    far = torch.clamp((exact + log_scaled).long(), max=half - 1)
    return buckets + torch.where(distance < exact, distance, far)


class WavLMSelfAttention(SelfAttention):
    """Self-attention with WavLM's gated relative position bias.

    The bias and its gate are computed over all ``total_num_heads`` original heads (the gate
    splits the attention input into ``total_num_heads`` chunks of ``D / total_num_heads``)
    and then indexed by ``remaining_heads``, the original indices of the kept heads. Layer 0
    owns the bucket embedding ``rel_attn_embed``.
    """

    def __init__(
        self,
        embed_dim: int,
        total_num_heads: int,
        remaining_heads: list[int],
        dropout: float = 0.0,
        prune_heads: bool = False,
        prune_layer: bool = False,
        has_relative_attention_bias: bool = False,
        num_buckets: int = 320,
        max_distance: int = 800,
    ) -> None:
        if embed_dim % total_num_heads:
            raise ValueError(f"WavLM: embed_dim {embed_dim} not divisible by {total_num_heads} heads")
        head_dim = embed_dim // total_num_heads
        super().__init__(embed_dim, len(remaining_heads), head_dim, dropout, prune_heads, prune_layer)
        self.total_num_heads = total_num_heads
        self.remaining_heads = list(remaining_heads)
        self.register_buffer("_remaining_index", torch.tensor(self.remaining_heads, dtype=torch.long), persistent=False)
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.rel_attn_embed = nn.Embedding(num_buckets, total_num_heads) if has_relative_attention_bias else None
        self.gru_rel_pos_linear = nn.Linear(head_dim, 8)
        self.gru_rel_pos_const = nn.Parameter(torch.ones(1, total_num_heads, 1, 1))

    def position_gate(self, x: Tensor) -> Tensor:
        """Per-head, per-query gate of the position bias, ``(B, H_total, T, 1)``."""
        B, T, _ = x.shape
        chunks = x.view(B, T, self.total_num_heads, self.head_dim).transpose(1, 2)
        gate_a, gate_b = torch.sigmoid(self.gru_rel_pos_linear(chunks).view(B, self.total_num_heads, T, 2, 4).sum(-1)).chunk(2, dim=-1)
        return gate_a * (gate_b * self.gru_rel_pos_const - 1.0) + 2.0

    def _attention_bias(self, x: Tensor, key_padding_mask: Optional[Tensor], position_bias: Optional[Tensor]) -> Optional[Tensor]:
        if position_bias is None:
            return super()._attention_bias(x, key_padding_mask, position_bias)
        bias = self.position_gate(x) * position_bias.unsqueeze(0)  # (B, H_total, T, T)
        bias = bias.index_select(1, self._remaining_index).to(x.dtype)
        if key_padding_mask is not None:
            bias = bias.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
        return bias


# --------------------------------------------------------------------------------------------
# Feed-forward block, encoder layer, transformer
# --------------------------------------------------------------------------------------------


class FeedForward(nn.Module):
    """Linear -> GELU -> Dropout -> (unit gates) -> Linear -> Dropout -> (block gate)."""

    def __init__(
        self,
        embed_dim: int,
        interm_features: int,
        interm_dropout: float,
        output_dropout: float,
        prune_intermediate: bool = False,
        prune_layer: bool = False,
    ) -> None:
        super().__init__()
        if interm_features < 1:
            raise ValueError("an FFN block needs at least one unit; use encoder_use_feed_forward=False instead")
        self.intermediate_dense = nn.Linear(embed_dim, interm_features)
        self.intermediate_dropout = nn.Dropout(interm_dropout)
        self.output_dense = nn.Linear(interm_features, embed_dim)
        self.output_dropout = nn.Dropout(output_dropout)
        self.hard_concrete_for_intermediate = HardConcrete(interm_features, init_mean=0.5) if prune_intermediate else None
        self.hard_concrete_for_layer = HardConcrete(1, init_mean=0.01) if prune_layer else None

    @property
    def interm_features(self) -> int:
        return self.intermediate_dense.out_features

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D)`` -> ``(B, T, D)``."""
        x = self.intermediate_dropout(F.gelu(self.intermediate_dense(x)))
        if self.hard_concrete_for_intermediate is not None:
            x = x * self.hard_concrete_for_intermediate()
        x = self.output_dropout(self.output_dense(x))
        if self.hard_concrete_for_layer is not None:
            x = x * self.hard_concrete_for_layer()
        return x


class EncoderLayer(nn.Module):
    """One transformer layer, post-norm (Base) or pre-norm (Large).

    A pruned-away attention or FFN block (None) is skipped; in post-norm layers its
    LayerNorm is still applied (the DPHuBERT convention, which keeps pruning exact).
    """

    def __init__(
        self,
        attention: Optional[SelfAttention],
        dropout: float,
        layer_norm_first: bool,
        feed_forward: Optional[FeedForward],
        embed_dim: int,
    ) -> None:
        super().__init__()
        self.attention = attention
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layer_norm_first = layer_norm_first
        self.feed_forward = feed_forward
        self.final_layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, position_bias: Optional[Tensor] = None) -> Tensor:
        """``(B, T, D)`` -> ``(B, T, D)``."""
        if self.layer_norm_first:
            if self.attention is not None:
                x = x + self.dropout(self.attention(self.layer_norm(x), key_padding_mask, position_bias))
            if self.feed_forward is not None:
                x = x + self.feed_forward(self.final_layer_norm(x))
            return x
        if self.attention is not None:
            x = x + self.dropout(self.attention(x, key_padding_mask, position_bias))
        x = self.layer_norm(x)
        if self.feed_forward is not None:
            x = x + self.feed_forward(x)
        return self.final_layer_norm(x)


class Transformer(nn.Module):
    """Positional conv + LayerNorm + encoder layers.

    Post-norm models apply ``layer_norm`` before the layers; pre-norm models apply it after
    the last layer, in ``forward`` only (``intermediate_outputs`` returns raw layer outputs,
    as torchaudio and fairseq do).

    WavLM: the relative position bias ``(H_total, T, T)`` is computed once from the bucket
    embedding of layer 0 and handed to every layer. If layer 0's attention has been pruned
    away the embedding lives here as ``rel_attn_embed`` instead.
    """

    def __init__(
        self,
        pos_conv_embed: ConvolutionalPositionalEmbedding,
        dropout: float,
        layers: nn.ModuleList,
        layer_norm_first: bool,
        layer_drop: float,
        rel_attn_embed: Optional[nn.Embedding] = None,
        num_buckets: int = 320,
        max_distance: int = 800,
    ) -> None:
        super().__init__()
        self.pos_conv_embed = pos_conv_embed
        embed_dim = pos_conv_embed.conv.weight_v.shape[0]
        self.layer_norm = nn.LayerNorm(embed_dim)
        self.layer_norm_first = layer_norm_first
        self.layer_drop = layer_drop
        self.dropout = nn.Dropout(dropout)
        self.layers = layers
        self.rel_attn_embed = rel_attn_embed
        self.num_buckets = num_buckets
        self.max_distance = max_distance

    def _bucket_embedding(self) -> Optional[nn.Embedding]:
        if self.rel_attn_embed is not None:
            return self.rel_attn_embed
        first = self.layers[0].attention if len(self.layers) else None
        return getattr(first, "rel_attn_embed", None)

    def position_bias(self, num_frames: int, device: torch.device) -> Optional[Tensor]:
        embedding = self._bucket_embedding()
        if embedding is None:
            return None
        buckets = relative_position_buckets(num_frames, num_frames, self.num_buckets, self.max_distance, device)
        return embedding(buckets).permute(2, 0, 1)  # (H_total, T, T)

    def _preprocess(self, x: Tensor) -> Tensor:
        x = x + self.pos_conv_embed(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x)

    def forward(self, x: Tensor, key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """``(B, T, D)`` -> ``(B, T, D)``; layer drop applies in training only."""
        x = self._preprocess(x)
        position_bias = self.position_bias(x.shape[1], x.device)
        for layer in self.layers:
            if self.training and self.layer_drop > 0.0 and torch.rand(()).item() < self.layer_drop:
                continue
            x = layer(x, key_padding_mask, position_bias)
        if self.layer_norm_first:
            x = self.layer_norm(x)
        return x

    def intermediate_outputs(self, x: Tensor, key_padding_mask: Optional[Tensor] = None, num_layers: Optional[int] = None) -> list[Tensor]:
        """Outputs of the first ``num_layers`` layers (all by default), each ``(B, T, D)``."""
        num_layers = len(self.layers) if num_layers is None else num_layers
        if not 0 <= num_layers <= len(self.layers):
            raise ValueError(f"num_layers must be in [0, {len(self.layers)}], got {num_layers}")
        outputs: list[Tensor] = []
        if num_layers == 0:
            return outputs
        x = self._preprocess(x)
        position_bias = self.position_bias(x.shape[1], x.device)
        for layer in self.layers[:num_layers]:
            x = layer(x, key_padding_mask, position_bias)
            outputs.append(x)
        return outputs


class Encoder(nn.Module):
    """Feature projection + transformer: ``(B, T, C)`` -> ``(B, T, D)``."""

    def __init__(self, feature_projection: FeatureProjection, transformer: Transformer) -> None:
        super().__init__()
        self.feature_projection = feature_projection
        self.transformer = transformer

    def project(self, features: Tensor, lengths: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """Projected features with padded frames zeroed, and the key-padding mask ``(B, T)``."""
        x = self.feature_projection(features)
        if lengths is None:
            return x, None
        if all_valid(lengths, x.shape[1]):
            return x, None
        mask = valid_mask(lengths, x.shape[1])
        return x * mask.unsqueeze(-1).to(x.dtype), mask

    def forward(self, features: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        x, mask = self.project(features, lengths)
        return self.transformer(x, mask)

    def extract_features(
        self,
        features: Tensor,
        lengths: Optional[Tensor] = None,
        num_layers: Optional[int] = None,
        frame_mask: Optional[Tensor] = None,
        mask_embedding: Optional[Tensor] = None,
    ) -> list[Tensor]:
        """``[h0, h1, ..., hN]``: h0 is the projection output, h_i the output of layer i.

        ``frame_mask`` ``(B, T)`` (True = masked) replaces those projected frames with
        ``mask_embedding`` ``(D,)`` before the transformer, as in HuBERT pre-training.
        """
        x, mask = self.project(features, lengths)
        if frame_mask is not None:
            if mask_embedding is None:
                raise ValueError("frame_mask needs a mask_embedding")
            x = torch.where(frame_mask.unsqueeze(-1), mask_embedding.to(x.dtype), x)
        return [x] + self.transformer.intermediate_outputs(x, mask, num_layers)
