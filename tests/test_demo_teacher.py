"""The demo teacher's self-supervised objective, its progress bar and the demo corpus's test share."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from methods.masked_reconstruction import LogMelTargets, MaskedReconstructionModule
from lightning_modules.progress import StepProgressBar
from lightning_modules.trainer import TrainerSettings, build_trainer
from speech_data.demo_corpus import plan_corpus
from speech_data.speakers import choose_speakers
from wav2vec2.model import hubert_base_config, wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return wav2vec2_model(**hubert_base_config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        encoder_embed_dim=32, encoder_num_layers=2, encoder_use_attention=[True] * 2, encoder_use_feed_forward=[True] * 2,
        encoder_num_heads=[4] * 2, encoder_head_dim=8, encoder_ff_interm_features=[64] * 2, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4, encoder_layer_drop=0.0))


def chirps(count: int = 4, samples: int = 8000) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.arange(samples) / 16_000
    waves = torch.stack([0.5 * torch.sin(2 * torch.pi * (200 + 300 * k) * t * (1 + 2 * t)) for k in range(count)])
    return waves, torch.tensor([samples, samples, samples - 3200, samples - 1600][:count])


def test_targets_align_with_model_frames() -> None:
    model = tiny_model()
    waves, lengths = chirps()
    targets = LogMelTargets(np.stack([np.zeros(40), np.ones(40)]).astype(np.float32), 40)
    T = int(model.num_frames(torch.tensor([waves.shape[1]]))[0])
    feats, valid = targets(waves, lengths, T)
    assert feats.shape == (4, T, 80) and valid.shape == (4, T)
    assert valid.sum(1).tolist() == [T, T] + [int((((lengths[k] - 400) // 160 + 1) + 1) // 2) for k in (2, 3)]
    with pytest.raises(ValueError, match=r"shape \(2, 80\)"):
        LogMelTargets(np.zeros((2, 40)), 80)


def test_reconstruction_learns_and_fits_both_terms() -> None:
    model = tiny_model()
    waves, lengths = chirps()
    mean_std = np.stack([np.full(40, -5.0), np.full(40, 3.0)]).astype(np.float32)
    module = MaskedReconstructionModule(model, LogMelTargets(mean_std, 40), mask_prob=0.5, mask_length=3, learning_rate=3e-3,
                                        warmup_updates=1, max_updates=100)
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    batch = (waves, lengths, torch.arange(4))
    first, logs = module.training_loss(batch)
    first = first.detach()
    assert set(logs) >= {"loss_masked_l1", "loss_front_l1", "masked_fraction"} and 0.2 < float(logs["masked_fraction"]) < 0.8
    for _ in range(40):
        loss, logs = module.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(logs["loss_front_l1"]) < 0.6 * float(first) / 2 and float(logs["loss_masked_l1"]) < 0.8 * float(first) / 2


class Noise(Dataset):
    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(4000, generator=torch.Generator().manual_seed(index))


class Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4000, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_step_progress_bar_counts_global_steps_with_eta(capsys) -> None:
    trainer = L.Trainer(max_steps=6, max_epochs=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[StepProgressBar("unit", min_interval=0.0)])
    trainer.fit(Tiny(), DataLoader(Noise(), batch_size=16))  # 4 batches per epoch: the bar must cross epochs
    err = capsys.readouterr().err
    assert "unit: 100%" in err and "6/6" in err and "<00:00" in err and "loss" in err


def test_build_trainer_installs_the_step_bar_instead_of_lightnings(tmp_path: Path, capsys) -> None:
    on = build_trainer(TrainerSettings(exp_dir=tmp_path / "run-a", accelerator="cpu", devices=1, max_steps=5,
                                       loggers=(), lr_monitor=False))
    bars = [c for c in on.callbacks if isinstance(c, StepProgressBar)]
    assert len(bars) == 1 and bars[0].description == "run-a" and on.progress_bar_callback is None
    on.fit(Tiny(), DataLoader(Noise(), batch_size=16))
    assert "run-a" in capsys.readouterr().err
    off = build_trainer(TrainerSettings(exp_dir=tmp_path / "run-b", accelerator="cpu", devices=1, max_steps=5,
                                        loggers=(), lr_monitor=False, progress_bar=False, progress_description="x"))
    assert not any(isinstance(c, StepProgressBar) for c in off.callbacks) and off.progress_bar_callback is None


def test_demo_corpus_test_fraction(tmp_path: Path) -> None:
    speakers = choose_speakers(4, include_flite=False)
    jobs = plan_corpus(tmp_path, speakers, seed=0, num_utterances=80, test_fraction=0.4)
    per_split = {split: sum(1 for j in jobs if j.split == split) for split in ("train-clean-100", "dev-clean", "test-clean")}
    assert per_split == {"train-clean-100": 40, "dev-clean": 8, "test-clean": 32}  # 20 each: 2 dev, 8 test
    with pytest.raises(ValueError, match="test_fraction"):
        plan_corpus(tmp_path, speakers, seed=0, num_utterances=80, test_fraction=0.95)
