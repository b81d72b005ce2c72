"""Parameter and MAC counts from the model's structure and its hard-concrete gates.

One formula, three sources of unit counts (``mode``):

- ``"expected"``: E[number of kept units] from each gate (``HardConcrete.l0_norm``), a
  differentiable float64 scalar used by the sparsity / compute constraints;
- ``"exact"``: the number of units the deterministic eval mask keeps, i.e. what
  ``prune()`` will leave; after ``prune()`` it equals ``sum(p.numel())``;
- structures without a gate count with their full size, so an unmasked model gives
  ``sum(p.numel())`` exactly in both modes.

Differences from DPHuBERT's count (on purpose): WavLM's relative-position parameters, conv
biases, every LayerNorm of a layer_norm extractor and the ``aux`` head are included, so the
count is complete for every family.

MACs follow the usual convention for speech SSL models (SUPERB profiler, DPHuBERT tables):
multiply-accumulates of convolutions, linear maps and the two attention matrix products;
norms, activations, softmax and bias additions are not counted.
"""

from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import Tensor

from . import components as c
from .hardconcrete import HardConcrete

Mode = Literal["expected", "exact"]


def _const(value: float, device: torch.device | None = None) -> Tensor:
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _device(gate: HardConcrete) -> torch.device:
    return gate.log_alpha.device


def kept_units(gate: Optional[HardConcrete], full: int, mode: Mode) -> Tensor:
    """Number of kept units among ``full`` under ``gate`` (float64 scalar)."""
    if gate is None:
        return _const(full)
    if mode == "expected":
        return gate.l0_norm().double()
    return _const(gate.num_kept_in_eval(), _device(gate))


def block_gate(gate: Optional[HardConcrete], mode: Mode) -> Tensor:
    """1 if a whole block is kept, 0 if removed; P(kept) in expected mode."""
    if gate is None:
        return _const(1.0)
    if mode == "expected":
        return gate.keep_probabilities().double().squeeze(0)
    return _const(float(gate.num_kept_in_eval()), _device(gate))


def conv_channels(model: torch.nn.Module, mode: Mode) -> list[Tensor]:
    """Kept output channels of each conv block."""
    return [kept_units(b.hard_concrete, b.out_channels, mode) for b in model.feature_extractor.conv_layers]


def attention_heads(attention: Optional[c.SelfAttention], mode: Mode) -> tuple[Tensor, Tensor]:
    """(block gate, kept heads) of one attention block."""
    if attention is None:
        return _const(0.0), _const(0.0)
    gate = block_gate(attention.hard_concrete_for_layer, mode)
    heads = kept_units(attention.hard_concrete_for_heads, attention.num_heads, mode)
    if mode == "exact" and float(heads) == 0.0:
        gate = _const(0.0)  # prune() removes a block without heads
    return gate, heads


def ffn_units(ffn: Optional[c.FeedForward], mode: Mode) -> tuple[Tensor, Tensor]:
    """(block gate, kept intermediate units) of one FFN block."""
    if ffn is None:
        return _const(0.0), _const(0.0)
    gate = block_gate(ffn.hard_concrete_for_layer, mode)
    units = kept_units(ffn.hard_concrete_for_intermediate, ffn.interm_features, mode)
    if mode == "exact" and float(units) == 0.0:
        gate = _const(0.0)
    return gate, units


