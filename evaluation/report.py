"""A Markdown report with plots over experiment folders.

What is collected (searched recursively in every folder given):

* ``*.json`` written by ``profile_model.py --json`` (``"kind": "profile"``): the size / MACs /
  speed table, ratios to its first model;
* ``*.json`` written by ``probe.py --json`` (``"kind": "probe"``): one row per model with SID
  accuracy, PER / CER and layer weights, plus a parameters-versus-accuracy chart;
* ``metrics.csv`` of the CSV logger with a ``train/sparsity_expected`` column (DPHuBERT stage 1):
  sparsity and Lagrange-multiplier curves;
* ``*.pth`` model files of pruned students (their ``provenance`` records ``achieved_sparsity``:
  ``pruned.pth`` and the final ``*-dp-*.pth``): kept heads / FFN units / conv channels per
  layer, drawn over the teacher's sizes when the teacher file named in the provenance exists.
  Files with the same architecture are drawn once.

Plots go to ``<report stem>_plots/`` next to the report and are linked relatively, so the
folder can be moved or attached as a whole. Unreadable JSON or model files are listed at the
end of the report instead of stopping it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from wav2vec2.state_dicts import CheckpointError, read_checkpoint

from .plots import RunPoint, plot_layer_structure, plot_params_vs_metrics, plot_sparsity_curves, read_metric_columns
from .probing import is_probe_result
from .profiler import PROFILE_KIND, ModelProfile, format_table

STAGE1_COLUMN = "train/sparsity_expected"


@dataclass
class Found:
    """Everything ``discover`` found, with the folder each came from."""

    profiles: list[tuple[Path, list[ModelProfile]]] = field(default_factory=list)
    probes: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    stage1_logs: list[Path] = field(default_factory=list)
    pruned_models: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def discover(exp_dirs: Sequence[str | Path]) -> Found:
    """Search ``exp_dirs`` for profile / probe JSON files, stage-1 logs and pruned models."""
    found = Found()
    for exp in map(Path, exp_dirs):
        if not exp.is_dir():
            raise FileNotFoundError(f"experiment folder not found: {exp}")
        for path in sorted(exp.rglob("*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                found.problems.append(f"{path}: unreadable JSON ({error})")
                continue
            if isinstance(data, dict) and data.get("kind") == PROFILE_KIND:
                try:
                    found.profiles.append((path, [ModelProfile.from_dict(m) for m in data["models"]]))
                except (KeyError, TypeError) as error:
                    found.problems.append(f"{path}: profile JSON without the expected fields ({error})")
            elif is_probe_result(data):
                found.probes.append((path, data))
        for path in sorted(exp.rglob("metrics.csv")):
            header = path.open(encoding="utf-8").readline()
            if STAGE1_COLUMN in header:
                found.stage1_logs.append(path)
        seen: set[str] = set()
        for path in sorted(exp.rglob("*.pth")):
            key = _pruned_model_key(path, found.problems)
            if key is not None and key not in seen:
                seen.add(key)
                found.pruned_models.append(path)
    return found


def _pruned_model_key(path: Path, problems: list[str]) -> Optional[str]:
    """The architecture (config as JSON) of a pruned-student file, None for anything else."""
    try:
        data = read_checkpoint(path, mmap=True)
    except CheckpointError as error:  # an unreadable file is reported (named by the reader), not fatal
        problems.append(str(error))
        return None
    provenance = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(provenance, dict) or "achieved_sparsity" not in provenance or "config" not in data:
        return None
    return json.dumps(data["config"], sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _label(path: Path, roots: Sequence[Path]) -> str:
    """A short name: the path relative to the experiment folder it was found in."""
    for root in roots:
        try:
            return f"{root.name}/{path.relative_to(root)}"
        except ValueError:
            continue
    return str(path)


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _ci(task: dict[str, Any]) -> str:
    interval = task.get("interval")
    return "" if not interval else f" [{100 * interval['low']:.2f}, {100 * interval['high']:.2f}]"


def _weights(values: Optional[Sequence[float]]) -> str:
    return "-" if not values else " ".join(f"{v:.2f}" for v in values)


def probe_table(probes: Sequence[tuple[Path, dict[str, Any]]]) -> list[str]:
    metric = next((r["pr"]["metric"] for _, r in probes if "error_rate" in r.get("pr", {})), "PER")
    lines = [f"| model | params (M) | SID acc (%) ↑ | {metric} (%) ↓ | SID train/test | PR train/test | SID layer weights | PR layer weights |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in probes:
        sid, pr = r.get("sid", {}), r.get("pr", {})
        lines.append(
            f"| {r['upstream']} | {r['num_params'] / 1e6:.3f} | {_pct(sid.get('accuracy'))}{_ci(sid)} | {_pct(pr.get('error_rate'))}{_ci(pr)} | "
            f"{sid.get('num_train', '-')}/{sid.get('num_test', '-')} | {pr.get('num_train', '-')}/{pr.get('num_test', '-')} | "
            f"{_weights(sid.get('layer_weights'))} | {_weights(pr.get('layer_weights'))} |"
        )
    return lines


def _probe_notes(probes: Sequence[tuple[Path, dict[str, Any]]]) -> list[str]:
    notes = []
    first = probes[0][1]
    config = first.get("config", {})
    notes.append(f"- data: `{first['tsv_dir']}`, train `{first['train_subset']}`, test `{first['test_subset']}`; seed {config.get('seed')}, "
                 f"SID {config.get('sid_epochs')} epochs, PR {config.get('pr_epochs')} epochs, batch {config.get('batch_size')}")
    sid = first.get("sid", {})
    if "chance" in sid:
        notes.append(f"- SID chance {100 * sid['chance']:.1f}% ({sid['num_speakers']} speakers; split: {sid['split']})")
        notes.append(f"- SID protocol: the linear speaker head trains on the mean-pooled states of {sid.get('num_train', '?')} "
                     f"`{first['train_subset']}` utterances and is scored on {sid.get('num_test', '?')} `{first['test_subset']}` "
                     "utterances of the same speakers with different sentences (no utterance in both); the teacher never "
                     "pre-trains on the test subset")
    configs = {json.dumps(r.get("config", {}), sort_keys=True) for _, r in probes}
    data = {(r["tsv_dir"], r["train_subset"], r["test_subset"]) for _, r in probes}
    if len(configs) > 1 or len(data) > 1:
        notes.append("- **warning**: the runs used different probing settings or data; their numbers do not compare")
    return notes


def _teacher_training(student_provenance: dict[str, Any]) -> Optional[str]:
    """How the teacher named in a student's provenance was pre-trained (its own ``provenance.pretraining``)."""
    teacher = Path(str(student_provenance.get("teacher", "")))
    if not student_provenance.get("teacher") or not teacher.is_file():
        return None
    pretraining = read_checkpoint(teacher, mmap=True).get("provenance", {}).get("pretraining")
    return f"`{teacher}`: {pretraining}" if pretraining else None


