"""Command-line fronts of the DPHuBERT stages (``distill.py``, ``prune.py``, ``final_distill.py``,
``save_final_ckpt.py`` at the repository root call these)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, Optional, Sequence

import lightning as L

from wav2vec2.checkpoint import load_model
from wav2vec2.state_dicts import read_checkpoint

from lightning_modules.cli import add_data_args, add_trainer_args, apply_deprecated_aliases, fit_stage, new_parser
from lightning_modules.distill import DistillModule
from methods.dphubert import build_gated_student, prune_stage, save_final_stage


def _add_distill_args(parser, stage: int) -> None:
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher_ckpt", type=Path, required=True, help="converted teacher (.pth with state_dict and config)")
    group.add_argument("--distill_layers", type=str, default="0.4,8,12", help="'.' separates groups sharing a head, ',' layers")
    group.add_argument("--distill_mode", type=Literal["layer2layer", "predlayer"], default="layer2layer", help="layer2layer or predlayer")
    group.add_argument("--l1_weight", type=float, default=1.0)
    group.add_argument("--l2_weight", type=float, default=0.0)
    group.add_argument("--cos_weight", type=float, default=1.0)
    group.add_argument("--cos_type", type=Literal["raw", "log_sig"], default="raw", help="raw or log_sig")
    group.add_argument("--learning_rate", type=float, default=2e-4 if stage == 1 else 1e-4)
    group.add_argument("--weight_decay", type=float, default=0.0)
    group.add_argument("--warmup_updates", type=int, default=15_000 if stage == 1 else 5_000)
    group.add_argument("--max_updates", type=int, default=50_000 if stage == 1 else 25_000)
    group.add_argument("--teacher_dtype", type=str, default="fp32", choices=["fp32", "bf16"], help="fp32 or bf16 (autocast) for the frozen teacher")
    # Opt-in until bench_stage1.py has shown it ahead on an idle machine: two loaded runs disagreed.
    group.add_argument("--sparse_step", type=bool, default=False,
                       help="compute only the live (non-zero gate) units of the student in stage 1 "
                            "(the same training as the dense masked step to 1e-5)")
    if stage == 1:
        group.add_argument("--student_ckpt", type=Optional[Path], default=None, help="student init (default: the teacher)")
        group.add_argument("--pruning_units", type=str, default="conv,head,interm,attlayer,ffnlayer")
        group.add_argument("--reg_learning_rate", type=float, default=0.02)
        group.add_argument("--target_sparsity", type=Optional[float], default=0.75)
        group.add_argument("--target_macs_ratio", type=Optional[float], default=None,
                           help="instead of --target_sparsity: MACs per second relative to the teacher")
        group.add_argument("--sparsity_warmup_updates", type=int, default=5_000)
    else:
        group.add_argument("--student_ckpt", type=Path, required=True, help="the pruned model written by prune.py")


def _loss_kwargs(cfg) -> dict:
    return dict(distill_layers=cfg.distill_layers, distill_mode=cfg.distill_mode, l1_weight=cfg.l1_weight,
                l2_weight=cfg.l2_weight, cos_weight=cfg.cos_weight, cos_type=cfg.cos_type,
                learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                warmup_updates=cfg.warmup_updates, max_updates=cfg.max_updates,
                teacher_dtype=cfg.teacher_dtype, sparse_step=cfg.sparse_step)


def _fit(parser, cfg, module: DistillModule) -> None:
    fit_stage(parser, cfg, module, max_steps=cfg.max_updates)


def distill_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = new_parser("DPHuBERT stage 1: distil from a frozen teacher while hard-concrete masks prune the student.")
    add_data_args(parser)
    add_trainer_args(parser)
    _add_distill_args(parser, stage=1)
    cfg = apply_deprecated_aliases(parser.parse_args(argv))
    if cfg.target_macs_ratio is not None:
        if not 0.0 < cfg.target_macs_ratio <= 1.0:
            parser.error(f"--target_macs_ratio must be in (0, 1] (MACs of the student relative to the teacher), "
                         f"got {cfg.target_macs_ratio}")
        cfg.target_sparsity = None
    elif cfg.target_sparsity is not None and not 0.0 <= cfg.target_sparsity < 1.0:
        parser.error(f"--target_sparsity must be in [0, 1), got {cfg.target_sparsity}")
    L.seed_everything(cfg.seed, workers=True)
    teacher = load_model(cfg.teacher_ckpt)
    student = build_gated_student(cfg.student_ckpt or cfg.teacher_ckpt, cfg.pruning_units)
    module = DistillModule(
        teacher, student, reg_learning_rate=cfg.reg_learning_rate, target_sparsity=cfg.target_sparsity,
        target_macs_ratio=cfg.target_macs_ratio, sparsity_warmup_updates=cfg.sparsity_warmup_updates,
        provenance={"teacher": str(cfg.teacher_ckpt)}, **_loss_kwargs(cfg),
    )
    _fit(parser, cfg, module)


def final_distill_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = new_parser("DPHuBERT stage 3: continue distilling the pruned student (no masks).")
    add_data_args(parser)
    add_trainer_args(parser)
    _add_distill_args(parser, stage=3)
    cfg = apply_deprecated_aliases(parser.parse_args(argv))
    L.seed_everything(cfg.seed, workers=True)
    teacher = load_model(cfg.teacher_ckpt)
    pruned = read_checkpoint(cfg.student_ckpt)  # the one reader: names the file on a missing / unreadable file
    student = load_model(cfg.student_ckpt)
    kwargs = _loss_kwargs(cfg)
    if pruned.get("distill_layers") not in (None, cfg.distill_layers):
        raise ValueError(f"{cfg.student_ckpt}: its heads were trained for layers {pruned['distill_layers']!r}, "
                         f"not --distill_layers {cfg.distill_layers!r}")
    module = DistillModule(teacher, student, projections_state=pruned.get("distill_linear_projs"),
                           provenance=dict(pruned.get("provenance", {})), **kwargs)
    _fit(parser, cfg, module)


def prune_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="DPHuBERT stage 2: physically remove the masked structures.")
    parser.add_argument("--distilled_ckpt", type=Path, required=True, help="stage-1 Lightning checkpoint (e.g. EXP/ckpts/last.ckpt)")
    parser.add_argument("--out", type=Path, default=None, help="default: EXP/pruned.pth next to the ckpts folder")
    parser.add_argument("--original_ckpt", type=Path, default=None,
                        help="the student-init .pth; needed for stage-1 checkpoints of the original DPHuBERT code "
                             "(they hold no config), checked against the stored config otherwise")
    args = parser.parse_args(argv)
    out = args.out or args.distilled_ckpt.parent.parent / "pruned.pth"
    result = prune_stage(args.distilled_ckpt, out, original_ckpt=args.original_ckpt)
    print(f"wrote {result['path']}")


def save_final_main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="DPHuBERT stage 4: write the final compressed model (.pth).")
    parser.add_argument("--config_path", type=Path, required=True, help="the pruned model written by prune.py")
    parser.add_argument("--ckpt_after_final_distill", type=Path, required=True, help="stage-3 Lightning checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="default: named after the teacher and the target")
    args = parser.parse_args(argv)
    path = save_final_stage(args.config_path, args.ckpt_after_final_distill, args.out)
    print(f"wrote {path}")
