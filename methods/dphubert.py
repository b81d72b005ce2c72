"""The four DPHuBERT stages: distill (+prune masks), prune, final distill, save final model.

File formats:
- stage 1 / 3: Lightning ``.ckpt`` in ``EXP_DIR/ckpts`` (``last.ckpt`` and ``step=N.ckpt``),
  holding the student (``student.*``), the heads (``heads.projs.*``), the multipliers, the
  optimizer / scheduler / loop / sampler / RNG states — not the teacher — plus
  ``student_config`` and ``teacher_num_params``;
- stage 2 / 4: ``{"state_dict", "config", "distill_linear_projs", "distill_layers",
  "distill_mode", "provenance"}``; ``wav2vec2_model(**ckpt["config"])`` loads ``state_dict``
  strictly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from torch import Tensor

from wav2vec2 import counting
from wav2vec2.budget import Selection, meet_budget
from wav2vec2.checkpoint import (
    DPHUBERT_STAGE,
    WAV2VEC2,
    CheckpointError,
    build_model,
    detect_format,
    load_model,
    load_weights,
    save_model,
    student_from_stage_checkpoint,
)
from wav2vec2.state_dicts import read_checkpoint
from wav2vec2.model import Wav2Vec2Model

PRUNING_UNITS = {
    "conv": "extractor_prune_conv_channels",
    "head": "encoder_prune_attention_heads",
    "attlayer": "encoder_prune_attention_layer",
    "interm": "encoder_prune_feed_forward_intermediate",
    "ffnlayer": "encoder_prune_feed_forward_layer",
}


def prune_switches(units: str) -> dict[str, bool]:
    """``"conv,head,interm"`` -> the five prune switches of the model config."""
    tokens = [t.strip() for t in units.split(",") if t.strip()]
    unknown = [t for t in tokens if t not in PRUNING_UNITS]
    if unknown:
        raise ValueError(f"unknown pruning unit(s) {unknown}; choose from {sorted(PRUNING_UNITS)}")
    return {switch: unit in tokens for unit, switch in PRUNING_UNITS.items()}


def build_gated_student(init_path: str | Path, pruning_units: str) -> Wav2Vec2Model:
    """A copy of the model in ``init_path`` with hard-concrete gates on ``pruning_units``."""
    init = load_model(init_path, verbose=False, family="wav2vec2")
    config = dict(init.config)
    config.update(prune_switches(pruning_units))
    student = build_model(config, source=str(init_path))
    load_weights(student, init.state_dict(), source=str(init_path), allow_missing_gates=True)
    return student


def strip_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def read_stage_checkpoint(path: str | Path, original_ckpt: Optional[str | Path] = None) -> dict[str, Any]:
    """A DPHuBERT stage-1 / stage-3 checkpoint (through the one reader); CheckpointError otherwise.

    A stage-1 checkpoint of the original DPHuBERT code (no ``student_config``) is converted with
    the config of ``original_ckpt`` (its student-init file); for this toolkit's checkpoints
    ``original_ckpt`` is checked against the stored config.
    """
    checkpoint = read_checkpoint(path)
    from .original_stage1 import check_original_ckpt, convert_original_stage1, is_original_stage1

    if is_original_stage1(checkpoint):
        if original_ckpt is None:
            raise CheckpointError(f"{path}: written by the original DPHuBERT code (no 'student_config'); pass "
                                  "--original_ckpt STUDENT_INIT.pth (the file its distill.py --student_ckpt named) for the config")
        return convert_original_stage1(checkpoint, original_ckpt, str(path))
    if detect_format(checkpoint, str(path)) != DPHUBERT_STAGE:
        raise CheckpointError(f"{path}: not a distillation checkpoint of this toolkit (no 'student_config')")
    if original_ckpt is not None:
        check_original_ckpt(checkpoint["student_config"], original_ckpt, str(path))
    return checkpoint


def layer_table(model: Wav2Vec2Model, original: Optional[Mapping[str, Any]] = None) -> str:
    """A per-layer text table of kept heads, FFN units and conv channels."""
    summary = counting.per_layer_summary(model, "exact")
    lines = ["layer  heads  ffn_units"]
    for i, (heads, units) in enumerate(zip(summary["heads"], summary["ffn_units"])):
        lines.append(f"{i:5d}  {int(heads):5d}  {int(units):9d}")
    lines.append("conv channels: " + " ".join(str(int(c)) for c in summary["conv_channels"]))
    return "\n".join(lines)


def prune_stage(distilled_ckpt: str | Path, out: str | Path, original_ckpt: Optional[str | Path] = None) -> dict[str, Any]:
    """Stage 2: read a stage-1 checkpoint, prune, save, verify a strict reload.

    ``original_ckpt``: the student-init file; needed for checkpoints of the original DPHuBERT
    code (they hold no config), checked against the stored config otherwise.
    """
    checkpoint = read_stage_checkpoint(distilled_ckpt, original_ckpt)
    student = student_from_stage_checkpoint(checkpoint, str(distilled_ckpt))
    hparams = checkpoint.get("hyper_parameters", {})
    if "teacher_num_params" not in checkpoint:
        raise CheckpointError(f"{distilled_ckpt}: no 'teacher_num_params' (not a stage-1 checkpoint of distill.py)")
    teacher_params = int(checkpoint["teacher_num_params"])
    student.eval()
    selection = _meet_exact_budget(student, checkpoint, teacher_params)
    predicted = int(counting.num_params(student, "exact"))
    config = student.prune()
    achieved = sum(p.numel() for p in student.parameters())
    if achieved != predicted:
        raise RuntimeError(f"pruned model has {achieved} params but the masks predicted {predicted}")
    sparsity = 1.0 - achieved / teacher_params
    projections = strip_prefix(checkpoint["state_dict"], "heads.projs.")
    provenance = dict(checkpoint.get("provenance", {}))
    provenance.update({"achieved_sparsity": sparsity, "teacher_num_params": teacher_params, "num_params": achieved})
    if selection is not None:
        provenance["budget"] = {"kind": selection.kind, "target_sparsity": selection.sparsity(selection.target_size),
                                "expected_sparsity": selection.sparsity(selection.expected_size),
                                "deterministic_sparsity": selection.sparsity(selection.deterministic_size),
                                "achieved_sparsity": selection.sparsity(), "changed_units": selection.changed_units}
    out = save_model(out, student, distill_linear_projs=projections,
                     distill_layers=hparams.get("distill_layers", "0.4,8,12"),
                     distill_mode=hparams.get("distill_mode", "layer2layer"), provenance=provenance)
    reloaded = load_model(out, verbose=False)
    if sum(p.numel() for p in reloaded.parameters()) != achieved:
        raise RuntimeError(f"{out}: strict reload gave a different parameter count")
    print(layer_table(student))
    print(f"pruned: {achieved:,} params of the teacher's {teacher_params:,} -> sparsity {sparsity:.4f}"
          f" (target {provenance.get('target_sparsity')})")
    return {"config": config, "num_params": achieved, "sparsity": sparsity, "path": str(out)}


def _meet_exact_budget(student: Wav2Vec2Model, checkpoint: Mapping[str, Any], teacher_params: int) -> Optional[Selection]:
    """Complete the gates' keep/drop decisions so the exact size meets the stage-1 target (see wav2vec2/budget.py)."""
    provenance = checkpoint.get("provenance", {})
    if provenance.get("target_sparsity") is not None:
        selection = meet_budget(student, "params", float(provenance["target_sparsity"]), teacher_params)
    elif provenance.get("target_macs_ratio") is not None:
        teacher_macs = checkpoint["state_dict"].get("constraint.teacher_size")
        if teacher_macs is None:
            raise KeyError("stage-1 checkpoint with a MACs target but no constraint.teacher_size in its state_dict")
        selection = meet_budget(student, "macs", 1.0 - float(provenance["target_macs_ratio"]), float(teacher_macs))
    else:
        return None
    print(selection.describe())
    return selection


