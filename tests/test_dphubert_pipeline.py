"""The DPHuBERT stages end to end on a tiny model: files, sparsity control, resume, DDP."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.distill import DistillModule
from methods.dphubert import build_gated_student, prune_stage
from cli.dphubert import distill_main, final_distill_main, prune_main, save_final_main
from speech_data.demo_corpus import make_demo_corpus
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

REPO = Path(__file__).resolve().parents[1]
warnings.filterwarnings("ignore", category=UserWarning)


def tiny_config(**overrides) -> dict:
    return hubert_base_config(**{
        "extractor_conv_layer_config": [[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        "encoder_embed_dim": 32, "encoder_num_layers": 2, "encoder_use_attention": [True] * 2,
        "encoder_use_feed_forward": [True] * 2, "encoder_num_heads": [4] * 2, "encoder_head_dim": 8,
        "encoder_ff_interm_features": [64] * 2, "encoder_pos_conv_kernel": 8, "encoder_pos_conv_groups": 4,
        **overrides,
    })


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_demo_corpus(root / "audio", num_utterances=24, num_speakers=8, seed=3, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(root / "audio", root / "tsv", workers=2, show_progress=False)
    return root / "tsv"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("teacher") / "tiny-teacher.pth", wav2vec2_model(**tiny_config()))


def stage_args(corpus: Path, teacher: Path, exp: Path, steps: int) -> list[str]:
    return [
        "--tsv_dir", str(corpus), "--train_subset", "train100", "--valid_subset", "valid", "--teacher_ckpt", str(teacher),
        "--exp_dir", str(exp), "--distill_layers", "0.1,2", "--max_updates", str(steps), "--warmup_updates", "2",
        "--seconds_per_batch", "12", "--max_sample_size", "48000", "--min_sample_size", "8000", "--num_workers", "0",
        "--accelerator", "cpu", "--devices", "1", "--log_interval", "1", "--ckpt_interval", "3", "--progress_bar", "false",
        "--seed", "7",
    ]


def logged(csv_path: Path, column: str) -> dict[int, float]:
    """``{step: value}`` of one metric from a Lightning CSVLogger file."""
    values: dict[int, float] = {}
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(column):
                values[int(row["step"])] = float(row[column])
    return values


def test_four_stages_write_a_strictly_loadable_final_model(corpus: Path, teacher: Path, tmp_path: Path) -> None:
    stage1, stage3 = tmp_path / "distill", tmp_path / "final"
    distill_main(stage_args(corpus, teacher, stage1, 4) + ["--target_sparsity", "0.5", "--sparsity_warmup_updates", "2"])
    assert (stage1 / "ckpts" / "last.ckpt").is_file() and (stage1 / "config.yaml").is_file()
    stage1_ckpt = torch.load(stage1 / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("teacher.") for k in stage1_ckpt["state_dict"]), "teacher weights must not be checkpointed"
    assert any(k.endswith("log_alpha") for k in stage1_ckpt["state_dict"])

    prune_main(["--distilled_ckpt", str(stage1 / "ckpts" / "last.ckpt")])
    pruned = torch.load(stage1 / "pruned.pth", map_location="cpu", weights_only=True)
    assert set(pruned) >= {"state_dict", "config", "distill_linear_projs", "provenance"}
    assert not any(k.endswith("log_alpha") for k in pruned["state_dict"])

    final_distill_main(stage_args(corpus, teacher, stage3, 3) + ["--student_ckpt", str(stage1 / "pruned.pth")])
    save_final_main(["--config_path", str(stage1 / "pruned.pth"), "--ckpt_after_final_distill", str(stage3 / "ckpts" / "last.ckpt")])
    final_path = stage3 / "tiny-teacher-dp-sp0.50.pth"  # named after the teacher and the target
    assert final_path.is_file(), sorted(p.name for p in stage3.iterdir())

    final = torch.load(final_path, map_location="cpu", weights_only=True)
    model = wav2vec2_model(**final["config"])
    model.load_state_dict(final["state_dict"], strict=True)
    assert final["config"] == pruned["config"]
    assert sum(p.numel() for p in model.parameters()) == pruned["provenance"]["num_params"]
    # Stage 3 trained the student: its weights moved away from the pruned ones.
    moved = [k for k in final["state_dict"] if not torch.equal(final["state_dict"][k], pruned["state_dict"][k])]
    assert moved


class RandomAudio(Dataset):
    """Endless batches of 0.25 s of noise (16 fixed utterances): enough to drive the gates."""

    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(4000, generator=torch.Generator().manual_seed(index % 16))


class StopAtTarget(L.Callback):
    """Stops once the expected sparsity has stayed within ``tolerance`` of the final target."""

    def __init__(self, tolerance: float, patience: int) -> None:
        self.tolerance, self.patience, self.hits = tolerance, patience, 0

    def on_train_batch_end(self, trainer, module, *args) -> None:
        if trainer.global_step <= module.sparsity_warmup_updates:
            return
        gap = abs(float(module.constraint.expected_sparsity(module.student)) - module.target)
        self.hits = self.hits + 1 if gap < self.tolerance else 0
        trainer.should_stop = self.hits >= self.patience


def test_lagrangian_reaches_target_and_pruning_keeps_it(tmp_path: Path) -> None:
    L.seed_everything(0)
    # Fine-grained units (16 heads of width 4, 256 FFN units): on a toy with 4 heads per layer the
    # rounding of the deterministic masks alone moves the count by more than 1 %.
    teacher_model = wav2vec2_model(**tiny_config(encoder_num_heads=[16] * 2, encoder_head_dim=4, encoder_ff_interm_features=[256] * 2))
    path = save_model(tmp_path / "teacher.pth", teacher_model)
    student = build_gated_student(path, "conv,head,interm")  # the paper's units
    target = 0.6
    module = DistillModule(teacher_model, student, distill_layers="0.1,2", learning_rate=1e-3, warmup_updates=10,
                           max_updates=5000, reg_learning_rate=0.1, target_sparsity=target, sparsity_warmup_updates=40)
    loader = DataLoader(RandomAudio(), batch_size=2, collate_fn=lambda xs: (torch.stack(xs), torch.full((len(xs),), 4000)))
    trainer = L.Trainer(max_steps=1500, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=10.0, callbacks=[StopAtTarget(0.004, 5)])
    trainer.fit(module, loader)
    expected = float(module.constraint.expected_sparsity(student))
    assert abs(expected - target) < 0.004, f"expected sparsity {expected:.4f} did not settle at {target} in {trainer.global_step} steps"

    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    result = prune_stage(tmp_path / "stage1.ckpt", tmp_path / "pruned.pth")
    assert abs(result["sparsity"] - target) <= 0.01, f"achieved {result['sparsity']:.4f} vs target {target}"
    reloaded = torch.load(tmp_path / "pruned.pth", map_location="cpu", weights_only=True)
    model = wav2vec2_model(**reloaded["config"])
    model.load_state_dict(reloaded["state_dict"], strict=True)
    assert sum(p.numel() for p in model.parameters()) == result["num_params"]


def test_resume_continues_exactly(corpus: Path, teacher: Path, tmp_path: Path) -> None:
    common = ["--target_sparsity", "0.5", "--sparsity_warmup_updates", "4"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    distill_main(stage_args(corpus, teacher, full, 6) + common)
    distill_main(stage_args(corpus, teacher, killed, 6) + common + ["--stop_after_steps", "3"])
    first_part = logged(killed / "csv_logs" / "metrics.csv", "train/loss")
    assert max(first_part) < 4, "the killed run must stop after 3 steps"
    distill_main(stage_args(corpus, teacher, killed, 6) + common + ["--resume", "last"])
    reference = logged(full / "csv_logs" / "metrics.csv", "train/loss")
    resumed = logged(killed / "csv_logs" / "metrics.csv", "train/loss")
    later = [step for step in reference if step >= 3]
    assert later and all(step in resumed for step in later), (sorted(reference), sorted(resumed))
    for step in later:
        assert math.isclose(resumed[step], reference[step], rel_tol=1e-5, abs_tol=1e-6), (step, resumed[step], reference[step])


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP test runs on Linux")
def test_two_process_ddp_on_cpu(corpus: Path, teacher: Path, tmp_path: Path) -> None:
    exp = tmp_path / "ddp"
    args = stage_args(corpus, teacher, exp, 3) + ["--devices", "2", "--strategy", "ddp", "--target_sparsity", "0.5"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    # A subprocess with a timeout: a stuck DDP rank must not hang the test session.
    result = subprocess.run([sys.executable, str(REPO / "distill.py"), *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(exp / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3
