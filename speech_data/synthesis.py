"""Speak one sentence with espeak-ng or flite: 16 kHz mono float32 audio plus its phones.

espeak-ng gives both from one process: ``-w out.wav`` writes the audio while ``--ipa`` prints
the phonemes it spoke on stdout (``-q`` would silence the WAV too, so it is not used). Process
start-up is most of the cost of a short utterance, so one call per utterance matters. flite
speaks with its own voices; its phones come from a second, audio-less espeak-ng call in the
closest accent (see speakers.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from speech_data.phones import ipa_to_phones
from speech_data.speakers import ESPEAK, FLITE, Speaker

SAMPLE_RATE = 16_000
PEAK_LEVEL = 0.9
INSTALL_HINT = "install it with: apt-get install -y espeak-ng flite sox   (or run: bash setup.sh)"


class SynthesisError(RuntimeError):
    pass


@dataclass(frozen=True)
class Utterance:
    waveform: np.ndarray  # float32 [num_samples], 16 kHz, peak PEAK_LEVEL
    phones: list[str]


def require_tool(name: str) -> str:
    """Absolute path of a command-line tool, or SynthesisError with the install command."""
    found = shutil.which(name)
    if found is None:
        raise SynthesisError(f"{name} is not installed; {INSTALL_HINT}")
    return found


def flite_available() -> bool:
    return shutil.which(FLITE) is not None


def _run(command: list[str]) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SynthesisError(f"{' '.join(command)} failed with exit code {completed.returncode}: {completed.stderr.strip()}")
    return completed.stdout


def _scratch_dir() -> str | None:
    # RAM-backed scratch space keeps the temporary WAV off the disk when the machine has it.
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _to_16k_peak_normalised(audio: np.ndarray, sample_rate: int, source: str) -> np.ndarray:
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if sample_rate != SAMPLE_RATE:
        audio = soxr.resample(audio, sample_rate, SAMPLE_RATE, quality="HQ")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        raise SynthesisError(f"{source} produced silence")
    return (audio * (PEAK_LEVEL / peak)).astype(np.float32)


def synthesize(speaker: Speaker, text: str) -> Utterance:
    """Speak ``text`` (plain words, no leading '-') in ``speaker``'s voice."""
    handle, wav_path = tempfile.mkstemp(suffix=".wav", dir=_scratch_dir())
    os.close(handle)
    try:
        if speaker.engine == ESPEAK:
            command = [ESPEAK, "-v", speaker.voice, "-p", str(speaker.pitch), "-s", str(speaker.rate)]
            ipa = _run(command + ["-w", wav_path, "--ipa", "--sep= ", "--", text])
        elif speaker.engine == FLITE:
            _run([FLITE, "-voice", speaker.voice, "-t", text, "-o", wav_path])
            ipa = _run([ESPEAK, "-v", speaker.phones_voice, "-q", "--ipa", "--sep= ", "--", text])
        else:
            raise ValueError(f"speaker {speaker.speaker_id}: unknown engine {speaker.engine!r}")
        audio, sample_rate = soundfile.read(wav_path, dtype="float32")
    finally:
        Path(wav_path).unlink(missing_ok=True)
    source = f"{speaker.engine} voice {speaker.voice} on {text!r}"
    phones = ipa_to_phones(ipa)
    if not phones:
        raise SynthesisError(f"{source} printed no phonemes")
    return Utterance(_to_16k_peak_normalised(audio, sample_rate, source), phones)
