"""Probing features at corpus scale with bounded memory: a memory-mapped fp16 frame cache.

``probing.extract_features`` keeps every frame of every hidden state in RAM, ``frames x
(N + 1) x D x 2`` bytes: about 2.3 GB per hour of audio for HuBERT Base, hundreds of GB for
LibriSpeech train-clean-100. Here the frames go to one file on disk instead, written in a
single pass over the corpus (progress bar), and the probe reads them back batch by batch:

- ``frames.f16``: a ``numpy.memmap`` of shape ``(total_frames, N + 1, D)`` in float16, the
  utterances one after the other (in file-list order);
- ``index.json``: the frame offset and count of every utterance, the shape, the upstream name
  and the utterance ids, so a cache is reused only for the same upstream and utterances.

RAM is what stays resident: the per-utterance layer means for speaker ID
(``U x (N + 1) x D x 4`` bytes), one extraction batch of hidden states, and one training
batch (widened to float32). ``estimate`` computes both footprints (in-memory and on-disk)
before any audio is read; ``check_fits`` refuses with the numbers when the chosen mode does
not fit under the bound, and the on-disk cache also checks the free disk space.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .upstream import SAMPLE_RATE, Upstream

CACHE_VERSION = 1
FRAMES_FILE = "frames.f16"
INDEX_FILE = "index.json"


class MemoryBoundError(RuntimeError):
    """The features do not fit under the memory (or disk) bound; the message gives the numbers."""


@dataclass
class Estimate:
    """Bytes each way of holding the features of ``num_utterances`` utterances."""

    num_utterances: int
    total_frames: int
    num_states: int
    dim: int
    frames_bytes: int  # every frame, float16
    pooled_bytes: int  # per-utterance means, float32
    batch_bytes: int  # one extraction batch of states (float32) plus its layer-normalised copy

    @property
    def in_memory_bytes(self) -> int:
        return self.frames_bytes + self.pooled_bytes + self.batch_bytes

    @property
    def on_disk_ram_bytes(self) -> int:
        return self.pooled_bytes + self.batch_bytes

    def describe(self) -> str:
        gb = 2**30
        return (f"{self.num_utterances} utterances, {self.total_frames} frames x {self.num_states} states x {self.dim} dims: "
                f"in memory {self.in_memory_bytes / gb:.2f} GB (frames {self.frames_bytes / gb:.2f} GB fp16), "
                f"with the disk cache {self.on_disk_ram_bytes / gb:.3f} GB RAM + {self.frames_bytes / gb:.2f} GB disk")


def estimate(upstream: Upstream, utterances: Sequence[Any], batch_seconds: float) -> Estimate:
    """Footprints from the utterance lengths alone (no audio read, no forward pass)."""
    samples = torch.tensor([int(u.num_samples) for u in utterances], dtype=torch.long)
    frames = upstream.frame_lengths(samples) if len(utterances) else torch.zeros(0, dtype=torch.long)
    total = int(frames.sum())
    states, dim = upstream.num_hidden_states, upstream.hidden_dim
    longest = int(samples.max()) if len(utterances) else 0
    per_batch = max(1, int(batch_seconds * SAMPLE_RATE // max(longest, 1)))
    batch_frames = per_batch * (int(frames.max()) if len(utterances) else 0)
    return Estimate(
        num_utterances=len(utterances), total_frames=total, num_states=states, dim=dim,
        frames_bytes=total * states * dim * 2, pooled_bytes=len(utterances) * states * dim * 4,
        batch_bytes=2 * batch_frames * states * dim * 4,
    )


def check_fits(est: Estimate, memory_bound_bytes: Optional[int], cache_dir: Optional[Path], what: str) -> None:
    """Raise ``MemoryBoundError`` when the chosen mode does not fit (RAM bound; disk space)."""
    gb = 2**30
    if memory_bound_bytes is not None:
        needed = est.on_disk_ram_bytes if cache_dir is not None else est.in_memory_bytes
        if needed > memory_bound_bytes:
            hint = ("" if cache_dir is not None else
                    f"; the disk cache (--feature_cache DIR) would need {est.on_disk_ram_bytes / gb:.3f} GB of RAM")
            raise MemoryBoundError(
                f"{what}: the features need {needed / gb:.3f} GB of RAM "
                f"({'disk cache' if cache_dir is not None else 'in memory'}), over the bound of "
                f"{memory_bound_bytes / gb:.3f} GB{hint}; use fewer utterances (--max_train_utterances) "
                f"or a smaller --extract_batch_seconds")
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
        if est.frames_bytes > free:
            raise MemoryBoundError(f"{what}: the frame cache needs {est.frames_bytes / gb:.2f} GB on disk, "
                                   f"{cache_dir} has {free / gb:.2f} GB free")


class FrameCache(Sequence[Tensor]):
    """Read access to a written cache: ``cache[k]`` is utterance k's ``(T_k, N + 1, D)`` float16
    frames, a view of the memory-mapped file (the OS pages it in and out; nothing is kept)."""

    lazy = True  # consumers widen per batch instead of widening the whole cache up front

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX_FILE
        if not index_path.is_file():
            raise FileNotFoundError(f"feature cache index not found: {index_path}")
        self.index = json.loads(index_path.read_text(encoding="utf-8"))
        if self.index.get("version") != CACHE_VERSION or not self.index.get("complete"):
            raise ValueError(f"{index_path}: not a complete feature cache of version {CACHE_VERSION}")
        shape = (self.index["total_frames"], self.index["num_states"], self.index["dim"])
        self.offsets: list[int] = self.index["offsets"]
        self.lengths: list[int] = self.index["lengths"]
        self.array = np.memmap(self.directory / FRAMES_FILE, dtype=np.float16, mode="r", shape=shape) if shape[0] else None

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, k: int | slice) -> Any:  # type: ignore[override]
        if isinstance(k, slice):
            return self.subset(range(len(self))[k])
        if not -len(self) <= k < len(self):
            raise IndexError(f"utterance {k} out of range ({len(self)})")
        start, count = self.offsets[k], self.lengths[k]
        if self.array is None:
            return torch.zeros(0, self.index["num_states"], self.index["dim"], dtype=torch.float16)
        return torch.from_numpy(np.array(self.array[start:start + count]))  # one utterance read from disk

    def __iter__(self) -> Iterator[Tensor]:
        for k in range(len(self)):
            yield self[k]

    def subset(self, indices: Sequence[int]) -> "CacheSubset":
        return CacheSubset(self, list(indices))


class CacheSubset(Sequence[Tensor]):
    """Utterances ``indices`` of a ``FrameCache``, still read lazily."""

    lazy = True

    def __init__(self, cache: FrameCache, indices: list[int]) -> None:
        self.cache, self.indices = cache, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int | slice) -> Any:  # type: ignore[override]
        if isinstance(k, slice):
            return CacheSubset(self.cache, self.indices[k])
        return self.cache[self.indices[k]]


def select(frames: Sequence[Tensor], indices: Sequence[int]) -> Sequence[Tensor]:
    """``[frames[k] for k in indices]``, lazily for a cache (nothing is read until used)."""
    if isinstance(frames, FrameCache):
        return frames.subset(indices)
    return [frames[k] for k in indices]


def _index_matches(directory: Path, upstream: Upstream, ids: list[str], shape: tuple[int, int, int]) -> bool:
    path = directory / INDEX_FILE
    if not path.is_file():
        return False
    index = json.loads(path.read_text(encoding="utf-8"))
    return (index.get("version") == CACHE_VERSION and index.get("complete") is True and index.get("upstream") == upstream.name
            and index.get("utterance_ids") == ids
            and (index.get("total_frames"), index.get("num_states"), index.get("dim")) == shape)


@torch.no_grad()
def normalised_batches(
    upstream: Upstream,
    tsv: Path,
    utterances: Sequence[Any],
    batch_seconds: float,
    device: str | torch.device,
    description: str,
    progress: bool = True,
) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """The frozen upstream over ``utterances``, longest first, ``batch_seconds`` of padded audio a batch.

    Yields ``(indices into utterances, states (B, T, N + 1, D) float32 layer-normalised per frame,
    frame_lengths (B,))``. A clip too short for one output frame is a ValueError naming its file
    (its mean-pooled feature would be NaN). The one extraction loop of the in-memory probe
    features and of the disk cache.
    """
    from tqdm import tqdm

    from speech_data.dataset import AudioDataset

    dataset = AudioDataset(tsv)
    upstream = upstream.to(device).eval()
    order = sorted(range(len(utterances)), key=lambda k: -utterances[k].num_samples)
    budget = batch_seconds * SAMPLE_RATE
    bar = tqdm(total=len(order), desc=description, unit="utt", mininterval=2.0, disable=not progress)
    start = 0
    while start < len(order):
        # Longest first: the batch is padded to its first utterance.
        longest = utterances[order[start]].num_samples
        size = max(1, int(budget // max(longest, 1)))
        batch = order[start:start + size]
        start += size
        waves = [dataset[utterances[k].index].waveform for k in batch]
        lengths = torch.tensor([w.numel() for w in waves])
        too_short = [k for k, frames in zip(batch, upstream.frame_lengths(lengths).tolist()) if frames < 1]
        if too_short:
            k = too_short[0]
            raise ValueError(f"{dataset.file_list.path(utterances[k].index)}: {utterances[k].num_samples} samples is "
                             f"shorter than the receptive field of {upstream.name} (no output frame); "
                             f"{len(too_short)} such clip(s) in this batch; drop them from {tsv}")
        padded = torch.zeros(len(waves), int(lengths.max()))
        for row, wave in enumerate(waves):
            padded[row, : wave.numel()] = wave
        states, frame_lengths = upstream.layers(padded.to(device), lengths.to(device))
        stacked = torch.stack([F.layer_norm(h.float(), h.shape[-1:]) for h in states], dim=2)
        yield batch, stacked, frame_lengths
        bar.update(len(batch))
    bar.close()


@torch.no_grad()
def extract_to_cache(
    upstream: Upstream,
    tsv: Path,
    utterances: Sequence[Any],
    cache_dir: Path,
    batch_seconds: float = 40.0,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[Tensor, FrameCache]:
    """One pass of the frozen upstream over ``utterances``; frames to ``cache_dir``, means returned.

    Returns ``(pooled (U, N + 1, D) float32, FrameCache)``. States are layer-normalised per
    frame before caching, exactly as ``probing.extract_features`` does. A complete cache of the
    same upstream and utterances is reused without running the model.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    ids = [str(u.utterance_id) for u in utterances]
    samples = torch.tensor([int(u.num_samples) for u in utterances], dtype=torch.long)
    frames = [int(f) for f in upstream.frame_lengths(samples)] if len(utterances) else []
    offsets = [0] * len(frames)
    for k in range(1, len(frames)):
        offsets[k] = offsets[k - 1] + frames[k - 1]
    total = sum(frames)
    shape = (total, upstream.num_hidden_states, upstream.hidden_dim)
    pooled_path = cache_dir / "pooled.f32"
    if _index_matches(cache_dir, upstream, ids, shape) and pooled_path.is_file():
        pooled = torch.from_numpy(np.fromfile(pooled_path, dtype=np.float32).reshape(len(ids), shape[1], shape[2]).copy())
        return pooled, FrameCache(cache_dir)
    (cache_dir / INDEX_FILE).unlink(missing_ok=True)  # an interrupted write leaves no index behind
    array = np.memmap(cache_dir / FRAMES_FILE, dtype=np.float16, mode="w+", shape=shape) if total else None
    pooled = torch.zeros(len(utterances), shape[1], shape[2])
    for batch, stacked, frame_lengths in normalised_batches(upstream, tsv, utterances, batch_seconds, device,
                                                            f"features -> {cache_dir}", progress):
        for row, k in enumerate(batch):
            count = int(frame_lengths[row])
            if count != frames[k]:
                raise RuntimeError(f"{tsv}: utterance {ids[k]} gave {count} frames, {frames[k]} expected from its length")
            valid = stacked[row, :count]
            pooled[k] = valid.mean(0).cpu()
            if array is not None and count:
                array[offsets[k]:offsets[k] + count] = valid.to(device="cpu", dtype=torch.float16).numpy()
    if array is not None:
        array.flush()
        del array
    pooled.numpy().tofile(pooled_path)
    index = {"version": CACHE_VERSION, "complete": True, "upstream": upstream.name, "tsv": str(tsv),
             "total_frames": total, "num_states": shape[1], "dim": shape[2], "dtype": "float16",
             "offsets": offsets, "lengths": frames, "utterance_ids": ids}
    (cache_dir / INDEX_FILE).write_text(json.dumps(index) + "\n", encoding="utf-8")
    return pooled, FrameCache(cache_dir)


