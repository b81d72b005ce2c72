#!/usr/bin/env python3
"""Markdown report (tables + PNG plots) over experiment folders.

    python report.py EXP_DIR [EXP_DIR ...] --out report.md [--title "..."]

Collects profile_model.py / probe.py JSON files (--json), stage-1 CSV logs and pruned models found
under the folders; see evaluation/report.py for what is drawn. Plots go to <out stem>_plots/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from evaluation.report import write_report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("exp_dirs", nargs="+", type=Path, help="experiment folders to search")
    parser.add_argument("--out", type=Path, default=Path("report.md"))
    parser.add_argument("--title", default="Compression report")
    args = parser.parse_args(argv)
    path = write_report(args.exp_dirs, args.out, args.title)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
