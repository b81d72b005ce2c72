"""Full decode of audio files: what a header scan cannot see.

``prepare_data.py`` reads headers only by default (seconds for LibriSpeech). ``--verify``
(implied by ``--strict``) decodes every listed file completely, in parallel threads
(libsndfile releases the GIL), and reports, by file:

- ``truncated``: the stream ends, or the decoder fails (loses sync), before the frame count its
  header promises, e.g. a FLAC cut off by an interrupted copy; training would die on it hours later;
- ``undecodable``: the header scan passed but the decoder cannot open the stream;
- ``non_finite``: NaN or inf samples (float WAVs can hold them); one such sample turns every
  weight into NaN after a single step;
- ``silent``: no sample reaches one 16-bit step (1/32768): digital silence teaches nothing;
- ``too_short``: fewer samples than the receptive field of the wav2vec2 CNN (400 samples,
  25 ms at 16 kHz), which yields no output frame at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile
from tqdm import tqdm

from speech_data.probe import AudioProblem

TRUNCATED = "truncated"
UNDECODABLE = "undecodable"
NON_FINITE = "non_finite"
SILENT = "silent"
TOO_SHORT = "too_short"

RECEPTIVE_FIELD = 400  # samples: conv kernels 10,3,3,3,3,2,2 with strides 5,2,2,2,2,2,2
SILENCE_PEAK = 1.0 / 32768.0
BLOCK = 1 << 18  # samples decoded at a time: bounded memory for any file length


def verify_audio_file(path: Path, expected_samples: int, min_samples: int = RECEPTIVE_FIELD) -> tuple[AudioProblem, ...]:
    """Decode ``path`` completely; the problems found (empty tuple: the audio is usable)."""
    decoded = 0
    non_finite = 0
    peak = 0.0
    try:
        audio = soundfile.SoundFile(str(path))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        return (AudioProblem(UNDECODABLE, "cannot open the stream: " + (" ".join(str(error).split()) or type(error).__name__)),)
    try:
        with audio:
            while True:
                block = audio.read(BLOCK, dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                decoded += len(block)
                finite = np.isfinite(block)
                if not finite.all():
                    non_finite += int(block.size - np.count_nonzero(finite))
                    block = np.where(finite, block, 0.0)
                peak = max(peak, float(np.abs(block).max()))
    except (soundfile.LibsndfileError, RuntimeError, OSError, ValueError) as error:
        # The header was read, the stream was not: cut off (the usual case) or damaged inside.
        message = " ".join(str(error).split()) or type(error).__name__
        return (AudioProblem(TRUNCATED, f"decoding failed after {decoded} of {expected_samples} samples: {message}"),)
    problems = []
    if decoded < expected_samples:
        problems.append(AudioProblem(TRUNCATED, f"stream ends after {decoded} of the {expected_samples} samples its header promises"))
    if non_finite:
        problems.append(AudioProblem(NON_FINITE, f"{non_finite} NaN/inf sample(s)"))
    if decoded and peak < SILENCE_PEAK and not non_finite:
        problems.append(AudioProblem(SILENT, f"digital silence (peak {peak:.2e})"))
    if decoded < min_samples and not problems:
        problems.append(AudioProblem(TOO_SHORT, f"{decoded} samples, shorter than the CNN receptive field of {min_samples}"))
    return tuple(problems)


def verify_audio_files(
    root: Path,
    items: Sequence[tuple[str, int]],
    *,
    workers: int,
    min_samples: int = RECEPTIVE_FIELD,
    show_progress: bool = True,
) -> list[tuple[AudioProblem, ...]]:
    """``verify_audio_file`` over ``(relative_path, header samples)`` pairs with ``workers`` threads; input order."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda item: verify_audio_file(root / item[0], item[1], min_samples), items)
        return list(tqdm(results, total=len(items), desc="decoding audio", unit="file", disable=not show_progress))
