"""FFN unit ("row") pruning, family-agnostic.

Unit ``i`` of layer ``l`` scores ``Σ|fc1.weight[i, :]| + |fc1.bias[i]| + Σ|fc2.weight[:, i]|``
(``fc1`` = ``intermediate_dense``, ``fc2`` = ``output_dense``; a ``LowRankLinear`` is scored
by its dense product). Each step removes the same number of lowest-scoring units in every
layer that has an FFN block (ties go to the lower index), by slicing ``fc1`` rows and bias
entries and ``fc2`` columns; ``fc2``'s bias is unchanged. A layer left with no unit loses its
FFN block (``use_feed_forward`` False). New ``nn.Parameter`` objects are created: rebuild the
optimiser. The new structure is written back with ``measure.sync_structure`` and returned.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from wav2vec2.low_rank import linear_bias, linear_weight
from wav2vec2.surgery import keep_ffn_units
from wav2vec2.measure import LayerStructure, find_transformer, sync_structure
from .ops_weight import is_masked

Scores = dict[int, Tensor]


def _check_plain(ffn: nn.Module, index: int) -> None:
    if ffn.hard_concrete_for_intermediate is not None or ffn.hard_concrete_for_layer is not None:
        raise ValueError(f"layer {index}: FFN has hard-concrete gates; call model.prune() first")
    for name in ("intermediate_dense", "output_dense"):
        if is_masked(getattr(ffn, name)):
            raise ValueError(f"layer {index}: {name} carries weight-pruning masks; fold them (ops_weight.fold_masks) first")


@torch.no_grad()
def ffn_unit_scores(model: nn.Module) -> Scores:
    """``{layer: (I,) float64}`` unit scores of every layer with an FFN block."""
    scores: Scores = {}
    for index, layer in enumerate(find_transformer(model).layers):
        ffn = layer.feed_forward
        if ffn is None:
            continue
        fc1 = linear_weight(ffn.intermediate_dense).detach().double()  # (I, D)
        fc2 = linear_weight(ffn.output_dense).detach().double()  # (D, I)
        score = fc1.abs().sum(1) + fc2.abs().sum(0)
        bias = linear_bias(ffn.intermediate_dense)
        if bias is not None:
            score = score + bias.detach().double().abs()
        scores[index] = score.cpu()
    return scores


def select_rows(scores: Mapping[int, Tensor], num_per_layer: int) -> dict[int, list[int]]:
    """The ``num_per_layer`` lowest-scoring units of every layer, ``{layer: sorted indices}``."""
    if num_per_layer < 0:
        raise ValueError(f"num_per_layer must be >= 0, got {num_per_layer}")
    chosen: dict[int, list[int]] = {}
    for layer, s in scores.items():
        if num_per_layer > s.numel():
            raise ValueError(f"layer {layer} has {s.numel()} FFN units, cannot remove {num_per_layer}")
        if num_per_layer:
            chosen[layer] = sorted(torch.sort(s.double(), stable=True).indices[:num_per_layer].tolist())
    return chosen


@torch.no_grad()
def remove_rows(model: nn.Module, rows: Mapping[int, Sequence[int]]) -> LayerStructure:
    """Physically remove FFN units ``{layer: [unit indices]}``; returns the new structure."""
    transformer = find_transformer(model)
    layers = transformer.layers
    for index, removed in rows.items():
        removed = [int(u) for u in removed]
        if not removed:
            continue
        if not 0 <= index < len(layers) or layers[index].feed_forward is None:
            raise ValueError(f"layer {index} has no FFN block")
        ffn = layers[index].feed_forward
        assert ffn is not None
        _check_plain(ffn, index)
        units = ffn.intermediate_dense.out_features
        removed_set = set(removed)
        if len(removed_set) != len(removed) or not all(0 <= u < units for u in removed):
            raise ValueError(f"layer {index}: unit indices must be distinct and in [0, {units})")
        device = linear_weight(ffn.output_dense).device
        keep_ffn_units(layers[index], torch.tensor([u for u in range(units) if u not in removed_set], dtype=torch.long, device=device))
    return sync_structure(model, transformer)


def prune_rows(model: nn.Module, num_per_layer: int) -> tuple[dict[int, list[int]], Scores, LayerStructure]:
    """One row-pruning step: score, remove ``num_per_layer`` units per layer.

    Returns ``(removed {layer: units}, scores, new structure)``.
    """
    scores = ffn_unit_scores(model)
    removed = select_rows(scores, num_per_layer)
    return removed, scores, remove_rows(model, removed)


def unit_params(embed_dim: int, bias: bool = True) -> int:
    """Parameters of one FFN unit: fc1 row (+ bias) and fc2 column: ``2·D + 1``."""
    return 2 * embed_dim + (1 if bias else 0)
