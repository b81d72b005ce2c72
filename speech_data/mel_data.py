"""Mel feature / cluster-label batches for MelHuBERT training, over manifest csv files.

Data: one or more manifests (``speech_data.manifest``: ``file_path,label_path,length``; features
float32 ``[T, 40]`` normalised log-Mel at 10 ms, labels int64, ``length`` = T in 10 ms frames).

* 10 ms: frames as stored; labels must number T.
* 20 ms: pairs of frames stacked to ``[ceil(T/2), 80]`` (``speech_data.fbank.stack_frames``);
  labels at 10 ms are halved (every even frame's), labels already at 20 ms are used as is.
* Length filter ``max_timestep`` (the original's, on the csv ``length`` in 10 ms frames):
  > 0 keeps utterances shorter than it, < 0 keeps those longer than its magnitude, 0 keeps all.
* Random crop to ``sequence_length`` model frames, with the **same offset** for features and
  labels (offsets drawn per epoch by the sampler from ``(seed, epoch)``).
* Batching: the original's buckets, ``batch_size`` consecutive utterances in length order
  (longest first), or with ``frames_per_batch`` a budget of padded frames per batch. Batches
  are shuffled per epoch, sharded across DDP ranks and resumable mid-epoch: both samplers
  are ``speech_data.sampler.LengthBucketBatchSampler`` working in frames (its "sample rate"
  is the frame rate), loaded through ``speech_data.datamodule.ResumableDataLoader``.

Batches are :class:`MelBatch` ``(features [B, T, F], labels [B, T] (-100 = padding),
pad_mask [B, T] float (1 = real frame), lengths [B], indices [B])``; the first three are the
original's ``(feat, label, pad_mask)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from speech_data.fbank import halve_labels, stack_frames, stacked_num_frames
from speech_data.manifest import ManifestRow, read_manifest
from speech_data.datamodule import ResumableDataLoader
from speech_data.dataset import UtteranceSlice
from speech_data.sampler import LengthBucketBatchSampler

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
FRAMES_PER_SECOND_10MS = 100
MEL_BINS = 40


class MelDataError(ValueError):
    """A feature / label file or manifest that does not fit; the message names it."""


class MelItem(NamedTuple):
    features: Tensor  # float32 [T, F]
    labels: Tensor  # int64 [T]
    index: int  # row of the dataset


class MelBatch(NamedTuple):
    """One zero-padded batch; ``features, labels, pad_mask`` are the model's inputs."""

    features: Tensor  # float32 [B, T, F]
    labels: Tensor  # int64 [B, T], -100 on padding
    pad_mask: Tensor  # float32 [B, T], 1 = real frame
    lengths: Tensor  # int64 [B], real frames per row
    indices: Tensor  # int64 [B], dataset rows

    def to(self, device: torch.device | str) -> "MelBatch":
        return MelBatch(*(t.to(device) for t in self))


def check_frame_period(frame_period_ms: int) -> int:
    if frame_period_ms not in (10, 20):
        raise ValueError(f"frame period must be 10 or 20 ms, got {frame_period_ms}")
    return frame_period_ms


def read_manifests(paths: Sequence[str | Path]) -> list[ManifestRow]:
    """Rows of every csv in order; errors name a missing file."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows: list[ManifestRow] = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path} (relative paths are read from {Path.cwd()})")
        rows.extend(read_manifest(path))
    return rows


def filter_by_length(rows: Sequence[ManifestRow], max_timestep: int) -> list[ManifestRow]:
    """The original's ``max_timestep`` filter on the csv length (10 ms frames)."""
    if max_timestep > 0:
        return [row for row in rows if row.length < max_timestep]
    if max_timestep < 0:
        return [row for row in rows if row.length > -max_timestep]
    return list(rows)


