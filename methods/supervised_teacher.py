"""HuBERT masked prediction with auxiliary supervised heads: the demo teacher's objective.

A tiny model pre-trained for a few minutes on a 2-core CPU does not learn, from masked
prediction alone, representations that beat the log-Mel features it starts from (the demo's
own measurement: speaker ID 50 % vs 82 %, PER 70 % vs 50 %). A teacher below fbank makes the
compression claim unmeasurable, so the demo teacher adds two supervised heads trained on the
training split only (the probes' test split is never seen):

- speaker identity: mean-pooled states of ``speaker_layer`` -> linear -> cross-entropy;
- phones: states of ``phone_layer`` -> linear -> CTC over the phone inventory of the split.

Reports that use such a teacher say so: it is a supervised-aided teacher, not a purely
self-supervised one. Both heads belong to the training module, not to the saved model, so the
teacher file holds only the HuBERT architecture (students distil its hidden states, as usual).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wav2vec2.model import Wav2Vec2Model

from methods.hubert_pretrain import FbankKMeansTargets, MaskedPredictionModule

BLANK = 0


@dataclass
class UtteranceLabels:
    """Speaker and phone labels of a file list, by utterance id.

    ``speakers``: utterance id -> speaker index; ``phones``: utterance id -> phone indices
    (1-based, 0 is the CTC blank); ``num_samples``: utterance id -> length in the file list,
    so a randomly cropped utterance (whose transcript no longer matches) is left out of CTC.
    """

    speakers: dict[str, int]
    phones: dict[str, list[int]]
    num_samples: dict[str, int]
    speaker_names: list[str] = field(default_factory=list)
    phone_names: list[str] = field(default_factory=list)

    @property
    def num_speakers(self) -> int:
        return len(self.speaker_names)

    @property
    def num_phone_classes(self) -> int:
        """Phones plus the blank."""
        return len(self.phone_names) + 1


def _read_pairs(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (the supervised demo teacher needs speaker and phone labels)")
    pairs: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        key, sep, value = line.partition("\t")
        if not sep or not value.strip():
            raise ValueError(f"{path}:{number}: expected 'utterance_id<TAB>value', got {line!r}")
        pairs[key] = value.strip()
    return pairs


def read_labels(tsv_dir: Path, subset: str) -> UtteranceLabels:
    """Labels of ``<subset>.tsv`` from ``<subset>.spk.tsv`` and ``<subset>.phones.tsv``.

    Raises ValueError naming the file when an utterance of the list has no speaker or no phones.
    """
    listing = (tsv_dir / f"{subset}.tsv").read_text().splitlines()
    num_samples = {Path(line.split("\t")[0]).stem: int(line.split("\t")[1]) for line in listing[1:] if line.strip()}
    speaker_of = _read_pairs(tsv_dir / f"{subset}.spk.tsv")
    phones_of = _read_pairs(tsv_dir / f"{subset}.phones.tsv")
    for name, table in (("spk", speaker_of), ("phones", phones_of)):
        missing = sorted(set(num_samples) - set(table))
        if missing:
            raise ValueError(f"{tsv_dir / f'{subset}.{name}.tsv'}: no label for {len(missing)} utterance(s) of "
                             f"{subset}.tsv, e.g. {missing[0]}")
    speaker_names = sorted({speaker_of[u] for u in num_samples})
    phone_names = sorted({p for u in num_samples for p in phones_of[u].split()})
    speaker_index = {name: i for i, name in enumerate(speaker_names)}
    phone_index = {name: i + 1 for i, name in enumerate(phone_names)}
    return UtteranceLabels(
        speakers={u: speaker_index[speaker_of[u]] for u in num_samples},
        phones={u: [phone_index[p] for p in phones_of[u].split()] for u in num_samples},
        num_samples=num_samples, speaker_names=speaker_names, phone_names=phone_names)


def ctc_frames_needed(units: list[int]) -> int:
    """Frames a CTC alignment of ``units`` needs: one per unit plus a blank between repeats."""
    return len(units) + sum(a == b for a, b in zip(units, units[1:]))


class SupervisedMaskedPredictionModule(MaskedPredictionModule):
    """Masked prediction (see ``MaskedPredictionModule``) + ``speaker_weight`` x speaker CE
    + ``phone_weight`` x phone CTC, all from one forward pass: each utterance is drawn for the
    supervised heads with probability ``supervised_fraction`` and then left unmasked (it still
    adds to the unmasked-frame prediction loss); the others are masked as usual.

    Utterances without labels (e.g. a validation list) only get the masked-prediction loss.
    """

    def __init__(self, model: Wav2Vec2Model, targets: FbankKMeansTargets, num_clusters: int, labels: UtteranceLabels,
                 speaker_layer: int, phone_layer: int, speaker_weight: float = 1.0, phone_weight: float = 1.0,
                 supervised_fraction: float = 0.5, **masked_prediction: Any) -> None:
        super().__init__(model, targets, num_clusters, **masked_prediction)
        if not 0.0 <= supervised_fraction <= 1.0:
            raise ValueError(f"supervised_fraction must be in [0, 1], got {supervised_fraction}")
        self.supervised_fraction = supervised_fraction
        num_layers = model.num_layers
        for name, layer in (("speaker_layer", speaker_layer), ("phone_layer", phone_layer)):
            if not 1 <= layer <= num_layers:
                raise ValueError(f"{name} must be in 1..{num_layers}, got {layer}")
        width = model.encoder.feature_projection.projection.out_features
        self.labels = labels
        self.speaker_layer, self.phone_layer = speaker_layer, phone_layer
        self.speaker_weight, self.phone_weight = speaker_weight, phone_weight
        self.speaker_head = nn.Linear(width, labels.num_speakers)
        self.phone_head = nn.Linear(width, labels.num_phone_classes)

    def _loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor | float]]:
        utterance_ids = batch[3]
        lengths = batch[1]
        # Rows for the supervised heads are left unmasked: a masked frame carries no speaker or
        # phone evidence of its own, and pooling or CTC over mostly masked frames learns little.
        chosen = torch.rand(len(utterance_ids), generator=generator) < self.supervised_fraction
        chosen &= torch.tensor([u in self.labels.speakers for u in utterance_ids])
        loss, logs, states, frame_lengths = self._masked_prediction(batch, generator, unmasked_rows=chosen)
        known = [row for row in range(len(utterance_ids)) if bool(chosen[row])]
        logs["supervised_utterances"] = float(len(known))
        if not known:
            return loss, logs
        rows = torch.tensor(known, device=lengths.device)
        # Speaker: mean over each utterance's valid frames.
        speaker_states = states[self.speaker_layer][rows]
        valid = torch.arange(speaker_states.shape[1], device=rows.device)[None, :] < frame_lengths[rows][:, None]
        pooled = (speaker_states * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        speaker_logits = self.speaker_head(pooled)
        speaker_targets = torch.tensor([self.labels.speakers[utterance_ids[r]] for r in known], device=rows.device)
        speaker_loss = F.cross_entropy(speaker_logits.float(), speaker_targets)
        loss = loss + self.speaker_weight * speaker_loss
        logs["loss_speaker"] = speaker_loss.detach()
        logs["accuracy_speaker"] = (speaker_logits.argmax(-1) == speaker_targets).float().mean()
        # Phones: CTC only on uncropped utterances, whose transcript matches the audio.
        whole = [r for r in known if int(lengths[r]) == self.labels.num_samples[utterance_ids[r]]]
        feasible = [r for r in whole if ctc_frames_needed(self.labels.phones[utterance_ids[r]]) <= int(frame_lengths[r])]
        # Counted, so a corpus whose phone rate exceeds the frame rate is seen in the logs.
        logs["ctc_utterances"] = float(len(feasible))
        logs["ctc_infeasible"] = float(len(whole) - len(feasible))
        whole = feasible
        if whole:
            whole_rows = torch.tensor(whole, device=rows.device)
            log_probs = F.log_softmax(self.phone_head(states[self.phone_layer][whole_rows]).float(), dim=-1)
            targets = [torch.tensor(self.labels.phones[utterance_ids[r]]) for r in whole]
            phone_loss = F.ctc_loss(log_probs.transpose(0, 1), torch.cat(targets).to(rows.device),
                                    frame_lengths[whole_rows], torch.tensor([len(t) for t in targets]),
                                    blank=BLANK, reduction="mean")
            loss = loss + self.phone_weight * phone_loss
            logs["loss_phone_ctc"] = phone_loss.detach()
        return loss, logs
