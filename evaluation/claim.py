"""The demo's verdict: does the compressed student keep the teacher's quality, with significance?

Probe results are recognised by their display name (``probe.py --name``):

* ``fbank`` (log-Mel frames, no model) and ``teacher`` anchor the normalised score
  (SUPERB style, fbank 0, teacher 1000, per probe);
* ``teacher-random`` (the teacher's architecture with random weights) and chance are the
  other reference rows: what the probe gets from structure alone, and from nothing;
* ``dphubert`` (the pruned and distilled student) and ``distilhubert`` (the DistilHuBERT-style
  baseline at equal parameters) are compared with each other.

Every number has its 95 % interval (Wilson for accuracy, bootstrap over utterances for PER);
a difference whose intervals overlap is called "not significant". The student's retained
fraction of the teacher's margin over fbank is its normalised score / 1000.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from .stats import Interval, normalised_score, significance

FBANK, TEACHER, RANDOM, STUDENT, BASELINE = "fbank", "teacher", "teacher-random", "dphubert", "distilhubert"
ROW_ORDER = (FBANK, RANDOM, TEACHER, STUDENT, BASELINE)
RETAIN_GOAL = 0.9


@dataclass(frozen=True)
class Scores:
    """One model's probe numbers (fractions, not percent)."""

    name: str
    params: Optional[int]
    sid: Optional[Interval]
    per: Optional[Interval]


def scores_of(result: Mapping[str, Any]) -> Scores:
    """The two intervals of one probe.py JSON result (None where a task or its interval is absent)."""
    return Scores(str(result["upstream"]), int(result["num_params"]), _interval(result.get("sid", {}), "accuracy"),
                  _interval(result.get("pr", {}), "error_rate"))


def _interval(task: Mapping[str, Any], key: str) -> Optional[Interval]:
    if key not in task or "interval" not in task:
        return None
    i = task["interval"]
    return Interval(float(task[key]), float(i["low"]), float(i["high"]), float(i["confidence"]), str(i["method"]))


def _fmt(interval: Optional[Interval]) -> str:
    if interval is None:
        return "-"
    return f"{100 * interval.value:.1f} [{100 * interval.low:.1f}, {100 * interval.high:.1f}]"


def _score(value: Optional[Interval], fbank: Optional[Interval], teacher: Optional[Interval]) -> Optional[float]:
    if value is None or fbank is None or teacher is None:
        return None
    return normalised_score(value.value, fbank.value, teacher.value)


def _fmt_score(score: Optional[float]) -> str:
    return "-" if score is None else f"{score:.0f}".replace("-0", "0") if round(score) == 0 else f"{score:.0f}"


def claim_lines(results: Sequence[Mapping[str, Any]], sparsity: Optional[Mapping[str, Any]] = None,
                stage_seconds: Optional[Mapping[str, float]] = None) -> list[str]:
    """Markdown: the table with intervals and scores, the checks, the verdict, sparsity and timings.

    ``sparsity``: ``{"target": t, "achieved": a, "expected": e}`` (any may be missing);
    ``stage_seconds``: wall time per run.sh stage, in order.
    """
    by_name = {str(r["upstream"]): scores_of(r) for r in results}
    fbank, teacher = by_name.get(FBANK), by_name.get(TEACHER)
    first = next(iter(results), None)
    sid_info = (first or {}).get("sid", {})
    lines = ["| model | params | SID acc % [95% CI] ↑ | SID score | PER % [95% CI] ↓ | PER score |", "|---|---|---|---|---|---|"]
    if "chance" in sid_info:
        chance_sid = float(sid_info["chance"])
        chance_score = _score(Interval(chance_sid, chance_sid, chance_sid, 0.95, "exact"), fbank and fbank.sid, teacher and teacher.sid)
        per_floor = _score(Interval(1.0, 1.0, 1.0, 0.95, "exact"), fbank and fbank.per, teacher and teacher.per)
        lines.append(f"| chance (uniform guess; empty output) | 0 | {100 * chance_sid:.1f} | {_fmt_score(chance_score)} | "
                     f"100.0 | {_fmt_score(per_floor)} |")
    names = [n for n in ROW_ORDER if n in by_name] + sorted(n for n in by_name if n not in ROW_ORDER)
    for name in names:
        s = by_name[name]
        sid_score = _score(s.sid, fbank and fbank.sid, teacher and teacher.sid)
        per_score = _score(s.per, fbank and fbank.per, teacher and teacher.per)
        lines.append(f"| {name} | {s.params:,} | {_fmt(s.sid)} | {_fmt_score(sid_score)} | {_fmt(s.per)} | {_fmt_score(per_score)} |")
    lines.append("")
    lines += check_lines(by_name)
    if sparsity:
        target, achieved = sparsity.get("target"), sparsity.get("achieved")
        text = f"- achieved sparsity {achieved:.4f}" if achieved is not None else "- achieved sparsity: unknown"
        if target is not None and achieved is not None:
            text += f" (target {target:.4f}, gap {achieved - target:+.4f}; {'within' if abs(achieved - target) <= 0.001 else 'OUTSIDE'} ±0.001)"
        if sparsity.get("expected") is not None:
            text += f"; expected under the gates at the end of stage 1: {sparsity['expected']:.4f}"
        lines.append(text)
    if stage_seconds:
        total = sum(stage_seconds.values())
        lines.append("- wall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in stage_seconds.items())
                     + f"; total {total / 60:.1f} min")
    return lines