def final_checkpoint_name(provenance: Mapping[str, Any]) -> str:
    teacher = Path(str(provenance.get("teacher", "model"))).stem
    if provenance.get("target_sparsity") is not None:
        return f"{teacher}-dp-sp{float(provenance['target_sparsity']):.2f}.pth"
    if provenance.get("target_macs_ratio") is not None:
        return f"{teacher}-dp-macs{float(provenance['target_macs_ratio']):.2f}.pth"
    return f"{teacher}-dp.pth"


def save_final_stage(pruned_path: str | Path, final_ckpt: str | Path, out: Optional[str | Path] = None) -> Path:
    """Stage 4: the stage-3 student (and heads) in the pruned file's format."""
    pruned = read_checkpoint(pruned_path)
    if detect_format(pruned, str(pruned_path)) != WAV2VEC2:
        raise CheckpointError(f"{pruned_path}: not the pruned model written by prune.py ('state_dict' + 'config'); "
                              f"found keys {sorted(pruned)[:12]}")
    checkpoint = read_stage_checkpoint(final_ckpt)
    student = student_from_stage_checkpoint(checkpoint, str(final_ckpt))
    if student.config != build_model(pruned["config"], source=str(pruned_path)).config:
        raise CheckpointError(f"{final_ckpt}: its student config differs from the pruned model's ({pruned_path})")
    provenance = dict(pruned.get("provenance", {}))
    out_path = Path(out) if out is not None else Path(final_ckpt).parent.parent / final_checkpoint_name(provenance)
    save_model(out_path, student, distill_linear_projs=strip_prefix(checkpoint["state_dict"], "heads.projs."),
               distill_layers=pruned.get("distill_layers"), distill_mode=pruned.get("distill_mode"), provenance=provenance)
    load_model(out_path)
    return out_path
