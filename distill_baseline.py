#!/usr/bin/env python3
"""DistilHuBERT-style baseline: distil a 2-layer student initialised from the teacher's first layers.

    python distill_baseline.py --teacher_ckpt pretrained/hubert-base.pth --tsv_dir data/librispeech \\
        --exp_dir exp/distilhubert [--config recipes/hubert_base/distill.yaml-like overrides]
        [--steps_from recipes/hubert_base/distill.yaml,recipes/hubert_base/final_distill.yaml]
        [--match_params exp/hubert_base/hubert-base-dp-sp0.75.pth]

Same data flags, trainer flags, logs and checkpoints as the DPHuBERT stages (lightning_modules/cli.py);
the distillation itself is ``DistillModule`` in ``predlayer`` mode without a sparsity target. The
default number of updates is DPHuBERT's stage 1 + stage 3 (50k + 25k); ``--steps_from`` reads
``max_updates`` from stage yamls instead, so the baseline trains as long as the run it is compared with.
Writes ``EXP_DIR/distilhubert.pth`` (``wav2vec2.checkpoint.load_model`` reads it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import lightning as L
import yaml

from lightning_modules.cli import add_data_args, add_trainer_args, fit_stage, new_parser
from lightning_modules.distill import DistillModule
from methods.distilhubert_baseline import (
    build_student,
    count_params,
    default_prediction_layers,
    ffn_units_for_params,
    prediction_layer_spec,
)
from wav2vec2.checkpoint import load_model, save_model

DEFAULT_UPDATES = 50_000 + 25_000  # DPHuBERT stage 1 + stage 3 defaults (cli/dphubert.py)


def build_parser():
    parser = new_parser(__doc__.split("\n\n")[0])
    add_data_args(parser)
    add_trainer_args(parser)
    group = parser.add_argument_group("baseline")
    group.add_argument("--teacher_ckpt", type=Path, required=True, help="converted teacher (.pth with state_dict and config)")
    group.add_argument("--student_layers", type=int, default=2)
    group.add_argument("--student_ffn_units", type=Optional[int], default=None, help="FFN width of the student layers (default: the teacher's)")
    group.add_argument("--match_params", type=Optional[Path], default=None,
                       help="a model file (e.g. the DPHuBERT student): pick the FFN width that matches its parameter count")
    group.add_argument("--pred_layers", type=Optional[str], default=None,
                       help="teacher layers the heads predict, e.g. '4,8,12' (default: 1/3, 2/3, 3/3 of the teacher's depth)")
    group.add_argument("--l1_weight", type=float, default=1.0)
    group.add_argument("--l2_weight", type=float, default=0.0)
    group.add_argument("--cos_weight", type=float, default=1.0)
    group.add_argument("--cos_type", type=Literal["raw", "log_sig"], default="log_sig", help="raw or log_sig (DistilHuBERT's)")
    group.add_argument("--learning_rate", type=float, default=2e-4)
    group.add_argument("--weight_decay", type=float, default=0.0)
    group.add_argument("--warmup_updates", type=Optional[int], default=None, help="default: 7%% of --max_updates (DistilHuBERT's ratio)")
    group.add_argument("--max_updates", type=int, default=DEFAULT_UPDATES)
    group.add_argument("--steps_from", type=Optional[str], default=None,
                       help="comma-separated stage yamls whose max_updates are summed into --max_updates, "
                            "e.g. recipes/demo/distill.yaml,recipes/demo/final_distill.yaml")
    group.add_argument("--out", type=Optional[Path], default=None, help="default: EXP_DIR/distilhubert.pth")
    return parser


def steps_from_yamls(paths: Sequence[Path]) -> int:
    """Sum of ``max_updates`` over stage yamls; errors name the file."""
    total = 0
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--steps_from: file not found: {path}")
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict) or "max_updates" not in data:
            raise ValueError(f"--steps_from: {path} has no 'max_updates' key")
        total += int(data["max_updates"])
    return total


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = build_parser()
    cfg = parser.parse_args(argv)
    if cfg.steps_from:
        cfg.max_updates = steps_from_yamls([Path(p.strip()) for p in cfg.steps_from.split(",") if p.strip()])
    if cfg.warmup_updates is None:
        cfg.warmup_updates = max(1, round(0.07 * cfg.max_updates))
    if cfg.match_params is not None and cfg.student_ffn_units is not None:
        parser.error("give either --match_params or --student_ffn_units, not both")
    L.seed_everything(cfg.seed, workers=True)
    teacher = load_model(cfg.teacher_ckpt, verbose=False)
    target: Optional[int] = None
    if cfg.match_params is not None:
        target = count_params(load_model(cfg.match_params, verbose=False))
        cfg.student_ffn_units = ffn_units_for_params(teacher, target, cfg.student_layers)
    student = build_student(teacher, cfg.student_layers, cfg.student_ffn_units)
    layers = [int(x) for x in cfg.pred_layers.split(",")] if cfg.pred_layers else default_prediction_layers(teacher.num_layers)
    if any(not 1 <= layer <= teacher.num_layers for layer in layers):
        parser.error(f"--pred_layers {layers}: teacher layers are 1..{teacher.num_layers}")
    spec = prediction_layer_spec(layers)
    _print_sizes(teacher, student, target, cfg)
    module = DistillModule(
        teacher, student, distill_layers=spec, distill_mode="predlayer", l1_weight=cfg.l1_weight, l2_weight=cfg.l2_weight,
        cos_weight=cfg.cos_weight, cos_type=cfg.cos_type, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
        warmup_updates=cfg.warmup_updates, max_updates=cfg.max_updates, target_sparsity=None,
        provenance={"teacher": str(cfg.teacher_ckpt), "baseline": "distilhubert"},
    )
    trainer = fit_stage(parser, cfg, module, max_steps=cfg.max_updates)
    out = cfg.out or cfg.exp_dir / "distilhubert.pth"
    if trainer.is_global_zero:
        provenance: dict[str, Any] = {
            "teacher": str(cfg.teacher_ckpt), "baseline": "distilhubert", "pred_layers": layers,
            "num_params": count_params(module.student), "teacher_num_params": count_params(teacher),
            "matched_params_of": str(cfg.match_params) if cfg.match_params else None, "target_num_params": target,
            "updates": int(trainer.global_step),
        }
        save_model(out, module.student.eval(), distill_linear_projs=module.heads.projs.state_dict(),
                   distill_layers=spec, distill_mode="predlayer", provenance=provenance)
        load_model(out)  # strict reload check; prints the one-line summary
    return Path(out)


def _print_sizes(teacher, student, target: Optional[int], cfg) -> None:
    teacher_params, student_params = count_params(teacher), count_params(student)
    lines = [f"teacher  {teacher_params:>12,} params ({teacher.num_layers} layers)",
             f"student  {student_params:>12,} params ({cfg.student_layers} layers, FFN width "
             f"{student.encoder.transformer.layers[0].feed_forward.interm_features if student.encoder.transformer.layers[0].feed_forward else 0})"]
    if target is not None:
        lines.append(f"matched  {target:>12,} params ({cfg.match_params}); student differs by {student_params - target:+,}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    from cli.errors import run_cli

    run_cli("distill_baseline.py", main)
