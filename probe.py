#!/usr/bin/env python3
"""Probe a frozen upstream with speaker identification and CTC phone recognition (a small SUPERB).

    python probe.py --upstream MODEL --tsv_dir data/demo [--train_subset train100 --test_subset test-clean]
                    [--seed 0] [--threads 2] [--json exp/probe/MODEL.json]

MODEL is any model file of the toolkit (see evaluation/upstream.py) or a factory name. Prints one
line with both numbers and the learned layer weights; --json writes the full result, which
report.py collects. Protocol and its choices: evaluation/probing.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from evaluation.probing import ProbeConfig, run_probe, summary_line
from evaluation.upstream import load_upstream


def build_parser() -> argparse.ArgumentParser:
    defaults = ProbeConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", required=True, help="model file or factory name")
    parser.add_argument("--name", default=None, help="display name (default: the file stem)")
    parser.add_argument("--mean_std", type=Path, default=None, help="MelHuBERT: mean-std.npy of the training features")
    parser.add_argument("--tsv_dir", type=Path, required=True, help="folder of prepare_data.py file lists and label files")
    parser.add_argument("--train_subset", default="train100")
    parser.add_argument("--test_subset", default="test-clean")
    parser.add_argument("--tasks", default="sid,pr", help="comma-separated: sid, pr")
    parser.add_argument("--unit", choices=("phone", "char"), default=None,
                        help="PR units (default: phones if <subset>.phones.tsv exists, else characters of .trans.tsv)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--sid_epochs", type=int, default=defaults.sid_epochs)
    parser.add_argument("--sid_lr", type=float, default=defaults.sid_learning_rate)
    parser.add_argument("--pr_epochs", type=int, default=defaults.pr_epochs)
    parser.add_argument("--pr_lr", type=float, default=defaults.pr_learning_rate)
    parser.add_argument("--pr_hidden", type=int, default=defaults.pr_hidden, help="0: linear CTC head; N: one ReLU layer of N units")
    parser.add_argument("--bootstrap_resamples", type=int, default=defaults.bootstrap_resamples,
                        help="resamples of the PER / CER bootstrap interval")
    parser.add_argument("--max_train_utterances", type=int, default=None, help="seeded subset of the train subset")
    parser.add_argument("--max_test_utterances", type=int, default=None, help="seeded subset of the test subset")
    parser.add_argument("--extract_batch_seconds", type=float, default=defaults.extract_batch_seconds)
    parser.add_argument("--cache_dtype", choices=("float16", "bfloat16", "float32"), default=defaults.cache_dtype)
    parser.add_argument("--feature_cache", type=Path, default=None,
                        help="folder for a memory-mapped fp16 frame cache (corpus-scale PR with bounded RAM)")
    parser.add_argument("--memory_bound_gb", type=float, default=None,
                        help="refuse to extract when the features would need more RAM than this (estimate printed first)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (fix it for bit-identical reruns)")
    parser.add_argument("--json", type=Path, default=None, help="write the full result here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    unknown = [t for t in tasks if t not in ("sid", "pr")]
    if unknown or not tasks:
        print(f"probe.py: --tasks must name sid and/or pr, got {args.tasks!r}", file=sys.stderr)
        return 2
    config = ProbeConfig(
        seed=args.seed, batch_size=args.batch_size, sid_epochs=args.sid_epochs, sid_learning_rate=args.sid_lr,
        pr_epochs=args.pr_epochs, pr_learning_rate=args.pr_lr, pr_hidden=args.pr_hidden,
        max_train_utterances=args.max_train_utterances, max_test_utterances=args.max_test_utterances,
        extract_batch_seconds=args.extract_batch_seconds, cache_dtype=args.cache_dtype, device=args.device,
        unit=args.unit, tasks=tasks, feature_cache=str(args.feature_cache) if args.feature_cache else None,
        memory_bound_gb=args.memory_bound_gb, bootstrap_resamples=args.bootstrap_resamples,
    )
    upstream = load_upstream(args.upstream, mean_std=args.mean_std, name=args.name)
    from evaluation.feature_cache import MemoryBoundError

    try:
        result = run_probe(upstream, args.tsv_dir, args.train_subset, args.test_subset, config,
                           log=lambda message: print(message, file=sys.stderr))
    except MemoryBoundError as error:
        print(f"probe.py: {error}", file=sys.stderr)
        return 2
    print(summary_line(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