def extract_bounded(
    upstream: Upstream,
    tsv: Path,
    utterances: Sequence[Any],
    keep_frames: bool,
    batch_seconds: float,
    device: str | torch.device,
    cache_dtype: torch.dtype,
    cache_dir: Optional[Path],
    memory_bound_gb: Optional[float],
    log: Any = print,
    *,
    extract_in_memory: Callable[[], Any],
    make_features: Callable[[Tensor, "FrameCache"], Any],
) -> Any:
    """Feature extraction with a RAM estimate, a bound, and the optional disk cache.

    Prints the estimate, refuses (``MemoryBoundError``) when the chosen mode does not fit, and
    returns ``extract_in_memory()`` without a cache, ``make_features(pooled, cache)`` with one
    (the caller, ``evaluation.probing``, supplies both, so this module never imports it).
    """
    est = estimate(upstream, utterances, batch_seconds)
    bound = int(memory_bound_gb * 2**30) if memory_bound_gb is not None else None
    log(f"features of {tsv}: {est.describe()}" + (f"; bound {memory_bound_gb:g} GB" if bound is not None else ""))
    if not keep_frames:
        est.frames_bytes = 0  # only the means are kept
        cache_dir = None
    check_fits(est, bound, cache_dir, str(tsv))
    if cache_dir is None:
        return extract_in_memory()
    pooled, cache = extract_to_cache(upstream, tsv, utterances, cache_dir, batch_seconds, device)
    return make_features(pooled, cache)
