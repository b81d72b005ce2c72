"""Length-bucketed batches under a seconds-of-audio budget, sharded across DDP ranks.

How batches are made (once, at construction):

1. Filter: utterances shorter than ``min_sample_size`` are dropped; longer than
   ``max_sample_size`` are cropped to it, or dropped when ``drop_long=True``. The counts are in
   ``filter_report`` and logged.
2. Sort by cropped length (ties broken by a permutation seeded with ``seed`` when training, by
   position otherwise) and pack greedily: a batch grows while ``batch_size x longest cropped
   length`` (its padded size) stays within ``seconds_per_batch``. The padded size is at least
   the sum of the cropped lengths, so both readings of "seconds per batch" hold.
3. Make the batch count divisible by ``num_replicas`` by halving the batches with the most
   utterances (halves stay within budget). Every rank then gets the same number of batches and
   every kept utterance appears exactly once per epoch across ranks. Only when that is
   impossible (fewer utterances than needed, e.g. 1 utterance on 2 ranks) are the first batches
   repeated; ``num_repeated_batches`` says how many and a warning is logged.

Each epoch (``set_epoch(epoch)``, or ``epoch_source`` when set):

* training (``training=True``): the batch order is a permutation drawn from
  ``numpy.random.default_rng([seed, epoch])`` and each cropped utterance gets a random offset
  from the same generator, so an epoch is reproducible and two epochs differ. The generator
  is seeded with the pair rather than ``seed + epoch`` so that (seed 1, epoch 0) and
  (seed 0, epoch 1) do not coincide.
* evaluation (``training=False``): fixed order (by length) and centred crops, every epoch.

Rank ``r`` of ``W`` takes batches ``r, r + W, r + 2W, ...`` of the epoch's order. Batch
composition is fixed across epochs (as in fairseq); only order and crop offsets change, which
keeps ``len(sampler)`` constant for schedulers and progress bars.

``crop_mode="shortest"`` reproduces DPHuBERT: every utterance of a batch is cropped to the
batch's shortest (cropped) length, so the batch needs no padding.

Yields lists of :class:`~speech_data.dataset.UtteranceSlice` for ``AudioDataset``.

Resuming mid-epoch: ``state_dict()`` holds the epoch and the number of batches this rank has
yielded in it; after ``load_state_dict`` the next iteration of that epoch skips them. A
DataLoader with workers pulls batches ahead of the training loop, so a caller that knows how
many batches were *consumed* should store that instead (SpeechDataModule does, from Lightning's
progress counters).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch.utils.data import Sampler

from speech_data.dataset import UtteranceSlice

logger = logging.getLogger(__name__)

CropMode = Literal["max", "shortest"]


@dataclass(frozen=True)
class LengthFilterReport:
    """What the length limits did to a file list."""

    total: int
    kept: int
    dropped_short: int  # shorter than min_sample_size
    dropped_long: int  # longer than max_sample_size with drop_long=True
    cropped: int  # longer than max_sample_size, kept and cropped to it
    seconds_total: float  # all utterances, uncropped
    seconds_kept: float  # kept utterances after cropping to max_sample_size

    def describe(self) -> str:
        return (
            f"{self.kept} of {self.total} utterances kept ({self.seconds_kept / 3600:.2f} of "
            f"{self.seconds_total / 3600:.2f} h after cropping): {self.dropped_short} dropped as too short, "
            f"{self.dropped_long} dropped as too long, {self.cropped} cropped to the maximum length"
        )


def _split_until_divisible(batches: list[np.ndarray], num_replicas: int) -> tuple[list[np.ndarray], int]:
    """Halve the most populous batches until ``len(batches) % num_replicas == 0``.

    Returns the new batch list and how many batches had to be repeated because no batch with
    two or more utterances was left to halve.
    """
    batches = list(batches)
    missing = -len(batches) % num_replicas
    while missing:
        sizes = [len(batch) for batch in batches]
        largest = int(np.argmax(sizes))
        if sizes[largest] < 2:
            break
        half = sizes[largest] // 2
        batches[largest : largest + 1] = [batches[largest][:half], batches[largest][half:]]
        missing -= 1
    repeated = missing
    for position in range(repeated):
        batches.append(batches[position % len(batches)])
    return batches, repeated


class LengthBucketBatchSampler(Sampler[list[UtteranceSlice]]):
    """Batches of similar-length utterances, at most ``seconds_per_batch`` of (padded) audio each.

    Args:
        lengths: samples per utterance, in file-list order ([N]).
        seconds_per_batch: budget per batch and per rank, in seconds of audio.
        sample_rate: converts the budget to samples.
        max_sample_size: crop (or with ``drop_long`` drop) utterances longer than this; None: no limit.
        min_sample_size: drop utterances shorter than this.
        drop_long: drop instead of crop utterances longer than ``max_sample_size``.
        crop_mode: "max" crops only to ``max_sample_size``; "shortest" crops each batch to its
            shortest utterance (DPHuBERT).
        training: shuffle batch order per epoch and draw random crop offsets; otherwise fixed
            order and centred crops.
        seed: base seed of the packing tie-breaks, batch orders and crop offsets.
        num_replicas, rank: DDP world size and this process's rank; no process group needed.

    Raises ValueError when nothing survives the filter, or when one (cropped) utterance alone
    exceeds the budget.
    """

    def __init__(
        self,
        lengths: Sequence[int] | np.ndarray,
        *,
        seconds_per_batch: float,
        sample_rate: int = 16_000,
        max_sample_size: int | None = None,
        min_sample_size: int = 0,
        drop_long: bool = False,
        crop_mode: CropMode = "max",
        training: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if crop_mode not in ("max", "shortest"):
            raise ValueError(f"crop_mode must be 'max' or 'shortest', got {crop_mode!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if seconds_per_batch <= 0:
            raise ValueError(f"seconds_per_batch must be positive, got {seconds_per_batch}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.budget_samples = int(seconds_per_batch * sample_rate)
        self.sample_rate = sample_rate
        self.max_sample_size = max_sample_size
        self.crop_mode: CropMode = crop_mode
        self.training = training
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        # Called at the start of every iteration when set (e.g. ``lambda: trainer.current_epoch``).
        self.epoch_source: Callable[[], int] | None = None

        keep = self._filter(min_sample_size, drop_long)
        kept = np.flatnonzero(keep)
        self.cropped_lengths = self.lengths.copy()
        if max_sample_size is not None:
            np.minimum(self.cropped_lengths, max_sample_size, out=self.cropped_lengths)
        too_big = kept[self.cropped_lengths[kept] > self.budget_samples]
        if too_big.size:
            index = int(too_big[0])
            raise ValueError(
                f"utterance {index} alone has {self.cropped_lengths[index] / sample_rate:.2f} s (after cropping), more "
                f"than seconds_per_batch={seconds_per_batch}; set max_sample_size at most "
                f"{self.budget_samples} samples or raise seconds_per_batch ({too_big.size} utterances affected)"
            )
        packed = self._pack(kept)
        self.batches, self.num_repeated_batches = _split_until_divisible(packed, num_replicas)
        if self.num_repeated_batches:
            logger.warning(
                "%d batch(es) repeated so that %d ranks get equal batch counts (only %d utterances)",
                self.num_repeated_batches,
                num_replicas,
                kept.size,
            )
        self._shortest_of_batch = self._shortest_in_batch()
        self._resume_epoch: int | None = None
        self._resume_skip = 0
        self._yielded = 0
        self._yielded_epoch: int | None = None
        self._plan_cache: tuple[int, list[list[UtteranceSlice]]] | None = None

    # -- construction -------------------------------------------------------------------------

    def _filter(self, min_sample_size: int, drop_long: bool) -> np.ndarray:
        lengths = self.lengths
        too_short = (lengths < min_sample_size) | (lengths <= 0)
        too_long = np.zeros_like(too_short)
        if self.max_sample_size is not None and drop_long:
            too_long = (lengths > self.max_sample_size) & ~too_short
        keep = ~too_short & ~too_long
        cropped = 0 if self.max_sample_size is None else int(np.sum(keep & (lengths > self.max_sample_size)))
        kept_lengths = lengths[keep] if self.max_sample_size is None else np.minimum(lengths[keep], self.max_sample_size)
        self.filter_report = LengthFilterReport(
            total=int(lengths.size),
            kept=int(keep.sum()),
            dropped_short=int(too_short.sum()),
            dropped_long=int(too_long.sum()),
            cropped=cropped,
            seconds_total=float(lengths.sum()) / self.sample_rate,
            seconds_kept=float(kept_lengths.sum()) / self.sample_rate,
        )
        # WARNING, not INFO: dropped or cropped audio changes what the model is trained on.
        report = self.filter_report
        log = logger.warning if report.dropped_short or report.dropped_long or report.cropped else logger.info
        log("length filter: %s", report.describe())
        if not keep.any():
            raise ValueError(f"no utterance is left after the length filter: {self.filter_report.describe()}")
        return keep

    def _pack(self, kept: np.ndarray) -> list[np.ndarray]:
        cropped = self.cropped_lengths[kept]
        if self.training:
            tie_break = np.random.default_rng(self.seed).permutation(kept.size)
            order = kept[np.lexsort((tie_break, cropped))]
        else:
            order = kept[np.argsort(cropped, kind="stable")]
        batches: list[np.ndarray] = []
        start = 0
        for position, index in enumerate(order):
            # Sorted ascending, so this utterance is the longest of the batch so far.
            if (position + 1 - start) * self.cropped_lengths[index] > self.budget_samples:
                batches.append(order[start:position])
                start = position
        batches.append(order[start:])
        return batches

    def _shortest_in_batch(self) -> np.ndarray:
        """Per utterance, the shortest cropped length of its batch ([N]; used by crop_mode="shortest")."""
        shortest = self.cropped_lengths.copy()
        for batch in self.batches:
            shortest[batch] = self.cropped_lengths[batch].min()
        return shortest

    # -- per epoch ----------------------------------------------------------------------------

    def _epoch_plan(self, epoch: int) -> list[list[UtteranceSlice]]:
        """All ranks' batches of ``epoch`` in order (rank r takes every W-th from r)."""
        if self._plan_cache is not None and self._plan_cache[0] == epoch:
            return self._plan_cache[1]
        targets = self.cropped_lengths if self.crop_mode == "max" else self._shortest_of_batch
        slack = self.lengths - targets  # how far the crop window can move, per utterance
        if self.training:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.batches))
            offsets = np.floor(rng.random(self.lengths.size) * (slack + 1)).astype(np.int64)
            np.minimum(offsets, slack, out=offsets)
        else:
            order = np.arange(len(self.batches))
            offsets = slack // 2
        plan = [
            [UtteranceSlice(int(i), int(offsets[i]), int(targets[i])) for i in self.batches[position]]
            for position in order
        ]
        self._plan_cache = (epoch, plan)
        return plan

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order and crops the next iteration uses."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the full epoch, also when resuming inside it)."""
        return len(self.batches) // self.num_replicas

    def __iter__(self) -> Iterator[list[UtteranceSlice]]:
        if self.epoch_source is not None:
            self.set_epoch(self.epoch_source())
        epoch = self.epoch
        skip = self._resume_skip if self._resume_epoch == epoch else 0
        self._resume_epoch, self._resume_skip = None, 0
        rank_batches = self._epoch_plan(epoch)[self.rank :: self.num_replicas]
        self._yielded_epoch, self._yielded = epoch, skip
        for batch in rank_batches[skip:]:
            self._yielded += 1
            yield batch

    # -- resume -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batches_yielded", "seed", "num_batches"}``; num_batches is the all-rank count."""
        yielded = self._yielded if self._yielded_epoch == self.epoch else 0
        if self._resume_epoch == self.epoch:
            yielded = self._resume_skip  # restored but not iterated yet
        return {"epoch": self.epoch, "batches_yielded": yielded, "seed": self.seed, "num_batches": len(self.batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration of ``state["epoch"]`` skips ``state["batches_yielded"]`` batches.

        Raises ValueError when the state comes from a different seed or batch layout (other data,
        budget, limits or world size), where skipping would drop the wrong utterances.
        """
        if state.get("seed", self.seed) != self.seed or state.get("num_batches", len(self.batches)) != len(self.batches):
            raise ValueError(
                f"sampler state is for seed={state.get('seed')} with {state.get('num_batches')} batches, but this "
                f"sampler has seed={self.seed} and {len(self.batches)} batches: the data, batch budget, length "
                "limits or world size changed, so the saved position does not apply"
            )
        self.epoch = int(state["epoch"])
        self._resume_epoch = self.epoch
        self._resume_skip = int(state["batches_yielded"])
