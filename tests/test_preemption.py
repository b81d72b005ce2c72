"""A training stage stopped by SIGTERM outside SLURM: it finishes the step, writes last.ckpt
atomically, exits with PREEMPTED_EXIT_CODE, and ``--resume last`` continues to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lightning_modules.slurm import PREEMPTED_EXIT_CODE
from speech_data.demo_corpus import make_demo_corpus
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

REPO = Path(__file__).resolve().parents[1]
STEPS = 12


def tiny_teacher(path: Path) -> Path:
    torch.manual_seed(0)
    config = hubert_base_config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        encoder_embed_dim=32, encoder_num_layers=2, encoder_use_attention=[True] * 2, encoder_use_feed_forward=[True] * 2,
        encoder_num_heads=[4] * 2, encoder_head_dim=8, encoder_ff_interm_features=[64] * 2, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4,
    )
    return save_model(path, wav2vec2_model(**config))


def distill(tsv: Path, teacher: Path, exp: Path, *extra: str) -> subprocess.Popen:
    args = [
        sys.executable, str(REPO / "distill.py"), "--tsv_dir", str(tsv), "--train_subset", "train100", "--valid_subset", "",
        "--teacher_ckpt", str(teacher), "--exp_dir", str(exp), "--distill_layers", "0.1,2", "--max_updates", str(STEPS),
        "--warmup_updates", "2", "--seconds_per_batch", "12", "--max_sample_size", "48000", "--min_sample_size", "8000",
        "--num_workers", "0", "--accelerator", "cpu", "--devices", "1", "--log_interval", "1", "--ckpt_interval", "2",
        "--progress_bar", "false", "--seed", "7", "--target_sparsity", "0.5", "--sparsity_warmup_updates", "4", *extra,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # outside SLURM, even under a SLURM CI
    return subprocess.Popen(args, cwd=REPO, env=dict(env, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")
def test_sigterm_saves_last_checkpoint_and_resume_matches(tmp_path: Path) -> None:
    make_demo_corpus(tmp_path / "audio", num_utterances=24, num_speakers=8, seed=3, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(tmp_path / "audio", tmp_path / "tsv", workers=2, show_progress=False)
    teacher = tiny_teacher(tmp_path / "teacher.pth")

    full = distill(tmp_path / "tsv", teacher, tmp_path / "full")
    output, _ = full.communicate(timeout=600)
    assert full.returncode == 0, output[-3000:]

    stopped_exp = tmp_path / "stopped"
    stopped = distill(tmp_path / "tsv", teacher, stopped_exp)
    deadline = time.monotonic() + 600
    while not (stopped_exp / "ckpts" / "step=2.ckpt").exists():
        assert stopped.poll() is None and time.monotonic() < deadline, stopped.communicate()[0][-3000:]
        time.sleep(0.1)
    stopped.send_signal(signal.SIGTERM)
    output, _ = stopped.communicate(timeout=600)
    assert stopped.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    last = torch.load(stopped_exp / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 2 <= last["global_step"] < STEPS, last["global_step"]
    assert f"preempted (SIGTERM) at step {last['global_step']}: saved {stopped_exp / 'ckpts' / 'last.ckpt'}; --resume last" in output
    assert not list((stopped_exp / "ckpts").glob("*.partial"))

    resumed = distill(tmp_path / "tsv", teacher, stopped_exp, "--resume", "last")
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    reference = torch.load(tmp_path / "full" / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    final = torch.load(stopped_exp / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == STEPS
    assert final["state_dict"].keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(final["state_dict"][key], value), key
