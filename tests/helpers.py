"""Shared helpers for the wav2vec2 model-core tests (tiny configs, gate patterns, MAC hooks).

Import as ``from helpers import tiny_config`` (``tests/`` is on ``sys.path`` under pytest's
default import mode); ``conftest.py`` also exposes the main ones as fixtures.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import wav2vec2
from wav2vec2 import components as c

# Short names (DPHuBERT's ``--pruning_units``) for the five prune switches of the config.
PRUNE_SWITCH_KEYS = {
    "conv": "extractor_prune_conv_channels",
    "head": "encoder_prune_attention_heads",
    "attlayer": "encoder_prune_attention_layer",
    "interm": "encoder_prune_feed_forward_intermediate",
    "ffnlayer": "encoder_prune_feed_forward_layer",
}
ALL_PRUNE_UNITS = tuple(PRUNE_SWITCH_KEYS)

# Total stride 5*2*2*2 = 40 samples, receptive field 10 + 2*5 + 2*10 + 1*20 = 60 samples.
TINY_CONV = [[16, 10, 5], [12, 3, 2], [16, 3, 2], [8, 2, 2]]
TINY_CONV_STRIDE = 40


def tiny_config(
    family: str = "hubert",
    extractor_mode: str = "group_norm",
    layer_norm_first: bool = False,
    *,
    num_layers: int = 3,
    embed_dim: int = 32,
    num_heads: int = 4,
    ff_interm: int = 24,
    conv: Optional[Sequence[Sequence[int]]] = None,
    pos_conv_kernel: int = 8,
    pos_conv_groups: int = 4,
    prune: Iterable[str] = (),
    **overrides: Any,
) -> dict[str, Any]:
    """A small, dropout-free config in the DPHuBERT key layout.

    ``family``: ``"hubert"`` (also wav2vec2: same architecture) or ``"wavlm"``.
    ``prune``: short unit names (``conv``, ``head``, ``attlayer``, ``interm``, ``ffnlayer``) or
    full switch keys to turn on; ``overrides`` replace any config key (e.g. dropouts).
    """
    if family not in ("hubert", "wavlm"):
        raise ValueError(f"unknown family {family!r}")
    config: dict[str, Any] = dict(
        extractor_mode=extractor_mode,
        extractor_conv_layer_config=[list(layer) for layer in (conv or TINY_CONV)],
        extractor_conv_bias=extractor_mode == "layer_norm",
        encoder_embed_dim=embed_dim,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=pos_conv_kernel,
        encoder_pos_conv_groups=pos_conv_groups,
        encoder_num_layers=num_layers,
        encoder_use_attention=[True] * num_layers,
        encoder_use_feed_forward=[True] * num_layers,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=[ff_interm] * num_layers,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=layer_norm_first,
        encoder_layer_drop=0.0,
        aux_num_out=None,
        normalize_waveform=False,
    )
    for key in PRUNE_SWITCH_KEYS.values():
        config[key] = False
    for unit in prune:
        config[PRUNE_SWITCH_KEYS.get(unit, unit)] = True
    if family == "hubert":
        config["encoder_num_heads"] = [num_heads] * num_layers
        config["encoder_head_dim"] = embed_dim // num_heads
    else:
        config["encoder_total_num_heads"] = [num_heads] * num_layers
        config["encoder_remaining_heads"] = [list(range(num_heads)) for _ in range(num_layers)]
        # Small bucket settings so that ~50-frame inputs exercise the log-spaced buckets.
        config["encoder_num_buckets"] = 32
        config["encoder_max_distance"] = 100
    config.update(overrides)
    return config


def tiny_model(family: str = "hubert", seed: int = 0, randomize_norms: bool = True, **kwargs: Any) -> wav2vec2.Wav2Vec2Model:
    """``wav2vec2_model(**tiny_config(...))`` with seeded weights, in eval mode.

    ``randomize_norms`` gives LayerNorm/GroupNorm affine parameters and biases random values,
    so a test cannot pass by accident because they sit at 1 / 0.
    """
    torch.manual_seed(seed)
    model = wav2vec2.wav2vec2_model(**tiny_config(family, **kwargs))
    if randomize_norms:
        randomize_(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affines, biases, and WavLM gate constants (everything but gates and dummy_weight)."""
    generator = torch.Generator().manual_seed(seed + 1000)
    for name, param in model.named_parameters():
        if name.endswith("log_alpha") or name.endswith("dummy_weight"):
            continue
        if name.endswith("bias") or name.endswith("gru_rel_pos_const"):
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        elif isinstance(_owner(model, name), (nn.LayerNorm, nn.GroupNorm)):
            param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=generator))
        elif name.endswith("rel_attn_embed.weight"):
            param.copy_(torch.randn(param.shape, generator=generator))
    return model


