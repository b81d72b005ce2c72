"""report.py: the Markdown file and its plots from profile / probe JSON, stage-1 logs and a pruned model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from evaluation.profiler import profile_upstream, write_json
from evaluation.report import discover, write_report
from evaluation.upstream import Upstream, UpstreamInfo
from helpers import set_gate, tiny_config
from report import main as report_main
from wav2vec2.checkpoint import save_model
from wav2vec2.model import wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_stage1_log(path: Path, steps: int = 40) -> None:
    """A CSVLogger-like file: training rows with the sparsity columns, and rows of other metrics with blanks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["step", "train/loss", "train/sparsity_expected", "train/sparsity_target", "train/lambda1", "train/lambda2", "lr-AdamW/main"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for step in range(steps):
            target = min(0.5, 0.5 * step / 20)
            writer.writerow({"step": step, "train/loss": 1.0 / (step + 1), "train/sparsity_expected": target * 0.9,
                             "train/sparsity_target": target, "train/lambda1": -0.01 * step, "train/lambda2": 0.002 * step,
                             "lr-AdamW/main": ""})
            writer.writerow({"step": step, "lr-AdamW/main": 1e-3})


def probe_result(name: str, params: int, accuracy: float, per: float) -> dict:
    """The fields of a probe.py JSON that the report reads."""
    return {
        "kind": "probe", "version": 1, "upstream": name, "source": f"{name}.pth", "family": "wav2vec2", "num_params": params,
        "num_hidden_states": 3, "hidden_dim": 32, "tsv_dir": "data/demo", "train_subset": "train100", "test_subset": "test-clean",
        "config": {"seed": 0, "sid_epochs": 40, "pr_epochs": 40, "batch_size": 16},
        "sid": {"accuracy": accuracy, "num_speakers": 24, "chance": 1 / 24, "split": "test subset", "num_train": 480, "num_test": 48,
                "layer_weights": [0.2, 0.3, 0.5]},
        "pr": {"error_rate": per, "metric": "PER", "unit": "phone", "num_train": 480, "num_test": 48, "layer_weights": [0.1, 0.6, 0.3]},
    }


@pytest.fixture
def exp_dir(tmp_path: Path) -> Path:
    exp = tmp_path / "exp" / "run1"
    config = tiny_config(prune=("conv", "head", "interm"), num_layers=3)
    torch.manual_seed(0)
    teacher = wav2vec2_model(**{**config, "extractor_prune_conv_channels": False, "encoder_prune_attention_heads": False,
                                "encoder_prune_feed_forward_intermediate": False})
    teacher_path = save_model(exp / "teacher.pth", teacher)
    student = wav2vec2_model(**config).eval()
    student.load_state_dict(teacher.state_dict(), strict=False)
    set_gate(student.feature_extractor.conv_layers[1].hard_concrete, closed=[0, 1, 2])
    for i, layer in enumerate(student.encoder.transformer.layers):
        set_gate(layer.attention.hard_concrete_for_heads, closed=range(i))
        set_gate(layer.feed_forward.hard_concrete_for_intermediate, closed=range(4 * i))
    for block in student.feature_extractor.conv_layers:
        if block.hard_concrete is not None and float(block.hard_concrete.log_alpha.detach().min()) > -1:
            set_gate(block.hard_concrete)
    student.prune()
    sparsity = 1 - sum(p.numel() for p in student.parameters()) / sum(p.numel() for p in teacher.parameters())
    save_model(exp / "distill" / "pruned.pth", student,
               provenance={"teacher": str(teacher_path), "achieved_sparsity": sparsity, "target_sparsity": 0.5})
    write_stage1_log(exp / "distill" / "csv_logs" / "metrics.csv")
    profiles = [profile_upstream(Upstream(m.eval(), UpstreamInfo(name, "test", "wav2vec2")), seconds=0.5, cpu=False, gpu=False)
                for m, name in ((teacher, "teacher"), (student, "pruned"))]
    write_json(exp / "profile.json", profiles, {})
    (exp / "probe").mkdir()
    for name, params, accuracy, per in (("teacher", 100_000, 0.8, 0.4), ("pruned", 40_000, 0.7, 0.5), ("baseline", 45_000, 0.6, 0.6)):
        (exp / "probe" / f"{name}.json").write_text(json.dumps(probe_result(name, params, accuracy, per)))
    (exp / "broken.json").write_text("{not json")
    return exp


def test_report_writes_markdown_and_plots(exp_dir: Path, tmp_path: Path) -> None:
    found = discover([exp_dir])
    assert len(found.profiles) == 1 and len(found.probes) == 3 and len(found.stage1_logs) == 1
    assert [p.name for p in found.pruned_models] == ["pruned.pth"]  # the teacher has no provenance: not a pruned model

    out = tmp_path / "out" / "report.md"
    assert report_main([str(exp_dir), "--out", str(out)]) == 0
    text = out.read_text()
    plots = sorted((out.parent / "report_plots").glob("*.png"))
    assert {p.name for p in plots} == {"params_vs_accuracy.png", "run1_distill-sparsity.png", "run1_distill_pruned.pth-layers.png"}
    for png in plots:
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png
        assert f"](report_plots/{png.name})" in text, f"{png.name} is not linked from the report"
    for heading in ("## Size, compute and speed", "## Probing", "## Stage 1", "## Pruned structure", "## Skipped files"):
        assert heading in text
    assert "| teacher |" in text and "MACs ratio" in text and "| baseline |" in text
    assert "broken.json" in text  # listed as skipped, not fatal
    assert "| 2 | 3 / 4 |" in text  # layer 2 kept 3 of 4 heads (one closed)


def test_report_of_an_empty_folder_says_so(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = write_report([tmp_path / "empty"], tmp_path / "r.md")
    assert "No `profile_model.py --json` results found." in out.read_text()
    with pytest.raises(FileNotFoundError, match="missing"):
        write_report([tmp_path / "missing"], tmp_path / "r2.md")


def test_demo_claim_names_how_the_teacher_was_trained(exp_dir: Path, tmp_path: Path) -> None:
    teacher_path = exp_dir / "teacher.pth"
    save_model(teacher_path, wav2vec2_model(**torch.load(teacher_path, weights_only=True)["config"]),
               provenance={"pretraining": "supervised-aided: HuBERT plus speaker and phone heads on train100"})
    (exp_dir / "probe" / "fbank.json").write_text(json.dumps(probe_result("fbank", 0, 0.7, 0.5)))
    out = tmp_path / "report.md"
    assert report_main([str(exp_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Demo claim" in text
    assert f"Teacher training: `{teacher_path}`: supervised-aided: HuBERT plus speaker and phone heads on train100." in text
