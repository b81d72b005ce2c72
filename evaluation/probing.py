"""A small SUPERB: frozen upstream, learned weighted sum of its layers, two downstream tasks.

Protocol (the same for every upstream, so numbers compare):

* **Features.** The upstream runs once, in eval mode without gradients, over the
  train and test utterances (batched by length); its hidden states ``[h0..hN]`` are kept in
  memory. Each state is layer-normalised per frame (no affine; s3prl's featurizer does the
  same), so that layers of different scales compete fairly in the weighted sum. Because
  the normalisation does not depend on anything learned, it is applied once when caching.
* **Weighted sum.** Each task learns its own ``N + 1`` weights ``w`` (initialised equal), and
  reads ``sum_l softmax(w)_l * LN(h_l)``.
* **Speaker identification (SID).** Mean over the valid frames of the weighted sum, then one
  linear layer to the speakers; cross-entropy; accuracy. The mean commutes with the weighted
  sum, so only the per-layer means ``(N + 1, D)`` of each utterance are cached (exact).
  Train and test must share speakers. The demo corpus does; LibriSpeech's train and test
  speakers are disjoint, so then only test utterances of training speakers are scored, and
  if there are none, a seeded tenth of each speaker's training utterances is held out
  instead (``sid.split`` in the result says which).
* **Phone recognition (PR).** Per frame: the weighted sum, an optional one-hidden-layer
  projection (``pr_hidden`` > 0, ReLU), a linear layer to the units plus the CTC blank;
  CTC loss; greedy decoding (best path, repeats merged, blanks removed); error rate =
  total Levenshtein distance / total reference length. Units are the phones of
  ``<subset>.phones.tsv``; without that file the characters of ``<subset>.trans.tsv``
  (letters and apostrophes, ``|`` between words), so on LibriSpeech the number is a CER.
  Test units never seen in training stay in the references (they count as errors).
  Utterances with fewer frames than CTC needs for their labels are skipped and counted.
* **Intervals.** SID accuracy carries a 95 % Wilson interval; the error rate a 95 % percentile
  bootstrap interval over test utterances (``bootstrap_resamples`` resamples seeded with
  ``seed``); the per-utterance edit counts are stored so other comparisons can be redone.
  See evaluation/stats.py.
* **Determinism.** Heads are initialised from ``torch.manual_seed(seed)`` (one seed per
  task), batches are shuffled by a seeded ``torch.Generator``, epochs are fixed, and the
  upstream is frozen: two runs with the same seed and thread count give identical numbers.

Memory: PR caches every frame of every state in ``cache_dtype`` (float16 by default):
``frames x (N + 1) x D x 2`` bytes, e.g. about 2.3 GB for HuBERT Base on one hour of audio;
``max_train_utterances`` takes a seeded subset for larger corpora.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm
from torch import Tensor, nn

from .stats import bootstrap_ratio_interval, wilson_interval
from .upstream import Upstream

PROBE_KIND = "probe"
BLANK = 0
WORD_BOUNDARY = "|"


# --------------------------------------------------------------------------------------------
# Edit distance and decoding
# --------------------------------------------------------------------------------------------


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1).

    Tokens are compared whole (a multi-character phone is one token); rapidfuzz's C++
    implementation accepts any sequences of hashable tokens.
    """
    from rapidfuzz.distance import Levenshtein

    return int(Levenshtein.distance(list(reference), list(hypothesis)))


