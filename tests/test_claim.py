"""The demo's verdict table (evaluation/claim.py) and its place in report.py's output."""

from __future__ import annotations

import json
from pathlib import Path

from evaluation.claim import claim_lines, sparsity_of, stage_times
from evaluation.report import write_report
from evaluation.stats import bootstrap_ratio_interval, wilson_interval


def result(name: str, params: int, correct: int, errors: int, num_test: int = 600) -> dict:
    sid = wilson_interval(correct, num_test)
    per = bootstrap_ratio_interval([errors / num_test] * num_test, [1.0] * num_test, resamples=10)
    per_interval = {**per.as_dict(), "low": per.value - 0.02, "high": per.value + 0.02}
    return {
        "kind": "probe", "version": 1, "upstream": name, "num_params": params, "tsv_dir": "data/demo", "train_subset": "train100",
        "test_subset": "test-clean", "config": {"seed": 0},
        "sid": {"accuracy": correct / num_test, "interval": sid.as_dict(), "chance": 1 / 24, "num_speakers": 24,
                "split": "test subset", "num_train": 700, "num_test": num_test},
        "pr": {"error_rate": per.value, "interval": per_interval, "metric": "PER", "num_test": num_test},
    }


RESULTS = [
    result("fbank", 0, 480, 300),           # 80.0 %, PER 50 %
    result("teacher", 900_000, 570, 180),   # 95.0 %, PER 30 %
    result("teacher-random", 900_000, 300, 420),
    result("dphubert", 225_000, 561, 192),  # 93.5 %, PER 32 %
    result("distilhubert", 225_000, 555, 198),
]


def test_claim_table_scores_checks_and_verdict() -> None:
    lines = claim_lines(RESULTS, {"target": 0.75, "achieved": 0.7502, "expected": 0.7723}, {"teacher": 300.0, "distill": 200.0})
    text = "\n".join(lines)
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    assert rows["fbank"].split("|")[4].strip() == "0" and rows["teacher"].split("|")[4].strip() == "1000"
    assert rows["fbank"].split("|")[6].strip() == "0" and rows["teacher"].split("|")[6].strip() == "1000"
    assert rows["dphubert"].split("|")[4].strip() == "900"  # (93.5 - 80) / (95 - 80)
    assert rows["dphubert"].split("|")[6].strip() == "900"  # (50 - 32) / (50 - 30)
    assert "95.0 [93.0, 96.5]" in rows["teacher"]  # Wilson 570/600
    assert any(line.startswith("| chance") for line in lines) and "teacher-random" in rows
    assert "teacher above fbank on SID: yes" in text and "teacher above fbank on PER: yes" in text
    assert "keeps 90% of the teacher's margin over fbank on SID (goal ≥ 90%: met)" in text
    assert "DPHuBERT vs DistilHuBERT-style baseline on SID: 93.5 vs 92.5 (DPHuBERT better; not significant)" in text
    assert "achieved sparsity 0.7502 (target 0.7500, gap +0.0002; within ±0.001)" in text
    assert "total 8.3 min" in text


def test_teacher_below_fbank_is_reported_as_such() -> None:
    bad = [result("fbank", 0, 525, 296), result("teacher", 900_000, 350, 410)]
    text = "\n".join(claim_lines(bad))
    assert "teacher above fbank on SID: NO" in text and "teacher above fbank on PER: NO" in text
    # A student cannot "keep" a margin the teacher does not have: no retained-margin verdict then.
    text = "\n".join(claim_lines(bad + [result("dphubert", 200_000, 340, 420)]))
    assert "retained margin over fbank on SID: not meaningful" in text
    assert "retained margin over fbank on PER: not meaningful" in text
    assert "keeps" not in text


def test_stage_times_and_sparsity_helpers() -> None:
    log = "== [teacher] make_demo_teacher.py\n== [teacher] done in 312 s\n== [probe] done in 40 s\n== [teacher] done in 300 s\n"
    assert stage_times(log) == {"teacher": 300.0, "probe": 40.0}
    provenance = {"target_sparsity": 0.75, "achieved_sparsity": 0.7504, "budget": {"kind": "params", "expected_sparsity": 0.77}}
    assert sparsity_of(provenance) == {"target": 0.75, "achieved": 0.7504, "expected": 0.77, "kind": "params"}


def test_report_opens_with_the_claim(tmp_path: Path) -> None:
    exp = tmp_path / "exp"
    (exp / "eval").mkdir(parents=True)
    for r in RESULTS:
        (exp / "eval" / f"probe_{r['upstream']}.json").write_text(json.dumps(r))
    (exp / "run.log").write_text("== [teacher] done in 300 s\n")
    text = write_report([exp], tmp_path / "report.md").read_text()
    assert text.index("## Demo claim") < text.index("## Size, compute and speed")
    assert "SID protocol" in text and "teacher 300 s" in text and "[92.95, 96.48]" in text
