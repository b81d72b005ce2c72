#!/usr/bin/env python3
"""Parameters, MACs, latency, real-time factor and peak memory of one or more models.

    python profile_model.py MODEL [MODEL ...] [--tsv data/librispeech/test-clean.tsv] [--threads 1]
                            [--repeats 10] [--warmup 3] [--seconds 10] [--json out.json]

MODEL is any model file (wav2vec2-family .pth, MelHuBERT .ckpt, DPHuBERT / train.py outputs) or
a factory name (hubert_base, wavlm_base_plus, ...: random weights, fine for size and speed).
The table gives ratios to the first model. See evaluation/profiler.py for the conventions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from evaluation.profiler import DEFAULT_SECONDS, format_table, profile_upstream, write_json
from evaluation.upstream import load_upstream


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model files or factory names; the first is the reference")
    parser.add_argument("--names", nargs="*", default=None, help="display names, one per model (default: file stems)")
    parser.add_argument("--mean_std", type=Path, default=None, help="MelHuBERT: mean-std.npy of the training features")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="input length for MACs/s and timing (SUPERB: 10)")
    parser.add_argument("--tsv", type=Path, default=None, help="file list: total MACs over its utterances at their own lengths")
    parser.add_argument("--max_utterances", type=int, default=None, help="only the first N utterances of --tsv")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads while timing (fixed for comparable numbers)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes before timing")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes; the median is reported")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--no_cpu", action="store_true", help="skip CPU timing")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument("--gpu", dest="gpu", action="store_true", default=None, help="time on GPU (default: when available)")
    gpu.add_argument("--no_gpu", dest="gpu", action="store_false", help="never time on GPU")
    parser.add_argument("--no_memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--no_timing", action="store_true", help="only count parameters and MACs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.names is not None and len(args.names) != len(args.models):
        print(f"profile_model.py: --names has {len(args.names)} entries for {len(args.models)} models", file=sys.stderr)
        return 2
    lengths = None
    if args.tsv is not None:
        from speech_data.tsv import read_file_list

        lengths = list(read_file_list(args.tsv).num_samples)[: args.max_utterances]
        if not lengths:
            print(f"profile_model.py: {args.tsv} lists no utterances", file=sys.stderr)
            return 2
    profiles = []
    for i, spec in enumerate(args.models):
        upstream = load_upstream(spec, mean_std=args.mean_std, name=args.names[i] if args.names else None)
        timing = not args.no_timing
        profile = profile_upstream(
            upstream, seconds=args.seconds, corpus_lengths=lengths, corpus_name=str(args.tsv or ""),
            cpu=timing and not args.no_cpu, gpu=(args.gpu if timing else False), threads=args.threads,
            warmup=args.warmup, repeats=args.repeats, batch_size=args.batch_size, measure_memory=not args.no_memory,
        )
        profiles.append(profile)
        print(f"profiled {profile.name}: {profile.params:,} params, {profile.macs_per_second / 1e9:.3f} GMACs/s ({profile.macs_method})",
              file=sys.stderr)
    print(format_table(profiles, markdown=args.markdown))
    if args.json is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("json", "markdown")}
        print(f"wrote {write_json(args.json, profiles, settings)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
