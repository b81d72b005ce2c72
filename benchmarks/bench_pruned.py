#!/usr/bin/env python
"""Do pruned students reach the speed-up their MACs allow? The profiler table with "speed-up / MACs limit".

For each shape (``base``: HuBERT Base; ``demo``: the demo teacher, 4 layers, 128 wide), a
teacher with random weights and a student pruned to ``--target`` parameter sparsity are
profiled by ``evaluation.profiler`` (10 s input, batch 1, ``--threads`` CPU threads, median
of ``--repeats``). The student's structure comes from a gate configuration: the gated model
(the paper's units: conv channels, heads, FFN units) gets, in every gate group, a random
fraction ``k`` of units with ``log_alpha = +10`` and the rest ``-10``; ``k`` is set by
bisection so that the expected parameter sparsity is the target; ``prune()`` then removes the
gated-off units. Weights are random: only the structure matters for speed.

Usage:
    python benchmarks/bench_pruned.py --threads 1                 # both shapes
    python benchmarks/bench_pruned.py --shape demo --repeats 20
    python benchmarks/bench_pruned.py --device cuda               # also GPU fp32 / bf16 autocast
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.profiler import format_table, profile_upstream  # noqa: E402
from evaluation.upstream import load_upstream  # noqa: E402
try:  # the demo recipe's teacher shape (module moved to cli/ by the one-architecture restructuring)
    from lightning_modules.demo_teacher import tiny_teacher_config  # noqa: E402
except ImportError:  # pragma: no cover
    from cli.demo_teacher import tiny_teacher_config  # type: ignore[no-redef]  # noqa: E402
from lightning_modules.sparsity import SparsityConstraint  # noqa: E402
from wav2vec2.checkpoint import save_model  # noqa: E402
from wav2vec2.hardconcrete import HardConcrete  # noqa: E402
from wav2vec2.model import hubert_base_config, wav2vec2_model  # noqa: E402

UNITS = dict(extractor_prune_conv_channels=True, encoder_prune_attention_heads=True,
             encoder_prune_feed_forward_intermediate=True)


@torch.no_grad()
def _set_structure(model: torch.nn.Module, keep: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, HardConcrete) and m.n > 1:
            kept = torch.randperm(m.n, generator=generator)[: max(1, round(keep * m.n))]
            values = torch.full((m.n,), -10.0)
            values[kept] = 10.0
            m.log_alpha.copy_(values)


def pruned_student(config: dict[str, Any], target: float, seed: int) -> tuple[torch.nn.Module, torch.nn.Module, float]:
    """(teacher, pruned student, reached sparsity) with random weights."""
    torch.manual_seed(seed)
    teacher = wav2vec2_model(**config).eval()
    student = wav2vec2_model(**{**config, **UNITS})
    constraint = SparsityConstraint("params", teacher)
    low, high = 0.0, 1.0
    for _ in range(25):
        mid = 0.5 * (low + high)
        _set_structure(student, mid, seed)
        with torch.no_grad():
            reached = float(constraint.expected_sparsity(student))
        low, high = (low, mid) if reached < target else (mid, high)
    _set_structure(student, 0.5 * (low + high), seed)
    student.eval()
    student.prune()
    with torch.no_grad():
        reached = float(1.0 - constraint.measure(student, "exact") / constraint.teacher_size)
    return teacher, student, reached


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["base", "demo", "both"], default="both")
    parser.add_argument("--target", type=float, default=0.75)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_memory", action="store_true")
    args = parser.parse_args(argv)
    shapes = ["demo", "base"] if args.shape == "both" else [args.shape]
    print(f"load average {os.getloadavg()[0]:.2f}, torch {torch.__version__}, {args.threads} CPU thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            config = tiny_teacher_config() if shape == "demo" else hubert_base_config(encoder_layer_drop=0.0)
            teacher, student, reached = pruned_student(config, args.target, args.seed)
            profiles = []
            for model, name in ((teacher, f"{shape} teacher"), (student, f"{shape} pruned {reached:.2f}")):
                path = save_model(Path(tmp) / f"{shape}-{len(profiles)}.pth", model)
                upstream = load_upstream(str(path), name=name)
                profiles.append(profile_upstream(upstream, seconds=args.seconds, cpu=True, gpu=args.device == "cuda",
                                                 threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                                                 measure_memory=not args.no_memory))
            print(f"\n{shape}: student config heads {student.config.get('encoder_num_heads')}, "
                  f"FFN {student.config.get('encoder_ff_interm_features')}, conv {[c[0] for c in student.config['extractor_conv_layer_config']]}")
            print(format_table(profiles))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