def error_rate(references: Sequence[Sequence[Any]], hypotheses: Sequence[Sequence[Any]]) -> float:
    """Corpus-level error rate: sum of edit distances / total reference length."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum(len(r) for r in references)
    if total == 0:
        raise ValueError("references are empty: the error rate is undefined")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / total


def ctc_greedy_decode(log_probs: Tensor, lengths: Tensor, blank: int = BLANK) -> list[list[int]]:
    """Best-path decoding: log_probs ``(B, T, C)``, lengths ``(B,)`` -> unit ids per row."""
    best = log_probs.argmax(-1).cpu()
    results = []
    for row, length in zip(best, lengths.cpu().tolist()):
        path = row[: int(length)].tolist()
        decoded = [token for k, token in enumerate(path) if token != blank and (k == 0 or token != path[k - 1])]
        results.append(decoded)
    return results


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class Utterance:
    index: int  # row of the file list
    utterance_id: str
    num_samples: int
    speaker: Optional[str]
    units: Optional[list[str]]


@dataclass
class Split:
    tsv: Path
    unit: str  # "phone" or "char"
    utterances: list[Utterance]


def char_units(transcript: str) -> list[str]:
    """Characters of an upper-case transcript, ``|`` between words (wav2vec2's CTC alphabet)."""
    words = [w for w in transcript.strip().upper().split() if w]
    units: list[str] = []
    for k, word in enumerate(words):
        if k:
            units.append(WORD_BOUNDARY)
        units.extend(ch for ch in word if ch.isalpha() or ch == "'")
    return units


def read_split(tsv_dir: Path, subset: str, unit: Optional[str] = None) -> Split:
    """Utterances of ``<subset>.tsv`` with speakers (``.spk.tsv``) and units (phones or characters).

    ``unit`` None picks phones when ``<subset>.phones.tsv`` exists, else characters from
    ``<subset>.trans.tsv``. A missing label file leaves that label None (the task is skipped).
    """
    from speech_data.tsv import read_file_list, read_labels

    tsv = tsv_dir / f"{subset}.tsv"
    if not tsv.is_file():
        raise FileNotFoundError(f"file list not found: {tsv} (run prepare_data.py first)")
    files = read_file_list(tsv)
    speakers_path = tsv_dir / f"{subset}.spk.tsv"
    speakers = read_labels(speakers_path) if speakers_path.is_file() else {}
    phones_path, trans_path = tsv_dir / f"{subset}.phones.tsv", tsv_dir / f"{subset}.trans.tsv"
    if unit is None:
        unit = "phone" if phones_path.is_file() else "char"
    if unit not in ("phone", "char"):
        raise ValueError(f"unit must be 'phone' or 'char', got {unit!r}")
    units: dict[str, list[str]] = {}
    source = phones_path if unit == "phone" else trans_path
    if source.is_file():
        for utterance_id, text in read_labels(source).items():
            units[utterance_id] = text.split() if unit == "phone" else char_units(text)
    utterances = []
    for i in range(len(files)):
        utterance_id = files.utterance_id(i)
        utterances.append(Utterance(i, utterance_id, files.num_samples[i], speakers.get(utterance_id), units.get(utterance_id)))
    return Split(tsv, unit, utterances)


def subsample(utterances: list[Utterance], limit: Optional[int], seed: int) -> list[Utterance]:
    """A seeded subset of at most ``limit`` utterances, in file-list order."""
    if limit is None or len(utterances) <= limit:
        return utterances
    chosen = sorted(random.Random(seed).sample(range(len(utterances)), limit))
    return [utterances[i] for i in chosen]


# --------------------------------------------------------------------------------------------
# Feature cache
# --------------------------------------------------------------------------------------------


@dataclass
class Features:
    """Cached upstream outputs of a list of utterances.

    pooled: ``(U, N + 1, D)`` float32, per-layer means of layer-normalised frames;
    frames: one ``(T_u, N + 1, D)`` tensor per utterance (``cache_dtype``), or None.
    """

    pooled: Tensor
    frames: Optional[list[Tensor]]


@torch.no_grad()  # not inference_mode: the cached tensors are inputs of the heads' autograd graphs
def extract_features(
    upstream: Upstream,
    tsv: Path,
    utterances: Sequence[Utterance],
    keep_frames: bool,
    batch_seconds: float = 40.0,
    device: str | torch.device = "cpu",
    cache_dtype: torch.dtype = torch.float16,
) -> Features:
    """Run the frozen upstream once over ``utterances`` (batched by length) and cache its states."""
    from .feature_cache import normalised_batches

    pooled: list[Optional[Tensor]] = [None] * len(utterances)
    frames: list[Optional[Tensor]] = [None] * len(utterances)
    for batch, stacked, frame_lengths in normalised_batches(upstream, tsv, utterances, batch_seconds, device,
                                                            f"features {Path(tsv).name}"):
        for row, k in enumerate(batch):
            valid = stacked[row, : int(frame_lengths[row])]
            pooled[k] = valid.mean(0).cpu()
            if keep_frames:
                frames[k] = valid.to(device="cpu", dtype=cache_dtype, copy=True)  # a copy frees the batch
    return Features(torch.stack(pooled), frames if keep_frames else None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Downstream models
# --------------------------------------------------------------------------------------------


class WeightedSum(nn.Module):
    """``(..., N + 1, D)`` -> ``(..., D)`` with softmax weights over the hidden states."""

    def __init__(self, num_states: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_states))  # equal after the softmax

    def forward(self, states: Tensor) -> Tensor:
        return torch.einsum("...ld,l->...d", states, F.softmax(self.weights, dim=0))

    def normalized(self) -> list[float]:
        return [round(float(w), 4) for w in F.softmax(self.weights.detach(), dim=0)]


class SpeakerHead(nn.Module):
    """Pooled states ``(B, N + 1, D)`` -> speaker logits ``(B, S)``."""

    def __init__(self, num_states: int, dim: int, num_speakers: int) -> None:
        super().__init__()
        self.featurizer = WeightedSum(num_states)
        self.linear = nn.Linear(dim, num_speakers)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.linear(self.featurizer(pooled))


class CTCHead(nn.Module):
    """Frame states ``(B, T, N + 1, D)`` -> log-probabilities ``(B, T, units + 1)``; index 0 is blank."""

    def __init__(self, num_states: int, dim: int, num_units: int, hidden: int = 0) -> None:
        super().__init__()
        self.featurizer = WeightedSum(num_states)
        self.projection = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU()) if hidden > 0 else nn.Identity()
        self.output = nn.Linear(hidden if hidden > 0 else dim, num_units + 1)

    def forward(self, frames: Tensor) -> Tensor:
        return F.log_softmax(self.output(self.projection(self.featurizer(frames))), dim=-1)


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


