"""Command line of ``prepare_data.py``: file lists for a corpus, or a synthetic demo corpus.

    prepare_data.py --data LIBRISPEECH_ROOT [--out data/librispeech] [--workers N] [--verify] [--strict]
    prepare_data.py --make-demo-corpus DIR [--hours H | --num-utterances N] [--num-speakers S]
                    [--seed S] [--workers 2] [--no-flite] [--overwrite] [--out LISTS_DIR]

With ``--make-demo-corpus`` and ``--out`` the file lists of the new corpus are written too.
Exit status: 0 on success, 1 when ``--strict`` finds problems or a step fails (message on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path("data/librispeech")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prepare_data.py",
        description="Write DPHuBERT file lists (tsv) for a LibriSpeech-layout corpus, or synthesise a demo corpus.",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--data", type=Path, help="corpus root in LibriSpeech layout (ROOT/<split>/SPK/CHAPTER/*.flac)")
    mode.add_argument("--make-demo-corpus", type=Path, metavar="DIR", help="synthesise an English corpus into DIR")
    parser.add_argument("--out", type=Path, help=f"where the file lists go (default with --data: {DEFAULT_OUT})")
    parser.add_argument("--workers", type=int, help="parallel workers (default: --data min(8, cores); demo 2)")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 1) on any corrupt/empty/non-16 kHz/... file; implies --verify")
    parser.add_argument("--verify", action="store_true",
                        help="decode every file completely (parallel): report truncated, undecodable, NaN/inf, "
                             "silent and too-short (< 400 samples) audio and leave it out of the lists")
    demo = parser.add_argument_group("demo corpus")
    size = demo.add_mutually_exclusive_group()
    size.add_argument("--hours", type=float, help="approximate amount of audio (default 1.0)")
    size.add_argument("--num-utterances", type=int, help="exact number of utterances (at least 3 per speaker)")
    demo.add_argument("--num-speakers", type=int, default=None, help="number of voices (default 24)")
    demo.add_argument("--test-fraction", type=float, default=None,
                      help="share of each speaker's utterances in test-clean (default 0.08; the demo uses more for probe power)")
    demo.add_argument("--seed", type=int, default=0, help="sentence seed; same seed, same files (default 0)")
    demo.add_argument("--no-flite", action="store_true", help="use espeak-ng voices only, even if flite is installed")
    demo.add_argument("--overwrite", action="store_true", help="replace a demo corpus already in DIR")
    return parser


def _prepare(data: Path, out: Path, workers: int, strict: bool, verify: bool = False) -> None:
    from speech_data.prepare import prepare_file_lists

    result = prepare_file_lists(data, out, workers=workers, strict=strict, verify=verify)
    for subset, count in result.subset_sizes.items():
        print(f"{out / (subset + '.tsv')}: {count} files, {result.subset_seconds[subset] / 3600:.2f} h")
    print(result.summary())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.make_demo_corpus is not None:
            from speech_data.demo_corpus import DEFAULT_HOURS, DEFAULT_NUM_SPEAKERS, make_demo_corpus

            summary = make_demo_corpus(
                args.make_demo_corpus,
                hours=args.hours if args.hours is not None else DEFAULT_HOURS,
                num_utterances=args.num_utterances,
                num_speakers=args.num_speakers or DEFAULT_NUM_SPEAKERS,
                seed=args.seed,
                workers=args.workers or 2,
                **({"test_fraction": args.test_fraction} if args.test_fraction is not None else {}),
                use_flite=False if args.no_flite else None,
                overwrite=args.overwrite,
            )
            print(summary.describe())
            if args.out is not None:
                _prepare(summary.root, args.out, args.workers or 2, args.strict, args.verify)
        else:
            _prepare(args.data, args.out or DEFAULT_OUT, args.workers or min(8, os.cpu_count() or 1), args.strict, args.verify)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"prepare_data.py: error: {error}", file=sys.stderr)
        return 1
    return 0
