"""Shared pieces of the fault tests: a tiny corpus in LibriSpeech layout, a tiny teacher, stage args,
and the fault table (``FAULT_TABLE=path pytest tests/test_faults*.py`` writes it as Markdown)."""

from __future__ import annotations

import atexit
import csv
import os
from pathlib import Path
from typing import Optional

import numpy as np
import soundfile
import torch

from wav2vec2.model import hubert_base_config

SAMPLE_RATE = 16_000
_ROWS: list[tuple[str, str, str]] = []


def record(category: str, fault: str, outcome: str) -> None:
    """One row of the fault table; ``outcome``: 'clear error', 'handled', 'silent wrong result' or 'data lost'."""
    _ROWS.append((category, fault, outcome))


def _write_table() -> None:
    target = os.environ.get("FAULT_TABLE")
    if not target or not _ROWS:
        return
    lines = ["| category | input / fault | outcome |", "|---|---|---|"]
    lines += [f"| {c} | {f} | {o} |" for c, f, o in _ROWS]
    with open(target, "a") as handle:
        handle.write("\n".join(lines) + "\n")


atexit.register(_write_table)


def tiny_config(**overrides) -> dict:
    return hubert_base_config(**{
        "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        "encoder_embed_dim": 32, "encoder_num_layers": 2, "encoder_use_attention": [True] * 2,
        "encoder_use_feed_forward": [True] * 2, "encoder_num_heads": [4] * 2, "encoder_head_dim": 8,
        "encoder_ff_interm_features": [64] * 2, "encoder_pos_conv_kernel": 8, "encoder_pos_conv_groups": 4,
        **overrides,
    })


def write_audio(path: Path, samples: np.ndarray, subtype: Optional[str] = None, fmt: Optional[str] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, SAMPLE_RATE, subtype=subtype, format=fmt)
    return path


def noise(num_samples: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(num_samples)).astype(np.float32)


def make_corpus(root: Path, num_train: int = 12, num_valid: int = 3) -> Path:
    """A LibriSpeech-layout corpus of noise clips (1-2 s): train-clean-100 and dev-clean."""
    for split, count, speaker in (("train-clean-100", num_train, 11), ("dev-clean", num_valid, 22)):
        for i in range(count):
            length = SAMPLE_RATE + (i * 1777) % SAMPLE_RATE
            write_audio(root / split / str(speaker) / "1" / f"{speaker}-1-{i:04d}.flac", noise(length, seed=speaker * 100 + i))
    return root


def stage_args(tsv: Path, teacher: Path, exp: Path, steps: int, ckpt_interval: int = 2) -> list[str]:
    return [
        "--tsv_dir", str(tsv), "--train_subset", "train100", "--valid_subset", "valid", "--teacher_ckpt", str(teacher),
        "--exp_dir", str(exp), "--distill_layers", "0.1,2", "--max_updates", str(steps), "--warmup_updates", "2",
        "--seconds_per_batch", "4", "--max_sample_size", "24000", "--min_sample_size", "8000", "--num_workers", "0",
        "--accelerator", "cpu", "--devices", "1", "--log_interval", "1", "--ckpt_interval", str(ckpt_interval),
        "--progress_bar", "false", "--seed", "7", "--target_sparsity", "0.5", "--sparsity_warmup_updates", "2",
    ]


def logged(csv_path: Path, column: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` of one metric, in file order (duplicates kept, so a test can see them)."""
    rows = []
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(column):
                rows.append((int(row["step"]), float(row[column])))
    return rows


def student_state(path: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in checkpoint["state_dict"].items() if k.startswith(("student.", "heads."))}
