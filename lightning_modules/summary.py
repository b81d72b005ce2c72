"""Closing summary of a DPHuBERT run: sizes, achieved sparsity, distillation loss start/end.

``python -m lightning_modules.summary --teacher T.pth --student S.pth --stage1_logs a.csv --stage3_logs b.csv``
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Optional


from wav2vec2.checkpoint import load_model
from wav2vec2.state_dicts import read_checkpoint


def first_and_last(csv_path: Path, column: str) -> tuple[Optional[float], Optional[float]]:
    """First and last logged values of ``column`` in a Lightning CSVLogger file."""
    if not csv_path.is_file():
        raise FileNotFoundError(f"log file not found: {csv_path}")
    values: list[float] = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get(column, "")
            if value not in ("", None) and not math.isnan(float(value)):
                values.append(float(value))
    return (values[0], values[-1]) if values else (None, None)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--stage1_logs", type=Path, required=True)
    parser.add_argument("--stage3_logs", type=Path, required=True)
    args = parser.parse_args(argv)
    teacher = load_model(args.teacher, verbose=False)
    student = load_model(args.student, verbose=False)
    provenance = read_checkpoint(args.student).get("provenance", {})
    t_params = sum(p.numel() for p in teacher.parameters())
    s_params = sum(p.numel() for p in student.parameters())
    s1_start, s1_end = first_and_last(args.stage1_logs, "train/loss_distill")
    s3_start, s3_end = first_and_last(args.stage3_logs, "train/loss_distill")
    _, sparsity_expected = first_and_last(args.stage1_logs, "train/sparsity_expected")
    print("DPHuBERT run summary")
    print(f"  teacher        {args.teacher}: {t_params:,} params")
    print(f"  student        {args.student}: {s_params:,} params")
    print(f"  sparsity       achieved {1 - s_params / t_params:.4f}, target {provenance.get('target_sparsity')}, "
          f"expected at the end of stage 1 {_fmt(sparsity_expected)}")
    print(f"  distill loss   stage 1: {_fmt(s1_start)} -> {_fmt(s1_end)}; stage 3: {_fmt(s3_start)} -> {_fmt(s3_end)}")


if __name__ == "__main__":
    main()
