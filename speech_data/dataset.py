"""Waveforms of the utterances in a file list (``<subset>.tsv``), read with soundfile.

``dataset[i]`` reads the whole utterance ``i``; ``dataset[UtteranceSlice(i, offset, n)]`` reads
only samples ``offset : offset + n`` of it (FLAC and WAV are seekable, so a 15 s crop of a 30 s
file costs 15 s of decoding). The batch sampler hands out such slices, which keeps every random
crop decision in one seeded place (speech_data/sampler.py) whatever the number of workers.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile
import soxr
import torch
from torch.utils.data import Dataset

from speech_data.tsv import FileList, read_file_list


def _finite(samples: np.ndarray, path: Path) -> np.ndarray:
    """``samples`` unchanged; ValueError naming the file when any sample is NaN / inf (float WAVs
    can hold them, and one such sample turns every weight into NaN after a step)."""
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        raise ValueError(f"{path}: {bad} non-finite (NaN/inf) sample(s); remove the file or repair it "
                         "(prepare_data.py --verify lists such files)")
    return samples


class UtteranceSlice(NamedTuple):
    """Which samples of which utterance to read (sample units at the dataset's sample rate)."""

    index: int  # position in the file list (0 = first line after the root)
    offset: int  # first sample
    num_samples: int


class AudioItem(NamedTuple):
    waveform: torch.Tensor  # float32 [num_samples], mono, at the dataset's sample rate
    index: int
    utterance_id: str  # file name without extension, e.g. "103-1240-0000"


class AudioDataset(Dataset[AudioItem]):
    """The utterances of one file list as float32 mono waveforms.

    Args:
        tsv_path: a file list written by prepare_data.py (root line, then ``path<TAB>samples``).
        sample_rate: the rate the model expects; files at another rate are an error naming the
            file unless ``resample=True``, which converts them with soxr (then the tsv counts are
            taken to be samples at ``sample_rate``).
        resample: allow and convert files whose rate differs from ``sample_rate``.

    Raises ValueError (naming the file) for a wrong rate, more than one channel, NaN / inf
    samples, or a length that disagrees with the tsv, which means the list is stale: re-run
    prepare_data.py.
    """

    def __init__(self, tsv_path: str | Path, *, sample_rate: int = 16_000, resample: bool = False) -> None:
        self.tsv_path = Path(tsv_path)
        self.file_list: FileList = read_file_list(self.tsv_path)
        if len(self.file_list) == 0:
            raise ValueError(f"{self.tsv_path}: the file list has no utterances")
        self.sample_rate = sample_rate
        self.resample = resample
        self.lengths = np.asarray(self.file_list.num_samples, dtype=np.int64)  # [N] samples per utterance

    def __len__(self) -> int:
        return len(self.file_list)

    def utterance_id(self, index: int) -> str:
        return self.file_list.utterance_id(index)

    def __getitem__(self, item: int | UtteranceSlice) -> AudioItem:
        if isinstance(item, UtteranceSlice):
            index, offset, num_samples = int(item.index), int(item.offset), int(item.num_samples)
        else:
            index = int(item)
            offset, num_samples = 0, int(self.lengths[index])
        if offset < 0 or num_samples <= 0 or offset + num_samples > self.lengths[index]:
            raise ValueError(
                f"{self.file_list.path(index)}: slice [{offset}, {offset + num_samples}) is outside its "
                f"{self.lengths[index]} samples"
            )
        waveform = self._read(index, offset, num_samples)
        return AudioItem(torch.from_numpy(waveform), index, self.utterance_id(index))

    def _read(self, index: int, offset: int, num_samples: int) -> np.ndarray:
        path = self.file_list.path(index)
        listed = int(self.lengths[index])
        try:
            with soundfile.SoundFile(str(path)) as audio:
                if audio.channels != 1:
                    raise ValueError(f"{path}: {audio.channels} channels, expected mono (prepare_data.py reports such files)")
                if audio.samplerate == self.sample_rate:
                    if audio.frames != listed:
                        raise ValueError(
                            f"{path}: has {audio.frames} samples but {self.tsv_path} lists {listed}; "
                            "the file list is stale, re-run prepare_data.py"
                        )
                    audio.seek(offset)
                    samples = audio.read(num_samples, dtype="float32")
                    if len(samples) != num_samples:
                        raise ValueError(f"{path}: decoding stopped after {len(samples)} of {num_samples} samples")
                    return _finite(samples, path)
                if not self.resample:
                    raise ValueError(
                        f"{path}: sample rate {audio.samplerate} Hz, expected {self.sample_rate} Hz "
                        "(convert the corpus, or pass resample=True to convert on the fly)"
                    )
                native = audio.read(dtype="float32")
                native_rate = audio.samplerate
        except soundfile.LibsndfileError as error:
            raise RuntimeError(f"{path}: cannot read audio: {error}") from error
        converted = soxr.resample(_finite(native, path), native_rate, self.sample_rate, quality="HQ").astype(np.float32)
        window = converted[offset : offset + num_samples]
        # Resampled lengths can differ from the tsv count by a sample or two: pad with zeros.
        return np.pad(window, (0, num_samples - len(window))) if len(window) < num_samples else window
