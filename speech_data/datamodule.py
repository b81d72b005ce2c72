"""Lightning 2.x data module: length-bucketed, DDP-sharded, resumable audio batches.

The batch sampler shards data across ranks itself, so the Trainer must not insert its own
``DistributedSampler``::

    trainer = lightning.Trainer(..., use_distributed_sampler=False)

(``train_dataloader`` raises a ValueError saying so when it finds the setting on with more
than one process.) Rank and world size are read from ``self.trainer`` when the module is
attached to one, else 0 and 1. Validation is sharded too, every utterance exactly once across
ranks, so log validation metrics with ``sync_dist=True`` (or reduce them yourself).

The training sampler's epoch follows ``trainer.current_epoch``. The training loader is a
:class:`ResumableDataLoader`: Lightning saves its position (epoch, batches consumed) in the
checkpoint's fit-loop state, so a mid-epoch resume continues with the next unseen batch
instead of repeating the epoch's start.

Batches are :class:`~speech_data.collate.AudioBatch` ``(waveforms [B, T], lengths [B],
indices [B], utterance_ids)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from speech_data.collate import collate_audio
from speech_data.dataset import AudioDataset
from speech_data.sampler import CropMode, LengthBucketBatchSampler


class ResumableDataLoader(DataLoader):
    """A DataLoader whose batch-sampler position Lightning saves with the fit loop's state.

    Lightning checkpoints any train loader that has ``state_dict``/``load_state_dict`` and
    restores it before iterating again. ``consumed_batches`` reports how many batches of the
    current epoch the training loop has actually used: worker prefetching and Lightning's
    one-batch look-ahead mean the sampler itself has already handed out more.
    """

    def __init__(self, *args: Any, consumed_batches: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consumed_batches = consumed_batches

    def state_dict(self) -> dict[str, Any]:
        state = self.batch_sampler.state_dict()
        consumed = self.consumed_batches() if self.consumed_batches is not None else None
        if consumed is not None:
            state["batches_yielded"] = consumed
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.batch_sampler.load_state_dict(state_dict)


class SpeechDataModule(L.LightningDataModule):
    """Train/valid loaders over prepare_data.py file lists.

    Args:
        train_tsv: training file list, e.g. ``data/librispeech/train960.tsv``.
        valid_tsv: validation file list (``valid.tsv``); None: no validation loader.
        seconds_per_batch: audio per training batch per rank (DPHuBERT: 160 s per GPU).
        valid_seconds_per_batch: the same for validation; None: ``seconds_per_batch``.
        max_sample_size: longer utterances are cropped to this many samples (15.625 s by default,
            DPHuBERT's limit, which it dropped instead), or dropped with ``drop_long``.
        min_sample_size: shorter utterances are dropped (2 s by default, as DPHuBERT).
        drop_long: drop instead of crop utterances over ``max_sample_size``.
        crop_mode: "max" or "shortest" (crop each batch to its shortest, as DPHuBERT).
        num_workers: DataLoader worker processes.
        seed: seeds packing tie-breaks, per-epoch batch order and crop offsets.
        sample_rate: expected rate; see ``resample``.
        resample: convert files at other rates with soxr instead of failing.
        pin_memory: page-locked batches for faster host-to-GPU copies.
    """

    def __init__(
        self,
        train_tsv: str | Path,
        valid_tsv: str | Path | None = None,
        *,
        seconds_per_batch: float = 160.0,
        valid_seconds_per_batch: float | None = None,
        max_sample_size: int | None = 250_000,
        min_sample_size: int = 32_000,
        drop_long: bool = False,
        crop_mode: CropMode = "max",
        num_workers: int = 2,
        seed: int = 0,
        sample_rate: int = 16_000,
        resample: bool = False,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        # Paths stored as strings: Lightning restores checkpoints with weights_only=True, whose
        # unpickler rejects pathlib objects in the saved hyperparameters.
        self.save_hyperparameters(
            {
                "train_tsv": str(train_tsv),
                "valid_tsv": None if valid_tsv is None else str(valid_tsv),
                "seconds_per_batch": seconds_per_batch,
                "valid_seconds_per_batch": valid_seconds_per_batch,
                "max_sample_size": max_sample_size,
                "min_sample_size": min_sample_size,
                "drop_long": drop_long,
                "crop_mode": crop_mode,
                "num_workers": num_workers,
                "seed": seed,
                "sample_rate": sample_rate,
                "resample": resample,
                "pin_memory": pin_memory,
            }
        )
        self.train_tsv = Path(train_tsv)
        self.valid_tsv = None if valid_tsv is None else Path(valid_tsv)
        self.train_set: AudioDataset | None = None
        self.valid_set: AudioDataset | None = None
        self.train_sampler: LengthBucketBatchSampler | None = None

    # -- datasets -----------------------------------------------------------------------------

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = AudioDataset(self.train_tsv, sample_rate=hp.sample_rate, resample=hp.resample)
        if self.valid_set is None and self.valid_tsv is not None and stage in (None, "fit", "validate"):
            self.valid_set = AudioDataset(self.valid_tsv, sample_rate=hp.sample_rate, resample=hp.resample)

    def _rank_and_world_size(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        if trainer is None:
            return 0, 1
        world_size = int(trainer.world_size)
        connector = getattr(trainer, "_accelerator_connector", None)
        if world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise ValueError(
                "SpeechDataModule shards batches across ranks itself: create the Trainer with "
                "use_distributed_sampler=False"
            )
        return int(trainer.global_rank), world_size

    def _trainer_or_none(self) -> L.Trainer | None:
        return getattr(self, "trainer", None)

    def _current_epoch(self) -> int:
        trainer = self._trainer_or_none()
        return 0 if trainer is None else int(trainer.current_epoch)

    def _sampler(self, dataset: AudioDataset, *, training: bool, seconds_per_batch: float) -> LengthBucketBatchSampler:
        hp = self.hparams
        rank, world_size = self._rank_and_world_size()
        return LengthBucketBatchSampler(
            dataset.lengths,
            seconds_per_batch=seconds_per_batch,
            sample_rate=hp.sample_rate,
            max_sample_size=hp.max_sample_size,
            min_sample_size=hp.min_sample_size,
            drop_long=hp.drop_long,
            crop_mode=hp.crop_mode,
            training=training,
            seed=hp.seed,
            num_replicas=world_size,
            rank=rank,
        )

    def _consumed_batches(self) -> int | None:
        """Batches of the current epoch the fit loop has used, or None outside fitting."""
        trainer = self._trainer_or_none()
        # state.fn stays FITTING during validation inside fit, where checkpoints are also saved.
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def _loader(self, dataset: AudioDataset, sampler: LengthBucketBatchSampler, *, training: bool) -> DataLoader:
        workers = self.hparams.num_workers
        options: dict[str, Any] = dict(
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=collate_audio,
            pin_memory=self.hparams.pin_memory,
            persistent_workers=workers > 0,
            # Its own generator: creating an epoch's iterator must not draw from the global RNG,
            # or a resumed run's dropout / gate noise would diverge from the uninterrupted run.
            generator=torch.Generator().manual_seed(self.hparams.seed),
        )
        if training:
            return ResumableDataLoader(dataset, consumed_batches=self._consumed_batches, **options)
        return DataLoader(dataset, **options)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        assert self.train_set is not None
        sampler = self._sampler(self.train_set, training=True, seconds_per_batch=self.hparams.seconds_per_batch)
        # Lightning's own set_epoch hook only reaches ``batch_sampler.sampler``; ask the trainer instead.
        sampler.epoch_source = self._current_epoch
        self.train_sampler = sampler
        return self._loader(self.train_set, sampler, training=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        self.setup("validate")
        if self.valid_set is None:
            return []
        seconds = self.hparams.valid_seconds_per_batch or self.hparams.seconds_per_batch
        sampler = self._sampler(self.valid_set, training=False, seconds_per_batch=seconds)
        return self._loader(self.valid_set, sampler, training=False)
