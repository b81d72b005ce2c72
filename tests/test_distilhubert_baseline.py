"""DistilHuBERT-style baseline: student construction from the teacher and the distill_baseline.py CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from distill_baseline import main as baseline_main
from distill_baseline import steps_from_yamls
from methods.distilhubert_baseline import (
    build_student,
    count_params,
    default_prediction_layers,
    ffn_units_for_params,
    student_config,
)
from speech_data.demo_corpus import make_demo_corpus
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import load_model, save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")


def teacher_config(**overrides) -> dict:
    return hubert_base_config(**{
        "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        "encoder_embed_dim": 32, "encoder_num_layers": 4, "encoder_use_attention": [True] * 4,
        "encoder_use_feed_forward": [True] * 4, "encoder_num_heads": [4] * 4, "encoder_head_dim": 8,
        "encoder_ff_interm_features": [64] * 4, "encoder_pos_conv_kernel": 8, "encoder_pos_conv_groups": 4,
        "encoder_layer_drop": 0.05, **overrides,
    })


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("teacher") / "teacher.pth", wav2vec2_model(**teacher_config()))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_demo_corpus(root / "audio", num_utterances=24, num_speakers=8, seed=3, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(root / "audio", root / "tsv", workers=2, show_progress=False)
    return root / "tsv"


def test_default_prediction_layers_follow_distilhubert() -> None:
    assert default_prediction_layers(12) == [4, 8, 12]
    assert default_prediction_layers(24) == [8, 16, 24]
    assert default_prediction_layers(4) == [1, 3, 4]
    assert default_prediction_layers(2) == [1, 2]


def test_student_is_the_teachers_first_layers(teacher_path: Path) -> None:
    teacher = load_model(teacher_path, verbose=False)
    student = build_student(teacher, num_layers=2).eval()
    assert student.num_layers == 2 and student.config["encoder_layer_drop"] == 0.0
    waves = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([6000, 4500])
    with torch.no_grad():
        expected, _ = teacher.extract_features(waves, lengths, num_layers=2)
        got, _ = student.extract_features(waves, lengths)
    assert len(got) == 3
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def test_ffn_width_matches_a_parameter_count(teacher_path: Path) -> None:
    teacher = load_model(teacher_path, verbose=False)
    target = count_params(build_student(teacher, 2, ffn_units=40))
    width = ffn_units_for_params(teacher, target, 2)
    assert width == 40
    student = build_student(teacher, 2, ffn_units=width)
    assert count_params(student) == target
    # The kept units are the teacher's strongest ones, copied exactly.
    kept = student.encoder.transformer.layers[0].feed_forward.intermediate_dense.weight
    full = teacher.encoder.transformer.layers[0].feed_forward.intermediate_dense.weight
    assert all(any(torch.equal(row, other) for other in full) for row in kept)
    with pytest.raises(ValueError, match="another --student_layers"):
        ffn_units_for_params(teacher, 10 * count_params(teacher), 2)
    with pytest.raises(ValueError, match="FFN width"):
        student_config(teacher, 2, ffn_units=65)


def test_steps_from_stage_yamls(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"max_updates": 400}))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"max_updates": 150}))
    assert steps_from_yamls([tmp_path / "a.yaml", tmp_path / "b.yaml"]) == 550
    (tmp_path / "c.yaml").write_text("learning_rate: 1\n")
    with pytest.raises(ValueError, match="c.yaml"):
        steps_from_yamls([tmp_path / "c.yaml"])


def test_cli_trains_a_few_steps_and_writes_a_loadable_two_layer_student(teacher_path: Path, corpus: Path, tmp_path: Path,
                                                                        capsys) -> None:
    teacher = load_model(teacher_path, verbose=False)
    reference = save_model(tmp_path / "dp-student.pth", build_student(teacher, 2, ffn_units=48))  # stands in for DPHuBERT's
    exp = tmp_path / "baseline"
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump({"max_updates": 2}))
    (tmp_path / "stage3.yaml").write_text(yaml.safe_dump({"max_updates": 1}))
    out = baseline_main([
        "--teacher_ckpt", str(teacher_path), "--tsv_dir", str(corpus), "--train_subset", "train100", "--valid_subset", "valid",
        "--exp_dir", str(exp), "--steps_from", f"{tmp_path / 'stage1.yaml'},{tmp_path / 'stage3.yaml'}", "--seconds_per_batch", "12", "--max_sample_size", "48000",
        "--min_sample_size", "8000", "--num_workers", "0", "--accelerator", "cpu", "--devices", "1", "--log_interval", "1",
        "--ckpt_interval", "2", "--progress_bar", "false", "--seed", "7", "--match_params", str(reference),
    ])
    printed = capsys.readouterr().out
    assert "teacher" in printed and "student" in printed and "matched" in printed
    assert out == exp / "distilhubert.pth" and (exp / "config.yaml").is_file() and (exp / "ckpts" / "last.ckpt").is_file()
    student = load_model(out, verbose=False)
    assert student.num_layers == 2
    assert count_params(student) == count_params(load_model(reference, verbose=False))
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["distill_mode"] == "predlayer" and saved["distill_layers"] == "1,3,4"
    assert saved["provenance"]["updates"] == 3 and len(saved["distill_linear_projs"]) == 6  # 3 heads x (weight, bias)
    initial = build_student(teacher, 2, ffn_units=48).state_dict()
    assert any(not torch.equal(saved["state_dict"][k], initial[k]) for k in initial), "training must move the student"
