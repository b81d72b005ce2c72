"""Self-supervised pre-training of a waveform model by reconstructing its own log-Mel input.

No labels anywhere: the targets are the normalised log-Mel frames of the batch itself. Two
terms, both L1 on globally normalised, pairs-stacked 10 ms frames (``(B, T, 2 * bins)`` at the
model's 20 ms rate):

* **masked reconstruction** (Mockingjay / TERA style): frames masked before the transformer
  are predicted from the last layer, which forces the layers to model context;
* **front-end reconstruction**: unmasked frames are predicted from h0 (the CNN's feature
  projection), so the model's lowest state carries at least the spectral information of the
  log-Mel features a probe would otherwise use. Its targets may use more Mel bins than the
  40-bin baseline features (``num_mel_bins``).

Optionally (``kmeans_weight`` > 0) HuBERT's masked cluster prediction is added on top.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech_data.fbank import log_mel_fbank, num_frames, stack_frames
from wav2vec2.masking import span_mask
from wav2vec2.model import Wav2Vec2Model

from .hubert_pretrain import IGNORE, FbankKMeansTargets, MaskedPretrainingModule, normalise_fbank


class LogMelTargets:
    """``(B, L)`` audio -> normalised stacked log-Mel ``(B, T, 2 * bins)`` and a ``(B, T)`` validity mask."""

    def __init__(self, mean_std: np.ndarray, num_mel_bins: int) -> None:
        self.mean_std = np.asarray(mean_std, dtype=np.float32)
        if self.mean_std.shape != (2, num_mel_bins):
            raise ValueError(f"mean_std must have shape (2, {num_mel_bins}), got {self.mean_std.shape}")
        self.num_mel_bins = num_mel_bins

    @property
    def dim(self) -> int:
        return 2 * self.num_mel_bins

    def __call__(self, waveforms: Tensor, lengths: Tensor, num_model_frames: int) -> tuple[Tensor, Tensor]:
        feats = stack_frames(normalise_fbank(log_mel_fbank(waveforms.float(), self.num_mel_bins), self.mean_std))
        B, T, _ = feats.shape
        valid = torch.arange(T, device=feats.device)[None, :] < ((num_frames(lengths) + 1) // 2)[:, None]
        if T >= num_model_frames:
            return feats[:, :num_model_frames], valid[:, :num_model_frames]
        pad = num_model_frames - T
        return F.pad(feats, (0, 0, 0, pad)), F.pad(valid, (0, pad), value=False)


class MaskedReconstructionModule(MaskedPretrainingModule):
    """Masked log-Mel reconstruction from the last layer + front-end reconstruction from h0."""

    frozen_prefixes = ()

    def __init__(
        self,
        model: Wav2Vec2Model,
        targets: LogMelTargets,
        mask_prob: float = 0.5,
        mask_length: int = 5,
        front_weight: float = 1.0,
        kmeans: Optional[FbankKMeansTargets] = None,
        num_clusters: int = 0,
        kmeans_weight: float = 0.0,
        learning_rate: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_updates: int = 50,
        max_updates: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_updates, max_updates)
        if kmeans_weight > 0 and (kmeans is None or num_clusters < 2):
            raise ValueError("kmeans_weight > 0 needs K-means targets and num_clusters >= 2")
        self.model = model
        self.targets = targets
        self.kmeans = kmeans
        width = model.encoder.feature_projection.projection.out_features
        self.mask_embedding = nn.Parameter(torch.empty(width).uniform_())
        self.masked_head = nn.Linear(width, targets.dim)
        self.front_head = nn.Linear(width, targets.dim)
        self.cluster_head = nn.Linear(width, num_clusters) if kmeans_weight > 0 else None
        self.mask_prob, self.mask_length = mask_prob, mask_length
        self.front_weight, self.kmeans_weight = front_weight, kmeans_weight
        self.seed = seed
        self._mask_generator = torch.Generator().manual_seed(seed)

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self]

    def _loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        waveforms, lengths = batch[0], batch[1]
        frame_lengths = self.model.num_frames(lengths)
        T = int(self.model.num_frames(torch.tensor([waveforms.shape[1]]))[0])
        target, valid = self.targets(waveforms, lengths, T)
        masked = span_mask(frame_lengths, T, self.mask_prob, self.mask_length, generator=generator).to(waveforms.device)
        states, _ = self.model.extract_features(waveforms, lengths, frame_mask=masked, mask_embedding=self.mask_embedding)
        on_masked, on_unmasked = masked & valid, ~masked & valid
        loss_masked = F.l1_loss(self.masked_head(states[-1])[on_masked], target[on_masked])
        loss_front = F.l1_loss(self.front_head(states[0])[on_unmasked], target[on_unmasked])
        loss = loss_masked + self.front_weight * loss_front
        logs: dict[str, Tensor | float] = {"loss_masked_l1": loss_masked.detach(), "loss_front_l1": loss_front.detach(),
                                           "masked_fraction": masked.float().sum() / frame_lengths.sum()}
        if self.cluster_head is not None and self.kmeans is not None:
            labels = self.kmeans(waveforms, lengths, T)
            pick = masked & (labels != IGNORE)
            logits = self.cluster_head(states[-1])[pick]
            loss_clusters = F.cross_entropy(logits.float(), labels[pick])
            logs["loss_clusters"] = loss_clusters.detach()
            logs["accuracy_masked"] = (logits.argmax(-1) == labels[pick]).float().mean()
            loss = loss + self.kmeans_weight * loss_clusters
        return loss, logs
