"""One surgery API: "keep these heads / FFN units / conv channels" applied to a model in place.

Every structured pruning method only decides *what to keep*; the slicing lives here once:

* hard-concrete gates (``wav2vec2.pruning``, DPHuBERT): the kept set is where the deterministic
  gate is non-zero, and the gate values are passed as ``scale`` so they are folded exactly into
  the next linear map (the pruned model computes what the gated one did);
* importance scores (``methods.ops_heads`` / ``methods.ops_rows``, the compression suite): the
  kept set is what the scores spare, ``scale`` is None.

Works on any model holding ``wav2vec2.components`` blocks (``Wav2Vec2Model`` incl. WavLM,
``MelHuBERTModel``), on plain ``nn.Linear`` and on ``LowRankLinear`` factors alike. New
``nn.Parameter`` objects are created: rebuild the optimiser afterwards.

Shapes: ``H`` heads of ``d`` dims, ``I`` FFN units, ``C`` conv channels; ``kept`` is a sorted
``long`` index tensor into them, ``scale`` a float tensor over all of them (``(H,)``, ``(I,)``,
``(C,)``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import components as c
from .low_rank import LowRankLinear

# --------------------------------------------------------------------------------------------
# Slicing primitives
# --------------------------------------------------------------------------------------------


def slice_linear_out(linear: nn.Linear, index: Tensor) -> None:
    """Keep output features ``index`` of a plain Linear (weight rows and bias entries)."""
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, index).clone())
    linear.out_features = index.numel()


def slice_linear_in(linear: nn.Linear, index: Tensor, scale: Optional[Tensor] = None) -> None:
    """Keep input features ``index`` of a plain Linear, first multiplying columns by ``scale``."""
    weight = linear.weight.data
    if scale is not None:
        weight = weight * scale.unsqueeze(0)
    linear.weight = nn.Parameter(weight.index_select(1, index).clone())
    linear.in_features = index.numel()


def slice_outputs(module: nn.Module, index: Tensor) -> None:
    """Keep output features ``index`` of an ``nn.Linear`` or ``LowRankLinear`` (its ``up`` factor)."""
    if isinstance(module, LowRankLinear):
        slice_linear_out(module.up, index)
    elif isinstance(module, nn.Linear):
        slice_linear_out(module, index)
    else:
        raise TypeError(f"cannot slice outputs of {type(module).__name__}")


def slice_inputs(module: nn.Module, index: Tensor, scale: Optional[Tensor] = None) -> None:
    """Keep input features ``index`` of an ``nn.Linear`` or ``LowRankLinear`` (its ``down`` factor);
    the bias is unchanged."""
    if isinstance(module, LowRankLinear):
        slice_linear_in(module.down, index, scale)
    elif isinstance(module, nn.Linear):
        slice_linear_in(module, index, scale)
    else:
        raise TypeError(f"cannot slice inputs of {type(module).__name__}")


def slice_conv_out(conv: nn.Conv1d, index: Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.data.index_select(0, index).clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data.index_select(0, index).clone())
    conv.out_channels = index.numel()


def slice_conv_in(conv: nn.Conv1d, index: Tensor, scale: Tensor) -> None:
    weight = conv.weight.data * scale.view(1, -1, 1)
    conv.weight = nn.Parameter(weight.index_select(1, index).clone())
    conv.in_channels = index.numel()


def slice_norm(norm: nn.Module, index: Tensor) -> None:
    """Keep channels ``index`` of a LayerNorm, or of a GroupNorm with one channel per group."""
    if isinstance(norm, nn.LayerNorm):
        norm.normalized_shape = (index.numel(),)
    elif isinstance(norm, nn.GroupNorm):
        if norm.num_groups != norm.num_channels:
            raise NotImplementedError("pruning a GroupNorm needs one channel per group")
        norm.num_groups = norm.num_channels = index.numel()
    else:
        raise TypeError(f"cannot prune norm of type {type(norm).__name__}")
    norm.weight = nn.Parameter(norm.weight.data.index_select(0, index).clone())
    norm.bias = nn.Parameter(norm.bias.data.index_select(0, index).clone())


# --------------------------------------------------------------------------------------------
# Keep-sets
# --------------------------------------------------------------------------------------------


def drop_attention(transformer: nn.Module, index: int) -> None:
    """Remove layer ``index``'s whole attention block.

    WavLM computes its relative position bias in layer 0's attention and every later layer reuses
    it, so the bucket embedding moves up to the transformer instead of disappearing.
    """
    layer = transformer.layers[index]
    attention = layer.attention
    if isinstance(attention, c.WavLMSelfAttention) and attention.rel_attn_embed is not None:
        transformer.rel_attn_embed = attention.rel_attn_embed
    layer.attention = None


def keep_heads(transformer: nn.Module, index: int, kept: Tensor, scale: Optional[Tensor] = None) -> None:
    """Keep heads ``kept`` of layer ``index``: their ``d``-row blocks of q/k/v (weights and biases)
    and ``d``-column blocks of ``out_proj`` (scaled by ``scale[h]``; its bias unchanged).

    No head left removes the block (``drop_attention``). WavLM's per-head bookkeeping
    (``remaining_heads``: which original heads the relative-position gates belong to) follows.
    """
    attention = transformer.layers[index].attention
    if kept.numel() == 0:
        drop_attention(transformer, index)
        return
    d = attention.head_dim
    dims = (kept.unsqueeze(1) * d + torch.arange(d, device=kept.device)).reshape(-1)  # (kept·d,)
    for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
        slice_outputs(projection, dims)
    slice_inputs(attention.out_proj, dims, None if scale is None else scale.repeat_interleave(d))
    attention.num_heads = kept.numel()
    if isinstance(attention, c.WavLMSelfAttention):
        attention.remaining_heads = [attention.remaining_heads[h] for h in kept.tolist()]
        attention._remaining_index = torch.tensor(attention.remaining_heads, dtype=torch.long,
                                                  device=attention._remaining_index.device)


def keep_ffn_units(layer: nn.Module, kept: Tensor, scale: Optional[Tensor] = None) -> None:
    """Keep FFN units ``kept`` of ``layer``: rows of ``intermediate_dense`` and columns of
    ``output_dense`` (scaled by ``scale[u]``); no unit left removes the FFN block."""
    ffn = layer.feed_forward
    if kept.numel() == 0:
        layer.feed_forward = None
        return
    slice_outputs(ffn.intermediate_dense, kept)
    slice_inputs(ffn.output_dense, kept, scale)


def keep_conv_channels(model: nn.Module, index: int, kept: Tensor, scale: Tensor) -> None:
    """Keep output channels ``kept`` of CNN block ``index`` of a waveform model; the next block's
    input (or, after the last block, the feature projection's LayerNorm and Linear and the
    frozen ``dummy_weight``) follows, with ``scale`` folded into the next conv."""
    if kept.numel() == 0:
        raise ValueError(f"conv layer {index}: every output channel is masked; cannot prune it to zero channels")
    blocks = model.feature_extractor.conv_layers
    block = blocks[index]
    slice_conv_out(block.conv, kept)
    if block.layer_norm is not None:
        slice_norm(block.layer_norm, kept)
    if index + 1 < len(blocks):
        slice_conv_in(blocks[index + 1].conv, kept, scale)
    else:
        fe = model.feature_extractor
        fe.dummy_weight = nn.Parameter((fe.dummy_weight.data * scale).index_select(0, kept).clone(), requires_grad=False)
        projection = model.encoder.feature_projection
        slice_norm(projection.layer_norm, kept)
        slice_linear_in(projection.projection, kept)
