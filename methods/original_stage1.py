"""Stage-1 checkpoints written by the original DPHuBERT code, read into this toolkit's layout.

The original's Lightning checkpoint holds, in ``state_dict``, ``teacher_model.*``,
``student_model.*`` (with hard-concrete ``log_alpha`` gates), ``distill_linear_projs.N.*`` (one
entry per distilled layer; layers of one group share one Linear, so their entries are equal)
and ``lambda1`` / ``lambda2``; it has no model config. ``prune.py --original_ckpt FILE.pth``
supplies the config (the student-init file's ``config``, as in the original), and the prune
switches are read off which layer-0 gates exist, as the original did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

from wav2vec2.checkpoint import CheckpointError


STUDENT_PREFIX = "student_model."
TEACHER_PREFIX = "teacher_model."
PROJECTIONS_PREFIX = "distill_linear_projs."

# prune switch -> the layer-0 gate whose presence shows it was on
GATE_OF_SWITCH = {
    "extractor_prune_conv_channels": "feature_extractor.conv_layers.0.hard_concrete.log_alpha",
    "encoder_prune_attention_heads": "encoder.transformer.layers.0.attention.hard_concrete_for_heads.log_alpha",
    "encoder_prune_attention_layer": "encoder.transformer.layers.0.attention.hard_concrete_for_layer.log_alpha",
    "encoder_prune_feed_forward_intermediate": "encoder.transformer.layers.0.feed_forward.hard_concrete_for_intermediate.log_alpha",
    "encoder_prune_feed_forward_layer": "encoder.transformer.layers.0.feed_forward.hard_concrete_for_layer.log_alpha",
}


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def is_original_stage1(checkpoint: Mapping[str, Any]) -> bool:
    """True for a Lightning checkpoint in the original DPHuBERT layout (student under ``student_model.``)."""
    state = checkpoint.get("state_dict")
    return (isinstance(state, Mapping) and "student_config" not in checkpoint
            and any(k.startswith(STUDENT_PREFIX) for k in state))


def _group_projections(projections: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[int], str]:
    """One entry per layer -> one per group (runs of equal entries), the group sizes, and the mode."""
    indices = sorted({int(k.split(".", 1)[0]) for k in projections})
    if indices != list(range(len(indices))):
        raise CheckpointError(f"distill_linear_projs entries are not numbered 0..N-1: {indices}")
    mode = "predlayer" if any(k.split(".", 1)[1].startswith("0.") for k in projections) else "layer2layer"

    def entry(i: int) -> dict[str, Tensor]:
        return {k.split(".", 1)[1]: v for k, v in projections.items() if int(k.split(".", 1)[0]) == i}

    if mode == "predlayer":  # independent heads, nothing shared
        return dict(projections), [1] * len(indices), mode
    grouped: dict[str, Tensor] = {}
    sizes: list[int] = []
    previous: Optional[dict[str, Tensor]] = None
    for i in indices:
        current = entry(i)
        if previous is not None and current.keys() == previous.keys() and all(torch.equal(current[k], previous[k]) for k in current):
            sizes[-1] += 1
            continue
        for name, value in current.items():
            grouped[f"{len(sizes)}.{name}"] = value
        sizes.append(1)
        previous = current
    return grouped, sizes, mode


def convert_original_stage1(checkpoint: Mapping[str, Any], original_ckpt: str | Path, source: str) -> dict[str, Any]:
    """The original stage-1 checkpoint as this toolkit's stage-1 checkpoint dict (for ``prune_stage``).

    ``original_ckpt``: the student-init ``.pth`` (``{"state_dict", "config"}``) the run started from.
    """
    original_ckpt = Path(original_ckpt)
    if not original_ckpt.is_file():
        raise FileNotFoundError(f"--original_ckpt: file not found: {original_ckpt}")
    init = torch.load(original_ckpt, map_location="cpu", weights_only=True)
    if not isinstance(init, Mapping) or "config" not in init:
        raise CheckpointError(f"{original_ckpt}: no 'config' (expected the student-init .pth written by a converter)")
    state = checkpoint["state_dict"]
    student_state = strip_prefix(state, STUDENT_PREFIX)
    config = dict(init["config"])
    config.update({switch: gate in student_state for switch, gate in GATE_OF_SWITCH.items()})
    teacher_state = strip_prefix(state, TEACHER_PREFIX)
    if teacher_state:
        teacher_num_params = sum(v.numel() for v in teacher_state.values())
    else:  # the original's teacher is the student-init model itself
        teacher_num_params = sum(v.numel() for v in init["state_dict"].values())
    projections, sizes, mode = _group_projections(strip_prefix(state, PROJECTIONS_PREFIX))
    # The layer indices are not in the file; the original's default spec is the only one we can name.
    distill_layers = "0.4,8,12" if mode == "layer2layer" and sizes == [1, 3] else None
    ours = {f"student.{k}": v for k, v in student_state.items()}
    ours.update({f"heads.projs.{k}": v for k, v in projections.items()})
    return {
        "state_dict": ours,
        "student_config": config,
        "teacher_num_params": teacher_num_params,
        "hyper_parameters": {"distill_layers": distill_layers, "distill_mode": mode},
        "provenance": {"original_stage1": source, "original_ckpt": str(original_ckpt)},
    }


def check_original_ckpt(student_config: Mapping[str, Any], original_ckpt: str | Path, source: str) -> None:
    """``--original_ckpt`` given for a checkpoint that has its own config: it must describe the same model."""
    original_ckpt = Path(original_ckpt)
    if not original_ckpt.is_file():
        raise FileNotFoundError(f"--original_ckpt: file not found: {original_ckpt}")
    init = torch.load(original_ckpt, map_location="cpu", weights_only=True)
    config = init.get("config") if isinstance(init, Mapping) else None
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{original_ckpt}: no 'config' (expected the student-init .pth written by a converter)")
    switches = set(GATE_OF_SWITCH)
    differing = sorted(k for k in set(config) | set(student_config)
                       if k not in switches and _as_lists(config.get(k)) != _as_lists(student_config.get(k)))
    if differing:
        raise CheckpointError(f"--original_ckpt {original_ckpt} describes another model than {source}: "
                              f"{', '.join(differing)} differ (omit --original_ckpt; the checkpoint carries its config)")


def _as_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_as_lists(v) for v in value]
    return value
