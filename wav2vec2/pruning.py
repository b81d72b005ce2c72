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

The gates only decide what to keep; ``wav2vec2.surgery`` slices (the same routines serve
score-based pruning).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from . import components as c
from .surgery import drop_attention, keep_conv_channels, keep_ffn_units, keep_heads


def _kept_index(mask: Tensor) -> Tensor:
    return mask.nonzero().squeeze(-1)


def _prune_feature_extractor(model: Any) -> list[list[int]]:
    conv_config: list[list[int]] = []
    for i, block in enumerate(model.feature_extractor.conv_layers):
        if block.hard_concrete is not None:
            mask = block.hard_concrete()
            keep_conv_channels(model, i, _kept_index(mask), mask)
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


def _prune_attention(transformer: nn.Module, index: int) -> None:
    attention = transformer.layers[index].attention
    if attention is None:
        return
    if not _fold_block_gate(attention, attention.out_proj):
        drop_attention(transformer, index)
        return
    if attention.hard_concrete_for_heads is not None:
        mask = attention.hard_concrete_for_heads()
        attention.hard_concrete_for_heads = None
        keep_heads(transformer, index, _kept_index(mask), mask)


def _prune_feed_forward(layer: c.EncoderLayer) -> None:
    ffn = layer.feed_forward
    if ffn is None:
        return
    if not _fold_block_gate(ffn, ffn.output_dense):
        layer.feed_forward = None
        return
    if ffn.hard_concrete_for_intermediate is not None:
        mask = ffn.hard_concrete_for_intermediate()
        ffn.hard_concrete_for_intermediate = None
        keep_ffn_units(layer, _kept_index(mask), mask)


@torch.no_grad()
def prune_model(model: Any) -> dict[str, Any]:
    """Prune ``model`` in place (it is left in eval mode) and return its new config."""
    model.eval()
    config = dict(model.config)
    config["extractor_conv_layer_config"] = _prune_feature_extractor(model)
    transformer = model.encoder.transformer
    for index, layer in enumerate(transformer.layers):
        _prune_attention(transformer, index)
        _prune_feed_forward(layer)

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
