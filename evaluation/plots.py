"""The report's figures (matplotlib, Agg backend: no display needed).

Each function writes one PNG and returns its path:

* ``plot_sparsity_curves``: stage-1 expected vs target sparsity, and the Lagrange multipliers
  lambda1 / lambda2, against the training step (from the CSV logger's ``metrics.csv``);
* ``plot_layer_structure``: kept attention heads and FFN units per layer and kept channels
  per CNN block of a pruned model, over the original sizes when they are known;
* ``plot_params_vs_metrics``: parameters against probing results (SID accuracy, PER / CER)
  over several runs, one labelled point per model.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from wav2vec2.optional import require

matplotlib = require("matplotlib", "the report's figures")
matplotlib.use("Agg")  # before pyplot: headless servers and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

SPARSITY_COLUMNS = ("train/sparsity_expected", "train/sparsity_target", "train/lambda1", "train/lambda2")
DPI = 120


def read_metric_columns(csv_path: str | Path, columns: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """``{column: (steps, values)}`` from a Lightning CSVLogger file; empty and NaN cells skipped.

    Lightning writes one row per logging call with blanks for the metrics not logged then,
    so every column is read with its own steps. Missing columns give empty lists.
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"metrics file not found: {path}")
    series: dict[str, tuple[list[int], list[float]]] = {c: ([], []) for c in columns}
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "step" not in reader.fieldnames:
            raise ValueError(f"{path}: not a Lightning CSV log (no 'step' column)")
        for row in reader:
            for column in columns:
                cell = row.get(column, "")
                if cell in ("", None):
                    continue
                value = float(cell)
                if math.isnan(value):
                    continue
                series[column][0].append(int(float(row["step"])))
                series[column][1].append(value)
    return series


def plot_sparsity_curves(csv_path: str | Path, out: str | Path, title: str = "") -> Path:
    """Two panels: sparsity (expected, target) and lambda1 / lambda2 vs step."""
    series = read_metric_columns(csv_path, SPARSITY_COLUMNS)
    if not series["train/sparsity_expected"][0]:
        raise ValueError(f"{csv_path}: no 'train/sparsity_expected' values (not a stage-1 run with a sparsity target?)")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for column, label, style in (("train/sparsity_expected", "expected", "-"), ("train/sparsity_target", "target", "--")):
        steps, values = series[column]
        if steps:
            top.plot(steps, values, style, label=label, linewidth=1.6)
    top.set_ylabel("sparsity (fraction of parameters removed)")
    top.set_ylim(bottom=0)
    top.grid(alpha=0.3)
    top.legend(loc="lower right")
    for column, label in (("train/lambda1", "λ1"), ("train/lambda2", "λ2")):
        steps, values = series[column]
        if steps:
            bottom.plot(steps, values, label=label, linewidth=1.4)
    bottom.axhline(0.0, color="grey", linewidth=0.8)
    bottom.set_xlabel("training step")
    bottom.set_ylabel("Lagrange multiplier")
    bottom.grid(alpha=0.3)
    bottom.legend(loc="best")
    fig.suptitle(title or "Stage 1: sparsity and Lagrange multipliers")
    return _save(fig, out)


def plot_layer_structure(kept: dict[str, list[float]], out: str | Path, original: Optional[dict[str, list[float]]] = None,
                         title: str = "") -> Path:
    """Bars of kept heads / FFN units per layer and channels per conv block (``per_layer_summary``)."""
    panels = (("heads", "attention heads", "layer"), ("ffn_units", "FFN units", "layer"), ("conv_channels", "channels", "CNN block"))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, ylabel, xlabel) in zip(axes, panels):
        values = kept.get(key, [])
        positions = list(range(1, len(values) + 1)) if key != "conv_channels" else list(range(len(values)))
        if original is not None and len(original.get(key, [])) == len(values):
            ax.bar(positions, original[key], color="#d9d9d9", label="original", width=0.8)
        ax.bar(positions, values, color="#2b6cb0", label="kept", width=0.6)
        if len(values) <= 16:  # beyond that the numbers overlap; the bars still read
            for x, v in zip(positions, values):
                ax.text(x, v, f"{int(v)}", ha="center", va="bottom", fontsize=7)
        tallest = max([*values, *(original or {}).get(key, []), 1])
        ax.set_ylim(0, 1.12 * tallest)  # headroom for the numbers above the bars
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xticks(positions if len(positions) <= 16 else positions[::2])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    if original is not None:
        # One legend for the figure, outside the panels, so it never hides a bar.
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title or "Kept structure per layer")
    return _save(fig, out)


@dataclass
class RunPoint:
    """One model on the parameters-versus-accuracy chart."""

    name: str
    params: int
    sid_accuracy: Optional[float] = None  # fraction
    error_rate: Optional[float] = None  # fraction
    metric: str = "PER"


def plot_params_vs_metrics(points: Sequence[RunPoint], out: str | Path, title: str = "") -> Path:
    """SID accuracy (left) and PER / CER (right) against millions of parameters."""
    if not points:
        raise ValueError("no runs to plot")
    metric = next((p.metric for p in points if p.error_rate is not None), "PER")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, attribute, ylabel in ((left, "sid_accuracy", "speaker ID accuracy (%) ↑"), (right, "error_rate", f"{metric} (%) ↓")):
        shown = [p for p in points if getattr(p, attribute) is not None]
        xs = [p.params / 1e6 for p in shown]
        ys = [100 * getattr(p, attribute) for p in shown]
        x_span = (max(xs) - min(xs)) or 1.0 if shown else 1.0
        y_span = (max(ys) - min(ys)) or 1.0 if shown else 1.0
        placed: list[tuple[float, float]] = []
        for p, x, y in zip(shown, xs, ys):
            ax.scatter([x], [y], s=40, zorder=3)
            # Neighbours closer than ~8 % of the ranges: put this label below the point instead.
            crowded = any(abs(x - px) < 0.08 * x_span and abs(y - py) < 0.08 * y_span for px, py in placed)
            ax.annotate(p.name, (x, y), textcoords="offset points", xytext=(5, -11 if crowded else 4), fontsize=8)
            placed.append((x, y))
        ax.set_xlabel("parameters (M)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not shown:
            ax.text(0.5, 0.5, "no results", ha="center", va="center", transform=ax.transAxes)
        else:
            _pad_limits(ax, xs, ys)
    fig.suptitle(title or "Parameters vs probing results")
    return _save(fig, out)


def _pad_limits(ax, xs: Sequence[float], ys: Sequence[float]) -> None:
    """Room for the labels: 15 % margins, and never a zero-width range."""
    for values, setter in ((xs, ax.set_xlim), (ys, ax.set_ylim)):
        low, high = min(values), max(values)
        span = (high - low) or max(abs(high), 1.0) * 0.5
        setter(low - 0.15 * span, high + 0.25 * span)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out
