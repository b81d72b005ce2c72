"""Attention-head scoring, selection and physical removal, family-agnostic.

Works on any model holding one ``wav2vec2.components.Transformer`` (``Wav2Vec2Model`` incl.
WavLM, MelHuBERT). Layers are indexed by their position in ``transformer.layers``; head
indices are relative to the heads a layer has *now* (the original MelHuBERT code's ``Pruned_heads``
convention).

Scores, per layer a float64 tensor ``(H_l,)``; layers without attention are absent:

- ``head_scores_l1``: Σ|W| over the head's ``d`` rows of ``q_proj``, ``k_proj`` and ``v_proj``
  weights plus |b| of the matching bias entries (``out_proj`` not included);
- ``accumulate_head_importance`` ("data-driven", Michel et al. 2019 as the original code does
  it): for each batch, ``loss_fn(model, batch)`` is run forward and differentiated w.r.t.
  each layer's concatenated per-head attention contexts ``C`` ``(B, T, H·d)`` (the input of
  ``out_proj``, captured by a forward pre-hook; no change to ``components.py``); head ``h``
  gains ``Σ_b Σ_t |⟨∂L/∂C_h(b, t), C_h(b, t)⟩|`` (absolute value **per frame**, then summed
  over frames and utterances), and the total is divided by the number of batches. Scores are
  then divided per layer by their p-norm ``(Σ_h s_h^p)^{1/p}`` (``normalize_exponent=p``,
  None disables). ``torch.autograd.grad`` is used, so parameter ``.grad`` buffers are left
  untouched; the caller chooses train/eval mode (the original code scores in train mode with
  its normal random masking). Any batch size works, including a last batch of one.

Selection (``select_heads``): ``by_layer`` removes ``num / n_layers`` weakest heads of every
layer with attention (``num`` must divide evenly; the original MelHuBERT code's l1 setting is one per layer,
``num = n_layers``); ``by_whole`` ranks all heads globally, protects the best head of every
layer and removes the ``num`` weakest of the rest. Ties go to the lower (layer, head).

Removal (``remove_heads``): keeps the surviving heads' ``d``-row blocks of q/k/v weight and
bias and the matching ``d``-column blocks of ``out_proj`` (its bias unchanged), updates
``num_heads`` (WavLM: ``remaining_heads`` and ``_remaining_index``); a layer left without
heads loses its attention block (WavLM layer 0's bucket embedding moves to the transformer).
New ``nn.Parameter`` objects are created: rebuild the optimiser. The new structure is written
back with ``measure.sync_structure`` and returned.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from wav2vec2 import components as c

from wav2vec2.low_rank import linear_bias, linear_weight
from wav2vec2.surgery import keep_heads
from wav2vec2.measure import LayerStructure, find_transformer, sync_structure
from .ops_weight import is_masked

Strategy = Literal["by_layer", "by_whole"]
Scores = dict[int, Tensor]


def _attention_layers(model: nn.Module) -> list[tuple[int, c.SelfAttention]]:
    return [(i, layer.attention) for i, layer in enumerate(find_transformer(model).layers) if layer.attention is not None]


def _check_plain(attention: c.SelfAttention, index: int) -> None:
    if attention.hard_concrete_for_heads is not None or attention.hard_concrete_for_layer is not None:
        raise ValueError(f"layer {index}: attention has hard-concrete gates; call model.prune() first")
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        if is_masked(getattr(attention, name)):
            raise ValueError(f"layer {index}: {name} carries weight-pruning masks; fold them (ops_weight.fold_masks) first")


# --------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def head_scores_l1(model: nn.Module) -> Scores:
    """l1 score of every head: ``{layer: (H,) float64}``."""
    scores: Scores = {}
    for index, attention in _attention_layers(model):
        H, d = attention.num_heads, attention.head_dim
        total = torch.zeros(H, dtype=torch.float64)
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            weight = linear_weight(projection).detach().double()  # (H*d, D), masked if weight-pruned
            total += weight.abs().view(H, d, -1).sum(dim=(1, 2)).cpu()
            bias = linear_bias(projection)
            if bias is not None:
                total += bias.detach().double().abs().view(H, d).sum(1).cpu()
        scores[index] = total
    return scores


def normalize_per_layer(scores: Scores, exponent: Optional[float] = 2.0) -> Scores:
    """``s / (Σ s^p)^{1/p}`` per layer (``exponent=p``); unchanged copies if ``exponent`` is None."""
    if exponent is None:
        return {i: s.clone() for i, s in scores.items()}
    # 1e-20 guards a layer whose every head scored 0 (e.g. no gradient reached it).
    return {i: s / (s.pow(exponent).sum().pow(1.0 / exponent) + 1e-20) for i, s in scores.items()}


def accumulate_head_importance(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Iterable[Any],
    normalize_exponent: Optional[float] = 2.0,
) -> Scores:
    """Data-driven head importance over ``batches`` (see the module docstring): ``{layer: (H,) float64}``.

    ``loss_fn(model, batch)`` returns a scalar loss computed with ``model``'s forward.
    """
    layers = _attention_layers(model)
    for index, attention in layers:
        _check_plain(attention, index)
    captured: dict[int, list[Tensor]] = {index: [] for index, _ in layers}

    def capture(index: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            captured[index].append(args[0])  # (B, T, H*d): per-head contexts, concatenated

        return hook

    handles = [attention.out_proj.register_forward_pre_hook(capture(index)) for index, attention in layers]
    totals = {index: torch.zeros(attention.num_heads, dtype=torch.float64) for index, attention in layers}
    num_batches = 0
    try:
        for batch in batches:
            for store in captured.values():
                store.clear()
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                contexts = [(index, ctx) for index in captured for ctx in captured[index]]
                if not contexts:
                    raise RuntimeError("loss_fn did not run the attention layers of the model")
                if not all(ctx.requires_grad for _, ctx in contexts):
                    raise RuntimeError("attention contexts do not require grad: enable grad on the model parameters")
                grads = torch.autograd.grad(loss, [ctx for _, ctx in contexts], allow_unused=True)
            for (index, ctx), grad in zip(contexts, grads):
                if grad is None:
                    continue  # this context does not influence the loss
                H = totals[index].numel()
                B, T, _ = ctx.shape
                per_frame = (grad.detach().double() * ctx.detach().double()).view(B, T, H, -1).sum(-1)  # (B, T, H)
                totals[index] += per_frame.abs().sum(dim=(0, 1)).cpu()
            num_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        for store in captured.values():
            store.clear()
    if num_batches == 0:
        raise ValueError("no batches given")
    scores = {index: total / num_batches for index, total in totals.items()}
    return normalize_per_layer(scores, normalize_exponent)


# --------------------------------------------------------------------------------------------
# Selection and removal
# --------------------------------------------------------------------------------------------


def select_heads(scores: Mapping[int, Tensor], num: int, strategy: Strategy) -> dict[int, list[int]]:
    """Heads to remove, ``{layer: sorted head indices}`` (layers with none omitted)."""
    if num < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    chosen: dict[int, list[int]] = {}
    if strategy == "by_layer":
        if num % len(scores):
            raise ValueError(f"by_layer: {num} heads do not divide evenly over {len(scores)} layers")
        per_layer = num // len(scores)
        for layer, s in scores.items():
            if per_layer > s.numel():
                raise ValueError(f"by_layer: layer {layer} has {s.numel()} heads, cannot remove {per_layer}")
            # Stable sort: equal scores go to the lower head index.
            order = torch.sort(s.double(), stable=True).indices[:per_layer]
            if per_layer:
                chosen[layer] = sorted(order.tolist())
        return chosen
    if strategy == "by_whole":
        candidates: list[tuple[float, int, int]] = []
        for layer, s in scores.items():
            best = int(torch.sort(s.double(), stable=True, descending=True).indices[0])
            candidates.extend((float(v), layer, h) for h, v in enumerate(s.tolist()) if h != best)
        if num > len(candidates):
            raise ValueError(f"by_whole: only {len(candidates)} heads are removable (one per layer is protected), asked {num}")
        for _, layer, head in sorted(candidates)[:num]:
            chosen.setdefault(layer, []).append(head)
        return {layer: sorted(heads) for layer, heads in sorted(chosen.items())}
    raise ValueError(f"unknown strategy {strategy!r} (by_layer or by_whole)")


@torch.no_grad()
def remove_heads(model: nn.Module, heads: Mapping[int, Sequence[int]]) -> LayerStructure:
    """Physically remove ``{layer: [head indices]}`` and return the new per-layer structure."""
    transformer = find_transformer(model)
    layers = transformer.layers
    for index, removed in heads.items():
        removed = [int(h) for h in removed]
        if not removed:
            continue
        if not 0 <= index < len(layers) or layers[index].attention is None:
            raise ValueError(f"layer {index} has no attention block")
        attention = layers[index].attention
        assert attention is not None
        _check_plain(attention, index)
        H = attention.num_heads
        if len(set(removed)) != len(removed) or not all(0 <= h < H for h in removed):
            raise ValueError(f"layer {index}: head indices {removed} must be distinct and in [0, {H})")
        kept = [h for h in range(H) if h not in set(removed)]
        device = linear_weight(attention.out_proj).device
        keep_heads(transformer, index, torch.tensor(kept, dtype=torch.long, device=device))
    return sync_structure(model, transformer)


def prune_heads(
    model: nn.Module,
    num: int,
    metric: Literal["l1", "data-driven"] = "l1",
    strategy: Strategy = "by_layer",
    loss_fn: Optional[Callable[[nn.Module, Any], Tensor]] = None,
    batches: Optional[Iterable[Any]] = None,
    normalize_exponent: Optional[float] = 2.0,
    reverse: bool = False,
) -> tuple[dict[int, list[int]], Scores, LayerStructure]:
    """One head-pruning step: score, select ``num`` heads, remove them.

    ``reverse``: remove the highest-scoring heads instead (with ``by_whole`` each layer's
    lowest-scoring head is the protected one), the control run that checks a score is meaningful.

    Returns ``(removed {layer: heads}, scores, new structure)``.
    """
    if metric == "l1":
        scores = head_scores_l1(model)
    elif metric == "data-driven":
        if loss_fn is None or batches is None:
            raise ValueError("data-driven scoring needs loss_fn and batches")
        scores = accumulate_head_importance(model, loss_fn, batches, normalize_exponent)
    else:
        raise ValueError(f"unknown metric {metric!r} (l1 or data-driven)")
    removed = select_heads({layer: -s for layer, s in scores.items()} if reverse else scores, num, strategy)
    structure = remove_heads(model, removed)
    return removed, scores, structure


def head_params(embed_dim: int, head_dim: int, bias: bool = True) -> int:
    """Parameters of one head: q/k/v rows (+ biases) and out_proj columns: ``4·D·d + 3·d``."""
    return 4 * embed_dim * head_dim + (3 * head_dim if bias else 0)
