"""Sparsity-aware training forward of a gated (stage-1) model.

A hard-concrete gate multiplies its unit's output by a sampled ``z`` in [0, 1]; a unit with
``z == 0`` contributes nothing to the output and receives an exactly zero gradient. The
dense masked step still pays for it. ``extract_features`` here samples each gate where the
dense forward would (same order, so the same random stream when dropouts are off), then
computes only the live units:

- conv channels: the rows of a conv block's weight whose channel gate is non-zero, and only
  the matching input columns of the next block (per-channel norms only; a LayerNorm over
  channels needs every channel, so that block keeps its rows and only drops columns after it);
  the last block is scattered back to full width for the projection's LayerNorm;
- attention heads: the q/k/v rows and out_proj columns of live heads (WavLM: the position
  gate and bias of live heads only);
- FFN units: the rows of the first and columns of the second linear map;
- a whole attention or FFN block whose layer gate is zero is skipped.

Gathering the weights (``Selection.take``) writes the gradients back at full size in
backward, so dead rows get exact zeros, as in the dense step. A skipped block's parameters get explicit
zero gradients (``_ZeroGrads``), not None: AdamW treats a None gradient as "no update" but a
zero gradient still applies momentum and weight decay, and the dense step gives zeros.

A group is computed densely when too few of its units are dead for the gather to pay
(``MIN_SAVED_ROWS``, measured by ``benchmarks/calibrate_sparse.py``). Conv channel gates are
folded into the next block's weight columns instead of multiplying the activations.

Shapes: ``B`` batch, ``T`` frames, ``D`` width, ``H`` heads, ``d`` head width, ``I`` FFN units.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import components as c

# When to gather. Gathering a group costs a copy of its live weights in forward and a
# full-size gradient write in backward, O(units * D); it saves the dead units' matmuls,
# O(rows * dead units * D), where ``rows`` is the number of output positions (B * T frames,
# or conv output steps). So a group is gathered when
#     rows * dead_fraction >= MIN_SAVED_ROWS.
# Measured on the shared 2-core development CPU (AVX-512, torch 2.13, 2 threads, load ~10)
# with benchmarks/calibrate_sparse.py at the HuBERT Base FFN shape: at 400 rows gathering
# lost 3-8 % even with 40 % dead units; at 1600 rows it lost at 10 % dead (160 saved rows)
# and won from 20 % (320 saved rows: x1.06; 640: x1.34). 0 gathers whenever a unit is dead
# (the tests use it). Re-measure on another machine: the break-even moves with it.
MIN_SAVED_ROWS = 320.0

# Training convolutions run on ATen's native kernels, not oneDNN: on the development CPU
# (torch 2.13, 2 threads, batch 2 x 4 s) forward + backward of the Base extractor's convolutions took
# 0.49x (first block, 1 input channel) to 0.73x the oneDNN time (benchmarks/calibrate_sparse.py
# --conv measures it) while the machine was loaded (load ~10); a rerun of bench_stage1.py at
# load ~1 then showed our step 0.62x the original's at init, so oneDNN is kept by default
# until measured on an idle machine. True routes training convolutions to native kernels.
NATIVE_CONV = False


@contextlib.contextmanager
def _onednn_off() -> Iterator[None]:
    # torch.backends.mkldnn.flags() would also touch the TF32 setting and warn on every call.
    previous = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(previous)


class _ZeroGrads(torch.autograd.Function):
    """Identity on ``x`` whose backward also hands exact zero gradients to ``params``."""

    @staticmethod
    def forward(ctx, x: Tensor, *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.specs = [(p.shape, p.dtype, p.device) for p in params]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return (grad, *[torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in ctx.specs])


def _anchor(x: Tensor, modules: Sequence[Optional[nn.Module]], unused: Optional[Tensor] = None) -> Tensor:
    """``x``, with zero gradients for every trainable parameter of ``modules`` (skipped work) and
    for ``unused`` (an input whose producers must see zeros, as in the dense step)."""
    params = [p for m in modules if m is not None for p in m.parameters() if p.requires_grad]
    if unused is not None and unused.requires_grad:
        params.append(unused)
    if not params or not torch.is_grad_enabled():
        return x
    return _ZeroGrads.apply(x, *params)


def _sample(gate: Optional[nn.Module]) -> Optional[Tensor]:
    return gate() if gate is not None else None


class _Gather(torch.autograd.Function):
    """``weight.index_select(dim, live)`` whose backward writes the full-size gradient as a
    zero fill plus a copy of the live part (index_select's own backward scatter-adds)."""

    @staticmethod
    def forward(ctx, weight: Tensor, dim: int, live: Tensor) -> Tensor:  # type: ignore[override]
        ctx.dim, ctx.shape = dim, weight.shape
        ctx.save_for_backward(live)
        return weight.index_select(dim, live)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        (live,) = ctx.saved_tensors
        # One contiguous zero fill (a memset) and a copy of the live slices: cheaper than
        # filling the dead slices through an index, and than index_select's scatter-add.
        return grad.new_zeros(ctx.shape).index_copy_(ctx.dim, live, grad.contiguous()), None, None


class Selection:
    """The live units (non-zero gates) of one gate group, as an index vector ``live``."""

    def __init__(self, live: Tensor) -> None:
        self.live = live

    def take(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """The live slices of ``tensor`` along ``dim`` (gradients scatter back to full size)."""
        if tensor.requires_grad and torch.is_grad_enabled():
            return _Gather.apply(tensor, dim, self.live)
        return tensor.index_select(dim, self.live)


class _NativeConv1d(torch.autograd.Function):
    """``F.conv1d(x, weight, bias, stride)`` with oneDNN off in forward and in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int) -> Tensor:  # type: ignore[override]
        ctx.stride, ctx.has_bias = stride, bias is not None
        ctx.save_for_backward(x, weight)
        with _onednn_off():
            return F.conv1d(x, weight, bias, stride=stride)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        with _onednn_off():
            gx, gw, gb = torch.ops.aten.convolution_backward(
                grad.contiguous(), x, weight, [weight.shape[0]] if ctx.has_bias else None,
                [ctx.stride], [0], [1], False, [0], 1, mask)
        return gx, gw, gb, None


def conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int) -> Tensor:
    """A training-time ``F.conv1d`` (no padding, no groups), on native kernels when ``NATIVE_CONV``."""
    if NATIVE_CONV and x.device.type == "cpu" and torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad):
        return _NativeConv1d.apply(x, weight, bias, stride)
    return F.conv1d(x, weight, bias, stride=stride)


def _live(z: Optional[Tensor], rows: int, min_saved_rows: float) -> tuple[Optional[Selection], bool]:
    """(the live units to gather, or None for the dense computation; are all units dead?)."""
    if z is None:
        return None, False
    n_live = int(z.count_nonzero())
    if n_live == 0:
        return None, True
    dead_fraction = 1.0 - n_live / z.numel()
    if dead_fraction == 0.0 or rows * dead_fraction < min_saved_rows:
        return None, False
    return Selection(torch.nonzero(z, as_tuple=True)[0]), False


def _rows_of_heads(heads: Selection, head_dim: int) -> Selection:
    """The rows of the live heads in a ``(H*d, D)`` projection weight."""
    offsets = torch.arange(head_dim, device=heads.live.device)
    return Selection((heads.live[:, None] * head_dim + offsets).reshape(-1))


# --------------------------------------------------------------------------------------------
# Convolutional feature extractor
# --------------------------------------------------------------------------------------------


def _per_channel_norm(norm: Optional[nn.Module]) -> bool:
    return norm is None or (isinstance(norm, nn.GroupNorm) and norm.num_groups == norm.num_channels)


def _group_norm_rows(x: Tensor, lengths: Optional[Tensor], norm: nn.GroupNorm, rows: Selection) -> Tensor:
    """Per-channel GroupNorm of the gathered channels ``rows`` (statistics over valid frames)."""
    weight = rows.take(norm.weight) if norm.affine else None
    bias = rows.take(norm.bias) if norm.affine else None
    if lengths is None or bool((lengths == x.shape[-1]).all()):
        return F.group_norm(x, x.shape[1], weight, bias, norm.eps)
    mask = c.valid_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
    count = mask.sum(-1, keepdim=True).clamp(min=1.0)
    mean = (x * mask).sum(-1, keepdim=True) / count
    var = (((x - mean) * mask) ** 2).sum(-1, keepdim=True) / count
    x = (x - mean) * torch.rsqrt(var + norm.eps)
    if weight is not None:
        x = x * weight[None, :, None] + bias[None, :, None]
    return x


def _conv_block(
    block: c.ConvLayerBlock, x: Tensor, lengths: Optional[Tensor], cols: Optional[Selection], scale: Optional[Tensor],
    min_saved_rows: float,
) -> tuple[Tensor, Optional[Tensor], Optional[Selection], Optional[Tensor]]:
    """One conv block on the live input channels ``cols`` (None: all).

    ``scale`` ``(C_in_live,)``: the previous block's gate values, not yet applied to ``x``;
    they are folded into this block's weight columns (``conv(x * z) == conv_{W * z}(x)``),
    which spares a pass over, and a saved copy of, the largest activations of the model.
    Returns x (ungated), lengths, the live output channels and their gate values.
    """
    z = _sample(block.hard_concrete)
    weight, bias = block.conv.weight, block.conv.bias
    B, _, L = x.shape
    out_steps = B * max(0, (L - block.kernel_size) // block.stride + 1)
    rows = None
    if _per_channel_norm(block.layer_norm):
        rows, _ = _live(z, out_steps, min_saved_rows)
    if cols is not None:
        weight = cols.take(weight, 1)
    if scale is not None:
        weight = weight * scale[None, :, None]
    if rows is not None:
        weight = rows.take(weight, 0) if cols is None and scale is None else weight.index_select(0, rows.live)
        bias = rows.take(bias) if bias is not None else None
    x = conv1d(x, weight, bias, block.stride)
    if lengths is not None:
        lengths = block.output_lengths(lengths)
    norm = block.layer_norm
    if isinstance(norm, nn.GroupNorm):
        x = block._group_norm(x, lengths) if rows is None else _group_norm_rows(x, lengths, norm, rows)
    elif isinstance(norm, nn.LayerNorm):
        x = norm(x.transpose(1, 2)).transpose(1, 2)
    x = F.gelu(x)
    if z is None:
        return x, lengths, rows, None
    return x, lengths, rows, (z if rows is None else rows.take(z))


def conv_features(
    extractor: c.FeatureExtractor, waveforms: Tensor, lengths: Optional[Tensor], min_saved_rows: float = MIN_SAVED_ROWS
) -> tuple[Tensor, Optional[Tensor]]:
    """``FeatureExtractor.forward`` on live channels: ``(B, L)`` -> ``(B, T, C_last)``, lengths."""
    if waveforms.ndim != 2:
        raise ValueError(f"expected waveforms of shape (batch, samples), got {tuple(waveforms.shape)}")
    x = waveforms.unsqueeze(1)
    cols: Optional[Selection] = None
    scale: Optional[Tensor] = None
    for block in extractor.conv_layers:
        x, lengths, cols, scale = _conv_block(block, x, lengths, cols, scale, min_saved_rows)  # type: ignore[arg-type]
    if scale is not None:
        x = x * scale.unsqueeze(-1)
    if cols is not None:
        # The projection's LayerNorm averages over every channel, dead ones (zeros) included.
        full = x.new_zeros(x.shape[0], extractor.dummy_weight.shape[0], x.shape[-1])
        x = full.index_copy(1, cols.live, x)
    return x.transpose(1, 2) * extractor.dummy_weight, lengths


# --------------------------------------------------------------------------------------------
# Attention and feed-forward
# --------------------------------------------------------------------------------------------


def _wavlm_bias(
    attn: c.WavLMSelfAttention, x: Tensor, key_padding_mask: Optional[Tensor], position_bias: Tensor, heads: Optional[Selection]
) -> Tensor:
    """WavLM's gated position bias for the layer's heads ``heads`` (None: all kept), ``(B, h, T, T)``."""
    original = attn._remaining_index if heads is None else attn._remaining_index.index_select(0, heads.live)
    B, T, _ = x.shape
    chunks = x.view(B, T, attn.total_num_heads, attn.head_dim).index_select(2, original).transpose(1, 2)  # (B, h, T, d)
    h = original.numel()
    gate_a, gate_b = torch.sigmoid(attn.gru_rel_pos_linear(chunks).view(B, h, T, 2, 4).sum(-1)).chunk(2, dim=-1)
    const = attn.gru_rel_pos_const.index_select(1, original)
    gate = gate_a * (gate_b * const - 1.0) + 2.0  # (B, h, T, 1)
    bias = (gate * position_bias.index_select(0, original).unsqueeze(0)).to(x.dtype)
    if key_padding_mask is not None:
        bias = bias.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    return bias


def attention(
    attn: c.SelfAttention,
    x: Tensor,
    key_padding_mask: Optional[Tensor],
    position_bias: Optional[Tensor],
    min_saved_rows: float = MIN_SAVED_ROWS,
) -> Optional[Tensor]:
    """``SelfAttention.forward`` on live heads; None when the layer gate is zero (skip the block)."""
    z_heads = _sample(attn.hard_concrete_for_heads)
    z_layer = _sample(attn.hard_concrete_for_layer)
    if z_layer is not None and not bool(z_layer.ne(0).any()):
        return None
    B, T, _ = x.shape
    heads, no_heads = _live(z_heads, B * T, min_saved_rows)
    if no_heads:
        # Every head is gated off: only out_proj's bias reaches the output.
        out = _anchor(attn.out_proj.bias.expand(B, T, -1), [attn], unused=x)
        return out * z_layer if z_layer is not None else out
    if heads is None:
        q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        w_out = attn.out_proj.weight
        num_heads = attn.num_heads
    else:
        rows = _rows_of_heads(heads, attn.head_dim)
        q, k, v = (F.linear(x, rows.take(p.weight), rows.take(p.bias)) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        w_out = rows.take(attn.out_proj.weight, 1)
        num_heads = heads.live.numel()

    def split(t: Tensor) -> Tensor:
        return t.view(B, T, num_heads, attn.head_dim).transpose(1, 2)

    if isinstance(attn, c.WavLMSelfAttention) and position_bias is not None:
        attn_mask = _wavlm_bias(attn, x, key_padding_mask, position_bias, heads)
    else:
        attn_mask = key_padding_mask[:, None, None, :] if key_padding_mask is not None else None
    context = F.scaled_dot_product_attention(
        split(q), split(k), split(v), attn_mask=attn_mask, dropout_p=attn.dropout if attn.training else 0.0
    )  # (B, h, T, d)
    if z_heads is not None:
        gates = z_heads if heads is None else heads.take(z_heads)
        context = context * gates.view(1, -1, 1, 1)
    out = F.linear(context.transpose(1, 2).reshape(B, T, num_heads * attn.head_dim), w_out, attn.out_proj.bias)
    return out * z_layer if z_layer is not None else out


def feed_forward(ffn: c.FeedForward, x: Tensor, min_saved_rows: float = MIN_SAVED_ROWS) -> Optional[Tensor]:
    """``FeedForward.forward`` on live units; None when the layer gate is zero (skip the block)."""
    z_units = _sample(ffn.hard_concrete_for_intermediate)
    z_layer = _sample(ffn.hard_concrete_for_layer)
    if z_layer is not None and not bool(z_layer.ne(0).any()):
        return None
    units, no_units = _live(z_units, x.shape[0] * x.shape[1], min_saved_rows)
    if no_units:
        out = _anchor(ffn.output_dense.bias.expand(*x.shape[:-1], -1), [ffn], unused=x)
    else:
        first, second = ffn.intermediate_dense, ffn.output_dense
        if units is None:
            h = ffn.intermediate_dropout(F.gelu(first(x)))
            if z_units is not None:
                h = h * z_units
            out = second(h)
        else:
            h = F.gelu(F.linear(x, units.take(first.weight), units.take(first.bias)))
            h = ffn.intermediate_dropout(h) * units.take(z_units)  # type: ignore[arg-type]
            out = F.linear(h, units.take(second.weight, 1), second.bias)
    out = ffn.output_dropout(out)
    return out * z_layer if z_layer is not None else out


def encoder_layer(
    layer: c.EncoderLayer, x: Tensor, key_padding_mask: Optional[Tensor], position_bias: Optional[Tensor],
    min_saved_rows: float = MIN_SAVED_ROWS,
) -> Tensor:
    """``EncoderLayer.forward`` with skipped blocks; ``(B, T, D)`` -> ``(B, T, D)``."""
    if layer.layer_norm_first:
        if layer.attention is not None:
            out = attention(layer.attention, layer.layer_norm(x), key_padding_mask, position_bias, min_saved_rows)
            x = x + layer.dropout(out) if out is not None else _anchor(x, [layer.attention, layer.layer_norm])
        if layer.feed_forward is not None:
            out = feed_forward(layer.feed_forward, layer.final_layer_norm(x), min_saved_rows)
            x = x + out if out is not None else _anchor(x, [layer.feed_forward, layer.final_layer_norm])
        return x
    if layer.attention is not None:
        out = attention(layer.attention, x, key_padding_mask, position_bias, min_saved_rows)
        x = x + layer.dropout(out) if out is not None else _anchor(x, [layer.attention])
    x = layer.layer_norm(x)
    if layer.feed_forward is not None:
        out = feed_forward(layer.feed_forward, x, min_saved_rows)
        x = x + out if out is not None else _anchor(x, [layer.feed_forward])
    return layer.final_layer_norm(x)


# --------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------


def has_gates(model: nn.Module) -> bool:
    from .hardconcrete import HardConcrete

    return any(isinstance(m, HardConcrete) for m in model.modules())


def extract_features(
    model: nn.Module,
    waveforms: Tensor,
    lengths: Optional[Tensor] = None,
    num_layers: Optional[int] = None,
    min_saved_rows: float = MIN_SAVED_ROWS,
) -> tuple[list[Tensor], Optional[Tensor]]:
    """``Wav2Vec2Model.extract_features`` computing only live units (training mode).

    Returns ``([h0, ..., hN], frame_lengths)`` like the model's own method; in eval mode
    (deterministic gates) or for a model without gates it simply calls that method.
    No layer drop (as ``extract_features``); dropouts are applied to the live units.
    ``min_saved_rows``: the gather rule (``MIN_SAVED_ROWS``; 0 gathers whenever a unit is dead).
    """
    if not model.training or not has_gates(model):
        return model.extract_features(waveforms, lengths, num_layers)
    if lengths is not None:
        lengths = lengths.to(device=waveforms.device)
        if lengths.shape != waveforms.shape[:1]:
            raise ValueError(f"lengths has shape {tuple(lengths.shape)}, expected ({waveforms.shape[0]},)")
    if model.normalize_waveform:
        waveforms = model._normalize(waveforms, lengths)
    features, lengths = conv_features(model.feature_extractor, waveforms, lengths, min_saved_rows)
    transformer = model.encoder.transformer
    num_layers = len(transformer.layers) if num_layers is None else num_layers
    if not 0 <= num_layers <= len(transformer.layers):
        raise ValueError(f"num_layers must be in [0, {len(transformer.layers)}], got {num_layers}")
    x, mask = model.encoder.project(features, lengths)
    outputs = [x]
    if num_layers == 0:
        return outputs, lengths
    x = transformer._preprocess(x)
    position_bias = transformer.position_bias(x.shape[1], x.device)
    for layer in transformer.layers[:num_layers]:
        x = encoder_layer(layer, x, mask, position_bias, min_saved_rows)
        outputs.append(x)
    return outputs, lengths