def num_params(model: torch.nn.Module, mode: Mode = "expected") -> Tensor:
    """Parameter count of a ``Wav2Vec2Model`` under its gates (float64 scalar)."""
    total = _const(0.0)
    in_channels: Tensor = _const(1.0)
    channels = conv_channels(model, mode)
    for block, out_channels in zip(model.feature_extractor.conv_layers, channels):
        total = total + in_channels * out_channels * block.kernel_size
        if block.conv.bias is not None:
            total = total + out_channels
        if block.layer_norm is not None:
            total = total + 2 * out_channels
        in_channels = out_channels
    last = channels[-1]
    encoder = model.encoder
    D = encoder.feature_projection.projection.out_features
    total = total + last  # dummy_weight
    total = total + 2 * last + (last + 1) * D  # feature projection
    transformer = encoder.transformer
    total = total + sum(p.numel() for p in transformer.pos_conv_embed.parameters()) + 2 * D
    if transformer.rel_attn_embed is not None:
        total = total + transformer.rel_attn_embed.weight.numel()
    for layer in transformer.layers:
        total = total + 4 * D  # the two LayerNorms
        attention = layer.attention
        gate, heads = attention_heads(attention, mode)
        if attention is not None:
            inner = heads * attention.head_dim
            block = 3 * (D + 1) * inner + (inner + 1) * D
            if isinstance(attention, c.WavLMSelfAttention):
                block = block + attention.gru_rel_pos_linear.weight.numel() + attention.gru_rel_pos_linear.bias.numel()
                block = block + attention.gru_rel_pos_const.numel()
                if attention.rel_attn_embed is not None:
                    # Never pruned: it moves to the transformer if its block goes.
                    total = total + attention.rel_attn_embed.weight.numel()
            total = total + gate * block
        ffn = layer.feed_forward
        gate, units = ffn_units(ffn, mode)
        if ffn is not None:
            total = total + gate * ((D + 1) * units + (units + 1) * D)
    if model.aux is not None:
        total = total + model.aux.weight.numel() + model.aux.bias.numel()
    return total


def conv_output_lengths(model: torch.nn.Module, num_samples: int) -> list[int]:
    """Frames after each conv block for an input of ``num_samples`` samples."""
    lengths = []
    length = num_samples
    for block in model.feature_extractor.conv_layers:
        length = max((length - block.kernel_size) // block.stride + 1, 0)
        lengths.append(length)
    return lengths


def num_macs(model: torch.nn.Module, num_samples: int, mode: Mode = "expected") -> Tensor:
    """Multiply-accumulates of one forward pass over ``num_samples`` samples (float64 scalar)."""
    frames = conv_output_lengths(model, num_samples)
    channels = conv_channels(model, mode)
    total = _const(0.0)
    in_channels: Tensor = _const(1.0)
    for block, out_channels, length in zip(model.feature_extractor.conv_layers, channels, frames):
        total = total + length * in_channels * out_channels * block.kernel_size
        in_channels = out_channels
    T = frames[-1]
    encoder = model.encoder
    D = encoder.feature_projection.projection.out_features
    total = total + T * channels[-1] * D
    pos_conv = encoder.transformer.pos_conv_embed.conv
    total = total + T * pos_conv.weight_v.numel()  # each output frame: D * (D / G) * K
    for layer in encoder.transformer.layers:
        attention = layer.attention
        gate, heads = attention_heads(attention, mode)
        if attention is not None:
            inner = heads * attention.head_dim
            block = 4 * T * D * inner + 2 * T * T * inner  # q, k, v, out; scores and context
            if isinstance(attention, c.WavLMSelfAttention):
                block = block + T * attention.total_num_heads * attention.gru_rel_pos_linear.weight.numel()
            total = total + gate * block
        gate, units = ffn_units(layer.feed_forward, mode)
        if layer.feed_forward is not None:
            total = total + gate * 2 * T * D * units
    if model.aux is not None:
        total = total + T * model.aux.weight.numel()
    return total


def per_layer_summary(model: torch.nn.Module, mode: Mode = "exact") -> dict[str, list[float]]:
    """Kept conv channels per block, heads and FFN units per layer (0 for removed blocks)."""
    heads, units = [], []
    for layer in model.encoder.transformer.layers:
        gate, h = attention_heads(layer.attention, mode)
        heads.append(float(gate * h))
        gate, u = ffn_units(layer.feed_forward, mode)
        units.append(float(gate * u))
    return {"conv_channels": [float(x) for x in conv_channels(model, mode)], "heads": heads, "ffn_units": units}