def demo_claim_section(found: Found, roots: Sequence[Path]) -> list[str]:
    """The verdict table (evaluation/claim.py) when probes of fbank and the teacher are present."""
    from .claim import FBANK, TEACHER, claim_lines, sparsity_of, stage_times

    names = {str(r["upstream"]) for _, r in found.probes}
    if not {FBANK, TEACHER} <= names:
        return []
    sparsity = None
    teacher_training: Optional[str] = None
    for path in found.pruned_models:
        provenance = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("provenance", {})
        sparsity = sparsity_of(provenance)
        teacher_training = _teacher_training(provenance) or teacher_training
    times: dict[str, float] = {}
    for root in roots:
        if (root / "run.log").is_file():
            times.update(stage_times((root / "run.log").read_text(encoding="utf-8")))
    lines = ["## Demo claim: teacher vs fbank, DPHuBERT vs baseline (95 % intervals)", ""]
    if teacher_training:
        # A supervised-aided teacher must be named as such next to the numbers it produces.
        lines += [f"Teacher training: {teacher_training}.", ""]
    lines += claim_lines([r for _, r in found.probes], sparsity, times) + [""] + _probe_notes(found.probes) + [""]
    lines += ["Scores: SUPERB-style, per probe, fbank = 0 and teacher = 1000; a student's retained fraction of the "
              "teacher's margin over fbank is its score / 1000. Intervals: Wilson (SID accuracy), percentile bootstrap "
              "over test utterances (PER). Two numbers whose intervals overlap are \"not significant\".", ""]
    return lines


def stage1_section(csv_path: Path, label: str, plots_dir: Path, report_dir: Path) -> list[str]:
    png = plot_sparsity_curves(csv_path, plots_dir / f"{_slug(label)}-sparsity.png", title=f"{label}: sparsity and λ")
    series = read_metric_columns(csv_path, ("train/sparsity_expected", "train/sparsity_target", "train/lambda1", "train/lambda2"))
    last = {k: (v[1][-1] if v[1] else None) for k, v in series.items()}
    steps = series["train/sparsity_expected"][0]
    return [
        f"### {label}", "",
        f"![sparsity and lambda curves of {label}]({png.relative_to(report_dir).as_posix()})", "",
        f"Last logged (step {steps[-1] if steps else '-'}): expected sparsity {_fmt(last['train/sparsity_expected'])}, "
        f"target {_fmt(last['train/sparsity_target'])}, λ1 {_fmt(last['train/lambda1'])}, λ2 {_fmt(last['train/lambda2'])}.", "",
    ]


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.4f}"


