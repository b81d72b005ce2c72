"""HuBERT-style masked prediction for waveform models (pre-training iteration 1).

Targets are K-means cluster ids of log-Mel frames computed on the fly from the batch itself
(10 ms Kaldi fbank, globally normalised, pairs of frames stacked to the model's 20 ms rate),
so random crops never misalign audio and labels.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech_data.fbank import log_mel_fbank, num_frames, stack_frames
from speech_data.kmeans import KMeansModel
from wav2vec2.model import Wav2Vec2Model

from lightning_modules.base import CompressionModule
from wav2vec2.masking import span_mask

IGNORE = -100


def normalise_fbank(feats: Tensor, mean_std: np.ndarray) -> Tensor:
    """``(..., 40)`` log-Mel frames normalised with a ``(2, 40)`` mean/std array."""
    mean = torch.as_tensor(np.asarray(mean_std[0]), dtype=feats.dtype, device=feats.device)
    std = torch.as_tensor(np.asarray(mean_std[1]), dtype=feats.dtype, device=feats.device)
    return (feats - mean) / std


class FbankKMeansTargets:
    """Cluster ids of stacked, normalised log-Mel frames: ``(B, L)`` audio -> ``(B, T)`` ids.

    Frame t of the 20 ms stack covers 10 ms frames 2t and 2t+1; for the standard wav2vec2
    CNN (receptive field 400, stride 320) that is exactly the CNN's frame count.
    """

    def __init__(self, kmeans: KMeansModel, mean_std: np.ndarray) -> None:
        self.kmeans = kmeans
        self.mean_std = np.asarray(mean_std, dtype=np.float32)

    def stacked_features(self, waveforms: Tensor) -> Tensor:
        """``(B, L)`` -> normalised stacked log-Mel ``(B, T20, 80)``."""
        return stack_frames(normalise_fbank(log_mel_fbank(waveforms.float()), self.mean_std))

    def __call__(self, waveforms: Tensor, lengths: Tensor, num_model_frames: int) -> Tensor:
        feats = self.stacked_features(waveforms)
        B, T, D = feats.shape
        labels = self.kmeans.predict_tensor(feats.reshape(B * T, D)).view(B, T)
        valid = (num_frames(lengths) + 1) // 2  # stacked frames of each utterance
        labels = labels.masked_fill(torch.arange(T, device=labels.device)[None, :] >= valid[:, None], IGNORE)
        if T >= num_model_frames:
            return labels[:, :num_model_frames]
        return F.pad(labels, (0, num_model_frames - T), value=IGNORE)


class MaskedPretrainingModule(CompressionModule):
    """What every masked pre-training objective shares: a seeded mask generator whose state is
    checkpointed (exact resume), fixed masks per validation batch, and the model config saved.

    Subclasses set ``self.model``, ``self.seed``, ``self._mask_generator`` and implement
    ``_loss(batch, generator) -> (loss, logs)``.
    """

    model: Wav2Vec2Model
    seed: int
    _mask_generator: torch.Generator

    def _loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        raise NotImplementedError

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        return self._loss(batch, self._mask_generator)

    def validation_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        # Fixed masks per validation batch, so the numbers compare across evaluations.
        return self._loss(batch, torch.Generator().manual_seed(self.seed + int(batch[2][0])))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["mask_generator_state"] = self._mask_generator.get_state()
        checkpoint["model_config"] = self.model.config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "mask_generator_state" in checkpoint:
            self._mask_generator.set_state(checkpoint["mask_generator_state"])


class MaskedPredictionModule(MaskedPretrainingModule):
    """Predict the cluster ids of masked frames from the last layer (cross-entropy).

    ``unmasked_weight`` > 0 adds the loss on unmasked frames (HuBERT's ``pred_nomask_weight``).
    """

    frozen_prefixes = ()

    def __init__(
        self,
        model: Wav2Vec2Model,
        targets: FbankKMeansTargets,
        num_clusters: int,
        mask_prob: float = 0.8,
        mask_length: int = 10,
        unmasked_weight: float = 0.0,
        learning_rate: float = 5e-4,
        weight_decay: float = 0.01,
        warmup_updates: int = 100,
        max_updates: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_updates, max_updates)
        self.model = model
        self.targets = targets
        width = model.encoder.feature_projection.projection.out_features
        self.mask_embedding = nn.Parameter(torch.empty(width).uniform_())
        self.head = nn.Linear(width, num_clusters)
        self.mask_prob = mask_prob
        self.mask_length = mask_length
        self.unmasked_weight = unmasked_weight
        self.seed = seed
        self._mask_generator = torch.Generator().manual_seed(seed)

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self]

    def _loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        loss, logs, _, _ = self._masked_prediction(batch, generator)
        return loss, logs

    def _masked_prediction(self, batch: Any, generator: torch.Generator, unmasked_rows: Optional[Tensor] = None
                           ) -> tuple[Tensor, dict[str, Tensor | float], list[Tensor], Tensor]:
        """``(loss, logs, [h0, ..., hN] each (B, T, D), frame_lengths (B,))`` of one masked forward.

        ``unmasked_rows`` ``(B,)`` bool: utterances left unmasked (they add only to the unmasked loss).
        """
        waveforms, lengths = batch[0], batch[1]
        frame_lengths = self.model.num_frames(lengths)
        T = int(self.model.num_frames(torch.tensor([waveforms.shape[1]]))[0])
        labels = self.targets(waveforms, lengths, T)
        masked = span_mask(frame_lengths, T, self.mask_prob, self.mask_length, generator=generator).to(waveforms.device)
        if unmasked_rows is not None:
            masked = masked & ~unmasked_rows.to(masked.device)[:, None]
        states, _ = self.model.extract_features(waveforms, lengths, frame_mask=masked, mask_embedding=self.mask_embedding)
        valid = labels != IGNORE
        logits = self.head(states[-1])  # (B, T, K)
        masked_logits, masked_target = logits[masked & valid], labels[masked & valid]
        if masked_target.numel():
            loss = F.cross_entropy(masked_logits.float(), masked_target)
        else:  # every row left unmasked: no masked term this step (a zero that keeps the graph)
            loss = logits.sum() * 0.0
        logs: dict[str, Tensor | float] = {
            "accuracy_masked": (masked_logits.argmax(-1) == masked_target).float().mean() if masked_target.numel() else 0.0,
            "masked_fraction": masked.float().sum() / frame_lengths.sum(),
            "loss_masked": loss.detach(),
        }
        if self.unmasked_weight > 0:
            # HuBERT's pred_nomask_weight: unmasked frames too, which speeds up short runs.
            unmasked = ~masked & valid
            loss_unmasked = F.cross_entropy(logits[unmasked].float(), labels[unmasked])
            logs["loss_unmasked"] = loss_unmasked.detach()
            loss = loss + self.unmasked_weight * loss_unmasked
        return loss, logs, states, frame_lengths
