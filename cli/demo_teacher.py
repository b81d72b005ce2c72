"""Pre-train the demo's tiny HuBERT-architecture teacher on the demo corpus (CPU, minutes).

Default objective (``--objective hubert``): iteration 1 of HuBERT, K-means on normalised,
stacked log-Mel frames of the training list, then masked prediction of those cluster ids from
waveforms. Experimental (``--objective reconstruction``, self-supervised, no labels): masked
log-Mel reconstruction from the last layer plus log-Mel reconstruction from h0
(methods/masked_reconstruction.py); in our trials its teacher probed no better than the HuBERT one.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
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

from lightning_modules.base import CompressionModule
from lightning_modules.trainer import TrainerSettings, build_trainer
from methods.hubert_pretrain import FbankKMeansTargets, MaskedPredictionModule, normalise_fbank
from methods.masked_reconstruction import LogMelTargets, MaskedReconstructionModule
from methods.supervised_teacher import SupervisedMaskedPredictionModule, read_labels


DEFAULT_MASK_PROB = {"hubert": 0.65, "supervised": 0.65, "reconstruction": 0.5}


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


def fit_mean_std(train_tsv: Path, num_mel_bins: int, max_utterances: int, seed: int) -> np.ndarray:
    """``(2, bins)`` mean/std of the log-Mel frames of a seeded subset of ``train_tsv``."""
    dataset = AudioDataset(train_tsv)
    indices = sorted(random.Random(seed).sample(range(len(dataset)), min(max_utterances, len(dataset))))
    accumulator = MeanStdAccumulator(num_mel_bins)
    for index in indices:
        accumulator.add(log_mel_fbank(dataset[index].waveform, num_mel_bins))
    return accumulator.mean_std()


def pretrain(tsv_dir: Path, out: Path, exp_dir: Path, max_updates: int, num_clusters: int, seed: int,
             seconds_per_batch: float, learning_rate: float, mask_prob: float = 0.8, mask_length: int = 10,
             unmasked_weight: float = 0.0, objective: str = "hubert", num_mel_bins: int = 80,
             front_weight: float = 1.0, random_out: Optional[Path] = None, speaker_weight: float = 1.0,
             phone_weight: float = 1.0, speaker_layer: int = 2, phone_layer: int = 4,
             supervised_fraction: float = 0.5) -> dict[str, Any]:
    """Pre-train the tiny teacher on ``train100`` (never on the test subset) and save it.

    ``objective``: ``hubert`` (iteration 1: masked prediction of log-Mel K-means ids) or the
    experimental ``reconstruction`` (masked + front-end log-Mel reconstruction, see
    methods/masked_reconstruction.py).
    ``random_out``: also save the same architecture with its random initial weights (a probe reference).
    """
    L.seed_everything(seed, workers=True)
    model = wav2vec2_model(**tiny_teacher_config())
    if random_out is not None:
        save_model(random_out, copy.deepcopy(model).eval(), provenance={"pretraining": "none: random initial weights", "seed": seed})
    warmup = max(1, max_updates // 10)
    if objective == "reconstruction":
        targets = LogMelTargets(fit_mean_std(tsv_dir / "train100.tsv", num_mel_bins, 300, seed), num_mel_bins)
        module: CompressionModule = MaskedReconstructionModule(
            model, targets, mask_prob=mask_prob, mask_length=mask_length, front_weight=front_weight,
            learning_rate=learning_rate, warmup_updates=warmup, max_updates=max_updates, seed=seed)
        description = "self-supervised: masked log-Mel reconstruction (last layer) + log-Mel reconstruction from h0"
    elif objective in ("hubert", "supervised"):
        kmeans_targets = fit_targets(tsv_dir / "train100.tsv", num_clusters, max_frames=60_000, seed=seed)
        masked = dict(learning_rate=learning_rate, mask_prob=mask_prob, mask_length=mask_length,
                      unmasked_weight=unmasked_weight, warmup_updates=warmup, max_updates=max_updates, seed=seed)
        if objective == "hubert":
            module = MaskedPredictionModule(model, kmeans_targets, num_clusters, **masked)
            description = "HuBERT iteration 1: masked prediction of log-Mel K-means ids"
        else:
            labels = read_labels(tsv_dir, "train100")
            module = SupervisedMaskedPredictionModule(
                model, kmeans_targets, num_clusters, labels, speaker_layer=speaker_layer, phone_layer=phone_layer,
                speaker_weight=speaker_weight, phone_weight=phone_weight, supervised_fraction=supervised_fraction,
                **masked)
            description = (f"supervised-aided: HuBERT iteration 1 (masked prediction of log-Mel K-means ids) plus "
                           f"auxiliary supervised heads trained on train100 only: speaker ID ({labels.num_speakers} "
                           f"speakers, mean-pooled layer {speaker_layer}, weight {speaker_weight}) and phone CTC "
                           f"({len(labels.phone_names)} phones, layer {phone_layer}, weight {phone_weight}), each on an unmasked "
                           f"{supervised_fraction:.0%} of the utterances")
    else:
        raise ValueError(f"objective must be 'hubert', 'supervised' or 'reconstruction', got {objective!r}")
    # Random crops of at most 10 s, and never longer than a batch. The supervised objective crops
    # only what exceeds a batch: a cropped utterance no longer matches its phone transcript.
    crop = int((seconds_per_batch if objective == "supervised" else min(10.0, seconds_per_batch)) * 16_000)
    data = SpeechDataModule(tsv_dir / "train100.tsv", tsv_dir / "valid.tsv", seconds_per_batch=seconds_per_batch,
                            max_sample_size=crop, min_sample_size=16_000, num_workers=1, seed=seed)
    trainer = build_trainer(TrainerSettings(
        exp_dir=exp_dir, accelerator="cpu", devices=1, max_steps=max_updates, clip_norm=10.0, log_every=10,
        progress_bar=True, progress_description="teacher", loggers=("csv",), lr_monitor=False,
        validation={"check_val_every_n_epoch": 1000}))
    trainer.fit(module, datamodule=data)
    metrics = {k: float(v) for k, v in trainer.validate(module, datamodule=data, verbose=False)[0].items()}
    result: dict[str, Any] = {"objective": objective, "description": description, "updates": max_updates, "valid": metrics}
    if objective != "reconstruction":
        result.update(chance_accuracy=1.0 / num_clusters, num_clusters=num_clusters)
    save_model(out, model.eval(), provenance={"pretraining": description, **result})
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "pretraining.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tsv_dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exp_dir", type=Path, required=True)
    parser.add_argument("--random_out", type=Path, default=None, help="also save the random-initialised copy here")
    parser.add_argument("--objective", choices=("hubert", "supervised", "reconstruction"), default="hubert",
                        help="hubert: masked prediction of log-Mel K-means ids; supervised: the same plus auxiliary "
                             "speaker-ID and phone-CTC heads trained on train100 (a supervised-aided teacher, "
                             "reported as such); reconstruction: experimental, masked + front-end log-Mel "
                             "reconstruction (probed no better in our trials)")
    parser.add_argument("--speaker_weight", type=float, default=1.0, help="supervised objective: speaker CE weight")
    parser.add_argument("--phone_weight", type=float, default=1.0, help="supervised objective: phone CTC weight")
    parser.add_argument("--speaker_layer", type=int, default=2, help="supervised objective: layer of the speaker head")
    parser.add_argument("--phone_layer", type=int, default=4, help="supervised objective: layer of the phone head")
    parser.add_argument("--supervised_fraction", type=float, default=0.5,
                        help="supervised objective: share of utterances left unmasked for the supervised heads")
    parser.add_argument("--max_updates", type=int, default=500)
    parser.add_argument("--num_clusters", type=int, default=100, help="hubert objective")
    parser.add_argument("--num_mel_bins", type=int, default=80, help="reconstruction objective: Mel bins of the targets")
    parser.add_argument("--front_weight", type=float, default=1.0, help="reconstruction objective: weight of the h0 term")
    parser.add_argument("--seconds_per_batch", type=float, default=16.0)
    parser.add_argument("--learning_rate", type=float, default=1e-3,
                        help="peak LR; 2e-3 diverged after about 30 updates in a trial run (reconstruction objective)")
    parser.add_argument("--mask_prob", type=float, default=None,
                        help="share of masked frames (default 0.65 for hubert, 0.5 for reconstruction)")
    parser.add_argument("--mask_length", type=int, default=5)
    parser.add_argument("--unmasked_weight", type=float, default=0.5,
                        help="hubert objective: loss weight of unmasked frames")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = pretrain(args.tsv_dir, args.out, args.exp_dir, args.max_updates, args.num_clusters, args.seed,
                      args.seconds_per_batch, args.learning_rate,
                      args.mask_prob if args.mask_prob is not None else DEFAULT_MASK_PROB[args.objective], args.mask_length, args.unmasked_weight,
                      args.objective, args.num_mel_bins, args.front_weight, args.random_out, args.speaker_weight,
                      args.phone_weight, args.speaker_layer, args.phone_layer, args.supervised_fraction)
    valid = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["valid"].items()))
    print(f"demo teacher ({args.objective}, {args.max_updates} updates): dev {valid}; saved to {args.out}")