@dataclass
class ProbeConfig:
    """Everything that fixes a probing run (stored in the result)."""

    seed: int = 0
    batch_size: int = 16
    sid_epochs: int = 40
    sid_learning_rate: float = 5e-3
    pr_epochs: int = 40
    pr_learning_rate: float = 2e-2  # a linear CTC head on frozen features learns slowly at 1e-3
    pr_hidden: int = 0  # 0: linear CTC head
    max_train_utterances: Optional[int] = None
    max_test_utterances: Optional[int] = None
    extract_batch_seconds: float = 40.0
    cache_dtype: str = "float16"
    device: str = "cpu"
    unit: Optional[str] = None  # None: phones if available, else characters
    tasks: tuple[str, ...] = ("sid", "pr")
    feature_cache: Optional[str] = None  # a folder: PR frames memory-mapped on disk (evaluation/feature_cache.py)
    memory_bound_gb: Optional[float] = None  # refuse to extract when the features would need more RAM
    bootstrap_resamples: int = 1000  # for the PER / CER interval (seeded with ``seed``)


def _batches(count: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    order = torch.randperm(count, generator=generator)
    return [order[i:i + batch_size] for i in range(0, count, batch_size)]


def train_sid(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_speakers: int,
              config: ProbeConfig) -> tuple[float, list[float], float]:
    """Train the speaker head; returns (test accuracy, layer weights, final train loss)."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    head = SpeakerHead(train_x.shape[1], train_x.shape[2], num_speakers).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.sid_learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    train_x, train_y = train_x.to(device), train_y.to(device)
    loss = torch.zeros(())
    for _ in tqdm(range(config.sid_epochs), desc="speaker-ID probe", unit="epoch", mininterval=2.0):
        for index in _batches(len(train_x), config.batch_size, generator):
            loss = F.cross_entropy(head(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    with torch.no_grad():
        predictions = head(test_x.to(device)).argmax(-1).cpu()
    accuracy = float((predictions == test_y).float().mean())
    return accuracy, head.featurizer.normalized(), float(loss.detach())


def _pad_frames(frames: Sequence[Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    lengths = torch.tensor([f.shape[0] for f in frames])
    padded = torch.zeros(len(frames), int(lengths.max()), *frames[0].shape[1:])
    for row, f in enumerate(frames):
        padded[row, : f.shape[0]] = f
    return padded.to(device), lengths


def train_pr(train_frames: Sequence[Tensor], train_targets: Sequence[list[int]], test_frames: Sequence[Tensor],
             num_units: int, config: ProbeConfig) -> tuple[list[list[int]], list[float], float]:
    """Train the CTC head; returns (greedy test hypotheses, layer weights, final train loss)."""
    device = torch.device(config.device)
    # Half-precision caches are widened once here, not in every step of every epoch (a disk
    # cache, ``lazy``, is read and widened batch by batch instead).
    if not getattr(train_frames, "lazy", False):
        train_frames = [f.float() for f in train_frames]
        test_frames = [f.float() for f in test_frames]
    torch.manual_seed(config.seed + 1)
    head = CTCHead(train_frames[0].shape[1], train_frames[0].shape[2], num_units, config.pr_hidden).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=config.pr_learning_rate)
    generator = torch.Generator().manual_seed(config.seed + 1)
    loss = torch.zeros(())
    for _ in tqdm(range(config.pr_epochs), desc="phone-recognition probe", unit="epoch", mininterval=2.0):
        for index in _batches(len(train_frames), config.batch_size, generator):
            frames, lengths = _pad_frames([train_frames[i] for i in index], device)
            targets = [train_targets[i] for i in index]
            target_lengths = torch.tensor([len(t) for t in targets])
            flat = torch.tensor([u for t in targets for u in t], dtype=torch.long)
            log_probs = head(frames)  # (B, T, C)
            loss = F.ctc_loss(log_probs.transpose(0, 1), flat.to(device), lengths.to(device), target_lengths.to(device),
                              blank=BLANK, reduction="mean", zero_infinity=True)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    head.eval()
    hypotheses: list[list[int]] = []
    with torch.no_grad():
        for start in range(0, len(test_frames), config.batch_size):
            frames, lengths = _pad_frames(test_frames[start:start + config.batch_size], device)
            hypotheses.extend(ctc_greedy_decode(head(frames), lengths))
    return hypotheses, head.featurizer.normalized(), float(loss.detach())


def ctc_feasible(num_frames: int, units: Sequence[str]) -> bool:
    """CTC needs one frame per unit plus one blank between equal neighbours."""
    repeats = sum(1 for a, b in zip(units, units[1:]) if a == b)
    return len(units) > 0 and num_frames >= len(units) + repeats


# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------


def _sid_split(train: list[Utterance], test: list[Utterance], seed: int) -> tuple[list[int], list[int], list[int], list[int], str]:
    """Indices (into train / test lists) for SID training and scoring, and how they were chosen.

    Returns (train_from_train, test_from_train, test_from_test, dropped_test, split name).
    """
    train_ids = [k for k, u in enumerate(train) if u.speaker is not None]
    known = {train[k].speaker for k in train_ids}
    scored = [k for k, u in enumerate(test) if u.speaker in known]
    dropped = [k for k, u in enumerate(test) if u.speaker is not None and u.speaker not in known]
    if scored:
        name = "test subset" if not dropped else "test subset, utterances of training speakers only"
        return train_ids, [], scored, dropped, name
    # No shared speakers (LibriSpeech): hold out a seeded tenth of each speaker's utterances.
    rng = random.Random(seed)
    by_speaker: dict[str, list[int]] = {}
    for k in train_ids:
        by_speaker.setdefault(str(train[k].speaker), []).append(k)
    held_out: list[int] = []
    for speaker in sorted(by_speaker):
        items = by_speaker[speaker]
        if len(items) < 2:
            continue
        held_out.extend(rng.sample(items, max(1, len(items) // 10)))
    held = set(held_out)
    return [k for k in train_ids if k not in held], sorted(held), [], dropped, "held-out tenth of the train subset (no shared speakers)"


def run_probe(upstream: Upstream, tsv_dir: Path, train_subset: str = "train100", test_subset: str = "test-clean",
              config: Optional[ProbeConfig] = None, log: Any = print) -> dict[str, Any]:
    """Extract features once, train and score the tasks; returns the JSON-able result."""
    config = config or ProbeConfig()
    started = time.perf_counter()
    train_split = read_split(Path(tsv_dir), train_subset, config.unit)
    test_split = read_split(Path(tsv_dir), test_subset, train_split.unit)
    train = subsample(train_split.utterances, config.max_train_utterances, config.seed)
    test = subsample(test_split.utterances, config.max_test_utterances, config.seed)
    want_pr = "pr" in config.tasks and any(u.units for u in train)
    cache_dtype = getattr(torch, config.cache_dtype)
    log(f"probe {upstream.name}: extracting {len(train)} train / {len(test)} test utterances "
        f"({upstream.num_hidden_states} states x {upstream.hidden_dim} dims)")
    from .feature_cache import extract_bounded

    def bounded(name: str, split: Any, utts: list) -> Features:
        return extract_bounded(
            upstream, split.tsv, utts, want_pr, config.extract_batch_seconds, config.device, cache_dtype,
            Path(config.feature_cache) / name if config.feature_cache else None, config.memory_bound_gb, log,
            extract_in_memory=lambda: extract_features(upstream, split.tsv, utts, want_pr, config.extract_batch_seconds,
                                                       config.device, cache_dtype),
            make_features=lambda pooled, cache: Features(pooled, cache))  # type: ignore[arg-type]

    train_features, test_features = bounded("train", train_split, train), bounded("test", test_split, test)
    extracted = time.perf_counter() - started
    result: dict[str, Any] = {
        "kind": PROBE_KIND, "version": 1, "upstream": upstream.name, "source": upstream.info.source,
        "family": upstream.family, "num_params": upstream.num_params(), "num_hidden_states": upstream.num_hidden_states,
        "hidden_dim": upstream.hidden_dim, "tsv_dir": str(tsv_dir), "train_subset": train_subset, "test_subset": test_subset,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "threads": torch.get_num_threads(), "notes": list(upstream.info.notes),
    }
    if "sid" in config.tasks:
        result["sid"] = _run_sid(train, test, train_features, test_features, config)
    if want_pr:
        result["pr"] = _run_pr(train, test, train_features, test_features, train_split.unit, config)
    result["seconds"] = {"extract": round(extracted, 2), "total": round(time.perf_counter() - started, 2)}
    return result


def _run_sid(train: list[Utterance], test: list[Utterance], train_features: Features, test_features: Features,
             config: ProbeConfig) -> dict[str, Any]:
    fit_ids, held_ids, test_ids, dropped, split = _sid_split(train, test, config.seed)
    if not fit_ids or not (held_ids or test_ids):
        return {"skipped": "no speaker labels (.spk.tsv) for the train and test utterances"}
    speakers = sorted({str(train[k].speaker) for k in fit_ids})
    label = {s: i for i, s in enumerate(speakers)}
    train_x = train_features.pooled[fit_ids]
    train_y = torch.tensor([label[str(train[k].speaker)] for k in fit_ids])
    if held_ids:
        test_x = train_features.pooled[held_ids]
        test_y = torch.tensor([label[str(train[k].speaker)] for k in held_ids])
    else:
        test_x = test_features.pooled[test_ids]
        test_y = torch.tensor([label[str(test[k].speaker)] for k in test_ids])
    accuracy, weights, loss = train_sid(train_x, train_y, test_x, test_y, len(speakers), config)
    majority = float(torch.bincount(test_y, minlength=len(speakers)).max()) / len(test_y)
    interval = wilson_interval(round(accuracy * len(test_y)), len(test_y))
    return {"accuracy": accuracy, "interval": interval.as_dict(), "num_speakers": len(speakers), "chance": 1.0 / len(speakers), "majority": majority,
            "num_train": len(fit_ids), "num_test": len(test_y), "num_test_dropped": len(dropped), "split": split,
            "layer_weights": weights, "final_train_loss": loss}


def _run_pr(train: list[Utterance], test: list[Utterance], train_features: Features, test_features: Features,
            unit: str, config: ProbeConfig) -> dict[str, Any]:
    assert train_features.frames is not None and test_features.frames is not None
    vocabulary = sorted({token for u in train if u.units for token in u.units})
    index = {token: i + 1 for i, token in enumerate(vocabulary)}  # 0 is the CTC blank
    fit = [k for k, u in enumerate(train) if u.units and ctc_feasible(train_features.frames[k].shape[0], u.units)]
    skipped_train = sum(1 for u in train if u.units) - len(fit)
    scored = [k for k, u in enumerate(test) if u.units]
    if not fit or not scored:
        return {"skipped": f"no usable {unit} labels in the train or test subset"}
    from .feature_cache import select

    train_frames = select(train_features.frames, fit)
    targets = [[index[t] for t in train[k].units] for k in fit]  # type: ignore[union-attr]
    test_frames = select(test_features.frames, scored)
    hypotheses, weights, loss = train_pr(train_frames, targets, test_frames, len(vocabulary), config)
    references = [test[k].units for k in scored]
    decoded = [[vocabulary[i - 1] for i in h] for h in hypotheses]
    rate = error_rate(references, decoded)  # type: ignore[arg-type]
    # Per-utterance counts, kept in the result so intervals and paired comparisons can be redone.
    errors = [edit_distance(r, h) for r, h in zip(references, decoded)]  # type: ignore[arg-type]
    lengths = [len(r) for r in references]  # type: ignore[arg-type]
    interval = bootstrap_ratio_interval(errors, lengths, config.bootstrap_resamples, config.seed)
    unseen = sum(1 for r in references for t in r if t not in index)  # type: ignore[union-attr]
    return {"error_rate": rate, "interval": {**interval.as_dict(), "resamples": config.bootstrap_resamples},
            "utterance_errors": errors, "utterance_lengths": lengths,
            "metric": "PER" if unit == "phone" else "CER", "unit": unit,
            "num_units": len(vocabulary), "num_train": len(fit), "num_train_skipped": skipped_train,
            "num_test": len(scored), "unseen_test_units": unseen, "layer_weights": weights, "final_train_loss": loss,
            "example": {"reference": " ".join(references[0]), "hypothesis": " ".join(decoded[0])}}  # type: ignore[arg-type]


def summary_line(result: dict[str, Any]) -> str:
    """One line: both numbers and the learned layer weights."""
    parts = [f"{result['upstream']} ({result['num_params'] / 1e6:.2f}M params)"]
    sid = result.get("sid")
    if sid and "accuracy" in sid:
        parts.append(f"SID acc {100 * sid['accuracy']:.2f}%{_interval(sid)} ({sid['num_speakers']} speakers, "
                     f"{sid['num_test']} test utterances, chance {100 * sid['chance']:.1f}%)")
    pr = result.get("pr")
    if pr and "error_rate" in pr:
        parts.append(f"{pr['metric']} {100 * pr['error_rate']:.2f}%{_interval(pr)} ({pr['num_test']} test utterances)")
    line = " | ".join(parts)
    weights = []
    if sid and "layer_weights" in sid:
        weights.append("SID " + _weights(sid["layer_weights"]))
    if pr and "layer_weights" in pr:
        weights.append(f"{pr['metric']} " + _weights(pr["layer_weights"]))
    return line + ("\n  layer weights (h0..hN): " + "; ".join(weights) if weights else "")


def _interval(task: dict[str, Any]) -> str:
    interval = task.get("interval")
    if not interval:
        return ""
    return f" [{100 * interval['low']:.2f}, {100 * interval['high']:.2f}] ({100 * interval['confidence']:.0f}% {interval['method']})"


def _weights(values: Sequence[float]) -> str:
    return "[" + " ".join(f"{v:.2f}" for v in values) + "]"


def is_probe_result(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == PROBE_KIND