def structure_section(path: Path, label: str, plots_dir: Path, report_dir: Path) -> list[str]:
    from wav2vec2.checkpoint import build_model, load_model, wav2vec2_files
    from wav2vec2.counting import per_layer_summary

    model = load_model(path, verbose=False)
    kept = per_layer_summary(model, "exact")
    params = sum(p.numel() for p in model.parameters())
    provenance = read_checkpoint(path, mmap=True).get("provenance", {})
    original = None
    teacher = Path(str(provenance.get("teacher", "")))
    if provenance.get("teacher") and teacher.is_file():
        files = wav2vec2_files(read_checkpoint(teacher, mmap=True))
        if not isinstance(files.get("config"), Mapping):
            raise CheckpointError(f"{teacher}: the teacher named in {path}'s provenance holds no wav2vec2 'config' "
                                  f"(keys {sorted(files)[:12]})")
        config = files["config"]
        with torch.device("meta"):  # the teacher's sizes only: no weights needed
            full = build_model(config, source=str(teacher))
        original = per_layer_summary(full, "exact")
    png = plot_layer_structure(kept, plots_dir / f"{_slug(label)}-layers.png", original, title=f"{label}: kept structure")
    lines = [f"### {label}", "", f"![kept heads, FFN units and conv channels of {label}]({png.relative_to(report_dir).as_posix()})", "",
             f"{params:,} parameters; achieved sparsity {_fmt(provenance.get('achieved_sparsity'))} "
             f"(target {provenance.get('target_sparsity')}); teacher `{provenance.get('teacher', '?')}`.", "",
             "| layer | heads | FFN units |", "|---|---|---|"]
    for i, (heads, units) in enumerate(zip(kept["heads"], kept["ffn_units"]), start=1):
        full = f" / {int(original['heads'][i - 1])}" if original else ""
        full_units = f" / {int(original['ffn_units'][i - 1])}" if original else ""
        lines.append(f"| {i} | {int(heads)}{full} | {int(units)}{full_units} |")
    lines += ["", "Conv channels per block: " + ", ".join(str(int(c)) for c in kept["conv_channels"]), ""]
    return lines


def write_report(exp_dirs: Sequence[str | Path], out: str | Path, title: str = "Compression report") -> Path:
    """Collect everything under ``exp_dirs``, draw the plots and write the Markdown file ``out``."""
    roots = [Path(d) for d in exp_dirs]
    found = discover(roots)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report_dir = out.parent.resolve()
    plots_dir = report_dir / f"{out.stem}_plots"
    lines = [f"# {title}", "", "Experiment folders: " + ", ".join(f"`{r}`" for r in roots), ""]

    lines += demo_claim_section(found, roots)
    lines += ["## Size, compute and speed", ""]
    if not found.profiles:
        lines += ["No `profile_model.py --json` results found.", ""]
    for path, profiles in found.profiles:
        lines += [f"### {_label(path, roots)}", "", format_table(profiles, markdown=True), ""]

    lines += ["## Probing (frozen upstream, weighted layer sum)", ""]
    if not found.probes:
        lines += ["No `probe.py --json` results found.", ""]
    else:
        lines += probe_table(found.probes) + [""] + _probe_notes(found.probes) + [""]
        points = [RunPoint(r["upstream"], int(r["num_params"]), r.get("sid", {}).get("accuracy"), r.get("pr", {}).get("error_rate"),
                           r.get("pr", {}).get("metric", "PER")) for _, r in found.probes]
        png = plot_params_vs_metrics(points, plots_dir / "params_vs_accuracy.png")
        lines += [f"![parameters vs probing results]({png.relative_to(report_dir).as_posix()})", ""]

    lines += ["## Stage 1: sparsity and Lagrange multipliers", ""]
    if not found.stage1_logs:
        lines += ["No stage-1 `metrics.csv` with `train/sparsity_expected` found.", ""]
    for path in found.stage1_logs:
        label = _label(path.parent.parent, roots)  # EXP/distill/csv_logs/metrics.csv -> EXP/distill
        try:
            lines += stage1_section(path, label, plots_dir, report_dir)
        except ValueError as error:
            found.problems.append(str(error))

    lines += ["## Pruned structure", ""]
    if not found.pruned_models:
        lines += ["No pruned model files (`provenance.achieved_sparsity`) found.", ""]
    for path in found.pruned_models:
        lines += structure_section(path, _label(path, roots), plots_dir, report_dir)

    if found.problems:
        lines += ["## Skipped files", ""] + [f"- {p}" for p in found.problems] + [""]
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
