"""Pre-train the demo's tiny HuBERT-style teacher on the demo corpus (CPU, minutes).

Iteration 1 of HuBERT: K-means on normalised, stacked log-Mel frames of the training list,
then masked prediction of those cluster ids from waveforms.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch

from speech_data.fbank import log_mel_fbank, stack_frames
from speech_data.kmeans import KMeansConfig, fit_kmeans
from speech_data.normalize import MeanStdAccumulator
from speech_data.datamodule import SpeechDataModule
from speech_data.dataset import AudioDataset
from wav2vec2.checkpoint import save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

from lightning_modules.trainer import TrainerSettings, build_trainer
from methods.hubert_pretrain import FbankKMeansTargets, MaskedPredictionModule, normalise_fbank


def tiny_teacher_config() -> dict[str, Any]:
    """A 4-layer, 128-wide HuBERT with a 32-channel version of the standard 20 ms CNN (strides 5, 2, 2, 2, 2, 2, 2).

    The CNN dominates the compute of such a small model, so it is narrow to keep the CPU demo short.
    """
    return hubert_base_config(
        extractor_conv_layer_config=[[32, 10, 5]] + [[32, 3, 2]] * 4 + [[32, 2, 2]] * 2,
        encoder_embed_dim=128, encoder_num_layers=4, encoder_use_attention=[True] * 4,
        encoder_use_feed_forward=[True] * 4, encoder_num_heads=[4] * 4, encoder_head_dim=32,
        encoder_ff_interm_features=[512] * 4, encoder_pos_conv_kernel=32, encoder_pos_conv_groups=8,
        encoder_layer_drop=0.0,
    )


def fit_targets(train_tsv: Path, num_clusters: int, max_frames: int, seed: int) -> FbankKMeansTargets:
    """Global mean/std and K-means centres of the stacked log-Mel frames of ``train_tsv``."""
    dataset = AudioDataset(train_tsv)
    fbanks = [log_mel_fbank(dataset[index].waveform) for index in range(len(dataset))]
    accumulator = MeanStdAccumulator(40)
    for feats in fbanks:
        accumulator.add(feats)
    mean_std = accumulator.mean_std()
    frames = torch.cat([stack_frames(normalise_fbank(feats, mean_std)) for feats in fbanks])
    config = KMeansConfig(num_clusters=num_clusters, fraction=1.0, max_frames=max_frames, seed=seed, n_init=3, num_threads=1)
    return FbankKMeansTargets(fit_kmeans(frames.double().numpy(), config), mean_std)


def pretrain(tsv_dir: Path, out: Path, exp_dir: Path, max_updates: int, num_clusters: int, seed: int,
             seconds_per_batch: float, learning_rate: float, mask_prob: float = 0.8, mask_length: int = 10,
             unmasked_weight: float = 0.0) -> dict[str, Any]:
    L.seed_everything(seed, workers=True)
    targets = fit_targets(tsv_dir / "train100.tsv", num_clusters, max_frames=60_000, seed=seed)
    model = wav2vec2_model(**tiny_teacher_config())
    module = MaskedPredictionModule(model, targets, num_clusters, learning_rate=learning_rate, mask_prob=mask_prob,
                                    mask_length=mask_length, unmasked_weight=unmasked_weight,
                                    warmup_updates=max(1, max_updates // 10), max_updates=max_updates, seed=seed)
    data = SpeechDataModule(tsv_dir / "train100.tsv", tsv_dir / "valid.tsv", seconds_per_batch=seconds_per_batch,
                            max_sample_size=160_000, min_sample_size=16_000, num_workers=1, seed=seed)
    trainer = build_trainer(TrainerSettings(
        exp_dir=exp_dir, accelerator="cpu", devices=1, max_steps=max_updates, clip_norm=10.0, log_every=10,
        progress_bar=False, loggers=("csv",), lr_monitor=False, validation={"check_val_every_n_epoch": 1000}))
    trainer.fit(module, datamodule=data)
    metrics = trainer.validate(module, datamodule=data, verbose=False)[0]
    result = {
        "valid_accuracy_masked": metrics["valid/accuracy_masked"],
        "chance_accuracy": 1.0 / num_clusters,
        "num_clusters": num_clusters,
        "updates": max_updates,
    }
    save_model(out, model.eval(), provenance={"pretraining": "HuBERT iteration 1: masked prediction of log-Mel K-means ids", **result})
    (exp_dir / "pretraining.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tsv_dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exp_dir", type=Path, required=True)
    parser.add_argument("--max_updates", type=int, default=500)
    parser.add_argument("--num_clusters", type=int, default=100)
    parser.add_argument("--seconds_per_batch", type=float, default=16.0)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--mask_prob", type=float, default=0.65)
    parser.add_argument("--mask_length", type=int, default=5)
    parser.add_argument("--unmasked_weight", type=float, default=0.5,
                        help="loss weight of unmasked frames; lets a few-minute CPU run learn more than the label prior")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = pretrain(args.tsv_dir, args.out, args.exp_dir, args.max_updates, args.num_clusters, args.seed,
                      args.seconds_per_batch, args.learning_rate, args.mask_prob, args.mask_length, args.unmasked_weight)
    print(f"demo teacher: masked-prediction accuracy {result['valid_accuracy_masked']:.3f} on dev "
          f"(chance {result['chance_accuracy']:.3f}), saved to {args.out}")