def check_lines(by_name: Mapping[str, Scores]) -> list[str]:
    """The three statements the demo exists to make, each with its numbers."""
    lines: list[str] = []
    fbank, teacher = by_name.get(FBANK), by_name.get(TEACHER)
    if fbank is not None and teacher is not None:
        for label, better, t, f in (("SID", "higher", teacher.sid, fbank.sid), ("PER", "lower", teacher.per, fbank.per)):
            if t is None or f is None:
                continue
            ahead = t.value > f.value if better == "higher" else t.value < f.value
            sig = significance(t, f)
            ok = ahead and sig == "significant"
            lines.append(f"- teacher above fbank on {label}: {'yes' if ok else 'NO'} ({100 * t.value:.1f} vs {100 * f.value:.1f}, "
                         f"{'better' if ahead else 'worse'}, intervals {'disjoint' if sig == 'significant' else 'overlap'}: {sig})")
    student = by_name.get(STUDENT)
    if student is not None and fbank is not None and teacher is not None:
        for label, s, f, t in (("SID", student.sid, fbank.sid, teacher.sid), ("PER", student.per, fbank.per, teacher.per)):
            score = _score(s, f, t)
            if score is None:
                continue
            kept = score / 1000
            teacher_ahead = t.value > f.value if label == "SID" else t.value < f.value
            if not teacher_ahead:
                # A student "keeping" a negative margin says nothing about compression: no verdict.
                lines.append(f"- DPHuBERT's retained margin over fbank on {label}: not meaningful "
                             f"(the teacher is not above fbank; score {score:.0f} on the fbank = 0, teacher = 1000 scale)")
                continue
            lines.append(f"- DPHuBERT keeps {100 * kept:.0f}% of the teacher's margin over fbank on {label} "
                         f"(goal ≥ {100 * RETAIN_GOAL:.0f}%: {'met' if kept >= RETAIN_GOAL - 1e-9 else 'NOT met'})")
    baseline = by_name.get(BASELINE)
    if student is not None and baseline is not None:
        for label, better, s, b in (("SID", "higher", student.sid, baseline.sid), ("PER", "lower", student.per, baseline.per)):
            if s is None or b is None:
                continue
            wins = s.value > b.value if better == "higher" else s.value < b.value
            sig = significance(s, b)
            verdict = ("DPHuBERT better" if wins else "baseline better") if s.value != b.value else "tie"
            lines.append(f"- DPHuBERT vs DistilHuBERT-style baseline on {label}: {100 * s.value:.1f} vs {100 * b.value:.1f} "
                         f"({verdict}; {sig})")
    return lines


__all__ = ["BASELINE", "FBANK", "RANDOM", "STUDENT", "TEACHER", "Scores", "check_lines", "claim_lines", "scores_of"]


def stage_times(run_log_text: str) -> dict[str, float]:
    """Wall seconds per stage from run.sh's log lines ``== [NAME] done in N s`` (last run wins)."""
    import re

    times: dict[str, float] = {}
    for match in re.finditer(r"^== \[([^\]]+)\] done in (\d+) s$", run_log_text, flags=re.MULTILINE):
        times[match.group(1)] = float(match.group(2))
    return times


def sparsity_of(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Target / achieved / expected sparsity from a pruned model's provenance."""
    budget = provenance.get("budget", {})
    target = provenance.get("target_sparsity")
    if target is None and provenance.get("target_macs_ratio") is not None:
        target = budget.get("target_sparsity")
    achieved = budget.get("achieved_sparsity", provenance.get("achieved_sparsity")) if budget.get("kind") == "macs" \
        else provenance.get("achieved_sparsity")
    return {"target": target, "achieved": achieved, "expected": budget.get("expected_sparsity"), "kind": budget.get("kind", "params")}
