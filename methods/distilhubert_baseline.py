"""DistilHuBERT-style baseline: a shallow student initialised from the teacher's first layers.

The student (Chang et al., 2022; s3prl ``distiller``):

* the teacher's CNN feature extractor and feature projection, copied;
* the teacher's positional convolution and encoder LayerNorm, copied;
* ``num_layers`` (2) transformer layers, copied from the teacher's first layers;
* prediction heads (``predlayer``: Linear + GELU per target, ``DistillHeads``) on the last
  student layer, each predicting one teacher layer; by default the layers at 1/3, 2/3 and
  3/3 of the teacher's depth (DistilHuBERT's 4, 8, 12 of 12).

Layer drop is off in the student (with two layers, dropping one removes half the network).

"At equal parameters": ``ffn_units_for_params`` picks the FFN width of the student layers so
that its parameter count matches a target (e.g. the DPHuBERT student of the same teacher).
Shrinking a layer keeps, for its initial weights, the FFN units with the largest
``||W_in[i, :]|| * ||W_out[:, i]||`` (the units that move the output most), in their
original order. Widths above the teacher's are refused: there is nothing to copy.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from wav2vec2.checkpoint import build_model, load_weights
from wav2vec2.measure import count_params
from wav2vec2.model import PRUNE_SWITCHES, Wav2Vec2Model

PER_LAYER_KEYS = ("encoder_use_attention", "encoder_use_feed_forward", "encoder_num_heads", "encoder_ff_interm_features",
                  "encoder_total_num_heads", "encoder_remaining_heads")


def default_prediction_layers(teacher_layers: int, count: int = 3) -> list[int]:
    """Teacher layers at k/count of the depth, k = 1..count: 12 -> [4, 8, 12], 4 -> [1, 3, 4]."""
    if teacher_layers < 1:
        raise ValueError(f"the teacher has no transformer layers ({teacher_layers})")
    layers = sorted({max(1, round(teacher_layers * k / count)) for k in range(1, count + 1)})
    return layers


def prediction_layer_spec(layers: Sequence[int]) -> str:
    """``[4, 8, 12]`` -> ``"4,8,12"`` (the ``DistillHeads`` spec; predlayer uses one head per layer)."""
    return ",".join(str(int(layer)) for layer in layers)


def student_config(teacher: Wav2Vec2Model, num_layers: int = 2, ffn_units: Optional[int] = None) -> dict[str, Any]:
    """The teacher's config cut to its first ``num_layers`` layers, without gates or layer drop."""
    config = copy.deepcopy(dict(teacher.config))
    depth = teacher.num_layers
    if not 1 <= num_layers <= depth:
        raise ValueError(f"the student needs 1..{depth} layers (the teacher's depth), got {num_layers}")
    for key in PER_LAYER_KEYS:
        if isinstance(config.get(key), list):
            config[key] = config[key][:num_layers]
    config["encoder_num_layers"] = num_layers
    config["encoder_layer_drop"] = 0.0
    config["aux_num_out"] = None  # a fine-tuned teacher's output head is not part of an SSL student
    config.update({switch: False for switch in PRUNE_SWITCHES})
    if ffn_units is not None:
        widest = max(_ffn_widths(teacher)[:num_layers])
        if not 1 <= ffn_units <= widest:
            raise ValueError(f"student FFN width must be in [1, {widest}] (the teacher's), got {ffn_units}")
        config["encoder_ff_interm_features"] = [ffn_units] * num_layers
        config["encoder_use_feed_forward"] = [True] * num_layers
    return config


def _ffn_widths(model: Wav2Vec2Model) -> list[int]:
    return [layer.feed_forward.interm_features if layer.feed_forward is not None else 0 for layer in model.encoder.transformer.layers]


def _top_units(intermediate: Tensor, output: Tensor, keep: int) -> Tensor:
    """Indices (ascending) of the ``keep`` FFN units with the largest in-norm x out-norm."""
    scores = intermediate.norm(dim=1) * output.norm(dim=0)
    return scores.topk(keep).indices.sort().values


@torch.no_grad()
def build_student(teacher: Wav2Vec2Model, num_layers: int = 2, ffn_units: Optional[int] = None) -> Wav2Vec2Model:
    """A ``num_layers`` student initialised from the teacher (see the module docstring)."""
    config = student_config(teacher, num_layers, ffn_units)
    student = build_model(config, source="distilhubert student")
    state = {}
    teacher_state = teacher.state_dict()
    own = student.state_dict()
    for key, value in teacher_state.items():
        if key.endswith("log_alpha"):
            continue  # a gated teacher file: the student is ungated
        if key.startswith("encoder.transformer.layers."):
            index = int(key.split(".")[3])
            if index >= num_layers:
                continue
        if key not in own or key.startswith("aux."):
            continue
        state[key] = value
    if ffn_units is not None:
        for i, layer in enumerate(teacher.encoder.transformer.layers[:num_layers]):
            ffn = layer.feed_forward
            if ffn is None or ffn.interm_features == ffn_units:
                continue
            keep = _top_units(ffn.intermediate_dense.weight, ffn.output_dense.weight, ffn_units)
            prefix = f"encoder.transformer.layers.{i}.feed_forward."
            state[prefix + "intermediate_dense.weight"] = ffn.intermediate_dense.weight[keep]
            state[prefix + "intermediate_dense.bias"] = ffn.intermediate_dense.bias[keep]
            state[prefix + "output_dense.weight"] = ffn.output_dense.weight[:, keep]
    load_weights(student, state, source="distilhubert student (from the teacher)")
    return student


def ffn_units_for_params(teacher: Wav2Vec2Model, target_params: int, num_layers: int = 2) -> int:
    """The FFN width (same in every student layer) whose student is closest to ``target_params``.

    Parameters are linear in the width: each unit adds ``2 D + 1`` per layer. Raises
    ValueError when even the teacher's width (or width 1) cannot reach the target, naming
    the reachable range, since the student would then need another depth.
    """
    widest = max(_ffn_widths(teacher)[:num_layers])
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        low = count_params(build_model(student_config(teacher, num_layers, 1), source="student"))
        high = count_params(build_model(student_config(teacher, num_layers, widest), source="student"))
    per_unit = (high - low) / max(widest - 1, 1)
    if not low <= target_params <= high:
        raise ValueError(f"a {num_layers}-layer student has {low:,} to {high:,} parameters with FFN widths 1..{widest}; "
                         f"the target {target_params:,} needs another --student_layers")
    return int(min(widest, max(1, round(1 + (target_params - low) / per_unit))))