def _owner(model: nn.Module, param_name: str) -> nn.Module:
    return model.get_submodule(param_name.rpartition(".")[0])


def waveforms(batch: int = 1, num_samples: int = 2000, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, num_samples, generator=generator)


def numel(model: nn.Module, include_gates: bool = False) -> int:
    """Parameter count, by default without the hard-concrete ``log_alpha`` gates."""
    return sum(p.numel() for n, p in model.named_parameters() if include_gates or not n.endswith("log_alpha"))


# ------------------------------------------------------------------------------------------
# Gate patterns
# ------------------------------------------------------------------------------------------

OPEN = 8.0  # P(z > 0) = sigmoid(8 + 1.5986) ~ 0.99993, eval soft value sigmoid(9.6) ~ 0.99993
CLOSED = -8.0  # P(z > 0) ~ 0.0018


@torch.no_grad()
def set_gate(gate, closed: Iterable[int] = (), open_values: Optional[Tensor] = None) -> None:
    """Open every unit (or set ``open_values``), then close the units in ``closed``.

    With ``OPEN`` / ``CLOSED`` the eval mask zeroes exactly the ``closed`` units:
    E[L0] ~ n - |closed| up to ~0.002 per unit.
    """
    values = torch.full((gate.n,), OPEN) if open_values is None else open_values.clone().float()
    for i in closed:
        values[i] = CLOSED
    gate.log_alpha.copy_(values)


def soft_open_values(n: int, seed: int, low: float = 0.5, high: float = 3.0) -> Tensor:
    """log_alpha values whose eval soft scale sigmoid(1.2*log_alpha) is clearly below 1.

    Pruning must fold these scales into the next layer; an implementation that treated the
    survivors as 1 would fail the equality tests.
    """
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(n, generator=generator)


# ------------------------------------------------------------------------------------------
# An independent MAC counter (forward hooks + a patched attention kernel)
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def count_macs_by_hooks(model: nn.Module) -> Iterator[dict[str, int]]:
    """Count multiply-accumulates of the forward passes run inside the block.

    - every ``nn.Linear``: (rows of input) * in * out;
    - every ``nn.Conv1d``: B * out_frames * C_out * (C_in / groups) * k;
    - the positional conv (a weight-normed functional conv): B * kept_frames * D * (D/G) * K,
      counted on the frames the module returns (the extra frame of an even kernel is dropped,
      the convention of ``num_macs``);
    - attention: ``F.scaled_dot_product_attention`` is wrapped: 2 * B * H * T_q * T_k * d
      (scores q k^T and context p v).
    Norms, activations, softmax, bias additions are not counted.
    """
    counts = {"linear": 0, "conv": 0, "pos_conv": 0, "attention": 0}
    handles = []

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        rows = inputs[0].numel() // module.in_features
        counts["linear"] += rows * module.in_features * module.out_features

    def conv_hook(module: nn.Conv1d, inputs, output) -> None:
        B, C_out, frames = output.shape
        counts["conv"] += B * frames * C_out * (module.in_channels // module.groups) * module.kernel_size[0]

    def pos_conv_hook(module: c.ConvolutionalPositionalEmbedding, inputs, output) -> None:
        B, frames, _ = output.shape
        counts["pos_conv"] += B * frames * module.conv.weight_v.numel()

    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv1d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, c.ConvolutionalPositionalEmbedding):
            handles.append(module.register_forward_hook(pos_conv_hook))

    original = F.scaled_dot_product_attention

    def counting_sdpa(q: Tensor, k: Tensor, v: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        *batch, T_q, d = q.shape
        T_k = k.shape[-2]
        n = 1
        for b in batch:
            n *= b
        counts["attention"] += 2 * n * T_q * T_k * d
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = counting_sdpa
    try:
        yield counts
    finally:
        F.scaled_dot_product_attention = original
        for handle in handles:
            handle.remove()


def hook_macs(model: nn.Module, num_samples: int) -> int:
    """MACs of one eval forward over ``num_samples`` samples (batch 1), counted by hooks."""
    with torch.inference_mode(), count_macs_by_hooks(model) as counts:
        model(torch.zeros(1, num_samples))
    return sum(counts.values())


def max_abs_diff(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    assert len(a) == len(b), (len(a), len(b))
    return max(float((x - y).abs().max()) for x, y in zip(a, b))
