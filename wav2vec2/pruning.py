"""Physical removal of masked structures (``Wav2Vec2Model.prune``).

Every gate is evaluated in its deterministic (eval) form. Zeroed units are sliced away; the
soft values of the survivors are folded into the next linear map, so the pruned model
computes what the eval-mode masked model computed:

- attention heads, FFN units, whole attention / FFN blocks (gate 0), and conv -> conv
  channels (group_norm extractor): exact up to float rounding;
- channels of the **last** conv block: the feature projection's LayerNorm normalises over
  the channels, and the masked channels (zeros) took part in its mean and variance before
  pruning but are absent after, so the output changes slightly;
- channels of any block in the **layer_norm** extractor: that block's own LayerNorm runs
  before the gate, over all channels, so removing channels changes its statistics;
- a block whose every head / FFN unit is masked while its block gate is open still added its
  gated output bias, a constant that removing the block drops.
The stage-2 distillation absorbs these small differences; tests bound them.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from . import components as c


def _kept_index(mask: Tensor) -> Tensor:
    return mask.nonzero().squeeze(-1)


def slice_linear_out(linear: nn.Linear, index: Tensor) -> None:
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, index).clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, index).clone())
    linear.out_features = index.numel()


def slice_linear_in(linear: nn.Linear, index: Tensor, scale: Optional[Tensor] = None) -> None:
    weight = linear.weight.data
    if scale is not None:
        weight = weight * scale.unsqueeze(0)
    linear.weight = nn.Parameter(weight.index_select(1, index).clone())
    linear.in_features = index.numel()


def _slice_conv_out(conv: nn.Conv1d, index: Tensor) -> None:
    conv.weight = nn.Parameter(conv.weight.data.index_select(0, index).clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data.index_select(0, index).clone())
    conv.out_channels = index.numel()


def _slice_conv_in(conv: nn.Conv1d, index: Tensor, scale: Tensor) -> None:
    weight = conv.weight.data * scale.view(1, -1, 1)
    conv.weight = nn.Parameter(weight.index_select(1, index).clone())
    conv.in_channels = index.numel()


def _slice_norm(norm: nn.Module, index: Tensor) -> None:
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


def _prune_feature_extractor(model: Any) -> list[list[int]]:
    blocks = model.feature_extractor.conv_layers
    conv_config: list[list[int]] = []
    for i, block in enumerate(blocks):
        if block.hard_concrete is not None:
            mask = block.hard_concrete()
            index = _kept_index(mask)
            if index.numel() == 0:
                raise ValueError(f"conv layer {i}: every output channel is masked; cannot prune it to zero channels")
            _slice_conv_out(block.conv, index)
            if block.layer_norm is not None:
                _slice_norm(block.layer_norm, index)
            if i + 1 < len(blocks):
                _slice_conv_in(blocks[i + 1].conv, index, mask)
            else:
                fe = model.feature_extractor
                fe.dummy_weight = nn.Parameter((fe.dummy_weight.data * mask).index_select(0, index).clone(), requires_grad=False)
                projection = model.encoder.feature_projection
                _slice_norm(projection.layer_norm, index)
                slice_linear_in(projection.projection, index)
            block.hard_concrete = None
        conv_config.append([block.out_channels, block.kernel_size, block.stride])
    return conv_config


def _fold_block_gate(block: nn.Module, output: nn.Linear) -> bool:
    """Fold a block's whole-block gate into its output projection; False if the gate is closed."""
    gate_module = block.hard_concrete_for_layer
    if gate_module is None:
        return True
    gate = gate_module()
    output.weight.data *= gate
    output.bias.data *= gate
    block.hard_concrete_for_layer = None
    return float(gate) != 0.0


def _prune_attention(layer: c.EncoderLayer) -> None:
    attention = layer.attention
    if attention is None:
        return
    if not _fold_block_gate(attention, attention.out_proj):
        layer.attention = None
        return
    if attention.hard_concrete_for_heads is not None:
        mask = attention.hard_concrete_for_heads()
        heads = _kept_index(mask)
        attention.hard_concrete_for_heads = None
        if heads.numel() == 0:
            layer.attention = None
            return
        d = attention.head_dim
        dims = (heads.unsqueeze(1) * d + torch.arange(d, device=heads.device)).reshape(-1)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            slice_linear_out(projection, dims)
        slice_linear_in(attention.out_proj, dims, mask.repeat_interleave(d))
        attention.num_heads = heads.numel()
        if isinstance(attention, c.WavLMSelfAttention):
            attention.remaining_heads = [attention.remaining_heads[h] for h in heads.tolist()]
            attention._remaining_index = torch.tensor(attention.remaining_heads, dtype=torch.long, device=heads.device)


def _prune_feed_forward(layer: c.EncoderLayer) -> None:
    ffn = layer.feed_forward
    if ffn is None:
        return
    if not _fold_block_gate(ffn, ffn.output_dense):
        layer.feed_forward = None
        return
    if ffn.hard_concrete_for_intermediate is not None:
        mask = ffn.hard_concrete_for_intermediate()
        units = _kept_index(mask)
        ffn.hard_concrete_for_intermediate = None
        if units.numel() == 0:
            layer.feed_forward = None
            return
        slice_linear_out(ffn.intermediate_dense, units)
        slice_linear_in(ffn.output_dense, units, mask)


@torch.no_grad()
def prune_model(model: Any) -> dict[str, Any]:
    """Prune ``model`` in place (it is left in eval mode) and return its new config."""
    model.eval()
    config = dict(model.config)
    config["extractor_conv_layer_config"] = _prune_feature_extractor(model)
    transformer = model.encoder.transformer
    first_attention = transformer.layers[0].attention if len(transformer.layers) else None
    for layer in transformer.layers:
        _prune_attention(layer)
        _prune_feed_forward(layer)
    if isinstance(first_attention, c.WavLMSelfAttention) and transformer.layers[0].attention is None:
        # The bucket embedding outlives layer 0's attention: every layer still needs the bias.
        transformer.rel_attn_embed = first_attention.rel_attn_embed

    layers = list(transformer.layers)
    config["encoder_use_attention"] = [layer.attention is not None for layer in layers]
    config["encoder_use_feed_forward"] = [layer.feed_forward is not None for layer in layers]
    config["encoder_ff_interm_features"] = [layer.feed_forward.interm_features if layer.feed_forward is not None else 0 for layer in layers]
    if "encoder_remaining_heads" in config:
        config["encoder_remaining_heads"] = [list(layer.attention.remaining_heads) if layer.attention is not None else [] for layer in layers]
    else:
        config["encoder_num_heads"] = [layer.attention.num_heads if layer.attention is not None else 0 for layer in layers]
    for key in ("extractor_prune_conv_channels", "encoder_prune_attention_heads", "encoder_prune_attention_layer",
                "encoder_prune_feed_forward_intermediate", "encoder_prune_feed_forward_layer"):
        config[key] = False
    model.config = config
    return dict(config)