class MelDataset(Dataset[MelItem]):
    """Utterances of a manifest as model-rate features and labels.

    ``dataset[UtteranceSlice(index, offset, num_frames)]`` reads a crop (model frames);
    ``dataset[index]`` the whole utterance. ``lengths`` are model frames per utterance.
    """

    def __init__(self, rows: Sequence[ManifestRow], frame_period_ms: int = 20, feature_dim: int = MEL_BINS) -> None:
        self.rows = list(rows)
        self.frame_period_ms = check_frame_period(frame_period_ms)
        self.feature_dim = feature_dim
        stored = np.array([row.length for row in self.rows], dtype=np.int64)
        self.lengths = stacked_num_frames(stored) if frame_period_ms == 20 else stored

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def frames_per_second(self) -> int:
        return 1000 // self.frame_period_ms

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Whole utterance ``index``: features ``[T, F]`` float32 and labels ``[T]`` int64 at the model rate."""
        row = self.rows[index]
        features = np.load(row.file_path)
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise MelDataError(f"{row.file_path}: expected features [T, {self.feature_dim}], got {list(features.shape)}")
        if features.shape[0] != row.length:
            raise MelDataError(
                f"{row.file_path}: {features.shape[0]} frames but the manifest length is {row.length} "
                "(the length column must count 10 ms feature frames)"
            )
        labels = np.load(row.label_path)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise MelDataError(f"{row.label_path}: expected integer labels [T], got {labels.dtype} {list(labels.shape)}")
        features = features.astype(np.float32, copy=False)
        if self.frame_period_ms == 20:
            features = stack_frames(features)
            try:
                labels = halve_labels(labels, features.shape[0])
            except ValueError as error:
                raise MelDataError(f"{row.label_path}: {error}") from None
        elif len(labels) != features.shape[0]:
            raise MelDataError(f"{row.label_path}: {len(labels)} labels for {features.shape[0]} frames of {row.file_path}")
        return features, labels.astype(np.int64, copy=False)

    def __getitem__(self, item: UtteranceSlice | int) -> MelItem:
        if isinstance(item, UtteranceSlice):
            index, offset, count = item
        else:
            index, offset, count = int(item), 0, int(self.lengths[int(item)])
        features, labels = self.load(index)
        # One offset for both, so frame t keeps its own label after the crop.
        features = features[offset : offset + count]
        labels = labels[offset : offset + count]
        return MelItem(torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(np.ascontiguousarray(labels)), index)


def collate_mel(items: Sequence[MelItem]) -> MelBatch:
    """Zero-pad features, pad labels with -100, build the float pad mask."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    lengths = torch.tensor([item.features.shape[0] for item in items], dtype=torch.long)
    T, dim = int(lengths.max()), items[0].features.shape[1]
    features = torch.zeros(len(items), T, dim, dtype=torch.float32)
    labels = torch.full((len(items), T), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        features[row, : len(item.features)] = item.features
        labels[row, : len(item.labels)] = item.labels
    pad_mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    return MelBatch(features, labels, pad_mask, lengths, torch.tensor([item.index for item in items], dtype=torch.long))


class BucketBatchSampler(LengthBucketBatchSampler):
    """The original's buckets: ``batch_size`` consecutive utterances in length order, longest first.

    Everything else (crop offsets per epoch, shuffled batch order, DDP sharding, resume state)
    is ``LengthBucketBatchSampler``'s, in frames. Only the packing differs.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, *, batch_size: int, frames_per_second: int,
                 max_frames: int | None, **kwargs: Any) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.batch_size = batch_size
        lengths = np.asarray(lengths, dtype=np.int64)
        longest = int(lengths.max()) if lengths.size else 1
        if max_frames is not None:
            longest = min(longest, max_frames)
        # A budget every bucket fits (+1 frame against float rounding); packing ignores it.
        seconds = (batch_size * longest + 1) / frames_per_second
        super().__init__(lengths, seconds_per_batch=seconds, sample_rate=frames_per_second,
                         max_sample_size=max_frames, min_sample_size=1, **kwargs)

    def _pack(self, kept: np.ndarray) -> list[np.ndarray]:
        cropped = self.cropped_lengths[kept]
        tie_break = np.random.default_rng(self.seed).permutation(kept.size) if self.training else np.arange(kept.size)
        order = kept[np.lexsort((tie_break, -cropped))]
        return [order[start : start + self.batch_size] for start in range(0, order.size, self.batch_size)]


class MelDataModule(L.LightningDataModule):
    """Train (and optional validation) loaders over manifest csvs.

    Args:
        train_sets: manifest csv paths (the runner's ``datarc.sets``).
        valid_sets: manifests for validation (fixed order, centred crops, no length filter).
        frame_period_ms: 10 or 20 (stacked frames, halved labels).
        batch_size: utterances per bucket (``datarc.train_batch_size``).
        frames_per_batch: instead of fixed buckets, a budget of padded model frames per batch.
        sequence_length: crop length in model frames (``task.sequence_length``); None: no crop.
        max_timestep: the original's length filter (10 ms frames), see the module docstring.
        num_workers: DataLoader workers.
        seed: batch order and crop offsets per epoch.
        feature_dim: dims per stored 10 ms frame.
    """

    def __init__(
        self,
        train_sets: Sequence[str | Path],
        valid_sets: Sequence[str | Path] | None = None,
        *,
        frame_period_ms: int = 20,
        batch_size: int = 4,
        frames_per_batch: int | None = None,
        sequence_length: int | None = None,
        max_timestep: int = 0,
        num_workers: int = 0,
        seed: int = 0,
        feature_dim: int = MEL_BINS,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        # Plain values only: Lightning stores these in checkpoints read with weights_only=True.
        self.save_hyperparameters({
            "train_sets": [str(p) for p in train_sets],
            "valid_sets": None if not valid_sets else [str(p) for p in valid_sets],
            "frame_period_ms": check_frame_period(frame_period_ms),
            "batch_size": int(batch_size),
            "frames_per_batch": None if frames_per_batch is None else int(frames_per_batch),
            "sequence_length": None if sequence_length is None else int(sequence_length),
            "max_timestep": int(max_timestep),
            "num_workers": int(num_workers),
            "seed": int(seed),
            "feature_dim": int(feature_dim),
            "pin_memory": bool(pin_memory),
        })
        self.train_set: MelDataset | None = None
        self.valid_set: MelDataset | None = None
        self.train_sampler: LengthBucketBatchSampler | None = None

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            rows = read_manifests(hp.train_sets)
            kept = filter_by_length(rows, hp.max_timestep)
            logger.info("max_timestep %d keeps %d of %d utterances", hp.max_timestep, len(kept), len(rows))
            if not kept:
                raise MelDataError(f"no utterance of {', '.join(hp.train_sets)} passes max_timestep={hp.max_timestep} "
                                   f"(lengths are 10 ms frames; > 0 keeps shorter, < 0 keeps longer utterances)")
            self.train_set = MelDataset(kept, hp.frame_period_ms, hp.feature_dim)
        if self.valid_set is None and hp.valid_sets and stage in (None, "fit", "validate"):
            self.valid_set = MelDataset(read_manifests(hp.valid_sets), hp.frame_period_ms, hp.feature_dim)

    # -- trainer facts (0 / 1 / epoch 0 outside a trainer) ------------------------------------
    def _trainer(self) -> L.Trainer | None:
        return getattr(self, "trainer", None)

    def _rank_and_world_size(self) -> tuple[int, int]:
        trainer = self._trainer()
        if trainer is None:
            return 0, 1
        world_size = int(trainer.world_size)
        connector = getattr(trainer, "_accelerator_connector", None)
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError("MelDataModule shards batches itself: create the Trainer with use_distributed_sampler=False")
        return int(trainer.global_rank), world_size

    def _current_epoch(self) -> int:
        trainer = self._trainer()
        return 0 if trainer is None else int(trainer.current_epoch)

    def _consumed_batches(self) -> int | None:
        trainer = self._trainer()
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    # -- loaders ------------------------------------------------------------------------------
    def sampler(self, dataset: MelDataset, *, training: bool) -> LengthBucketBatchSampler:
        hp = self.hparams
        rank, world_size = self._rank_and_world_size()
        common = dict(training=training, seed=hp.seed, num_replicas=world_size, rank=rank)
        fps = dataset.frames_per_second
        if hp.frames_per_batch is not None:
            return LengthBucketBatchSampler(dataset.lengths, seconds_per_batch=hp.frames_per_batch / fps, sample_rate=fps,
                                            max_sample_size=hp.sequence_length, min_sample_size=1, **common)
        return BucketBatchSampler(dataset.lengths, batch_size=hp.batch_size, frames_per_second=fps,
                                  max_frames=hp.sequence_length, **common)

    def _loader(self, dataset: MelDataset, sampler: LengthBucketBatchSampler, training: bool) -> DataLoader:
        workers = self.hparams.num_workers
        # Own generator: a new iterator (each epoch) draws its worker base seed from it, not from
        # the global RNG, whose state the checkpoints restore for exact resume.
        options: dict[str, Any] = dict(batch_sampler=sampler, num_workers=workers, collate_fn=collate_mel,
                                       pin_memory=self.hparams.pin_memory, persistent_workers=workers > 0,
                                       generator=torch.Generator().manual_seed(self.hparams.seed))
        if training:
            return ResumableDataLoader(dataset, consumed_batches=self._consumed_batches, **options)
        return DataLoader(dataset, **options)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        sampler = self.sampler(self.train_set, training=True)
        sampler.epoch_source = self._current_epoch  # Lightning's set_epoch does not reach batch samplers
        self.train_sampler = sampler
        return self._loader(self.train_set, sampler, training=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup("validate")
        if self.valid_set is None:
            return []
        return self._loader(self.valid_set, self.sampler(self.valid_set, training=False), training=False)
