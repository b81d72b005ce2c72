"""A small English speech corpus synthesised on the machine, in LibriSpeech layout.

Layout (``prepare_data.py --data DIR`` treats it exactly like LibriSpeech)::

    DIR/speakers.tsv                                   the voices (see speakers.py)
    DIR/demo_corpus.json                               seed, sizes and tool versions
    DIR/<split>/<SPK>/<CHAPTER>/<SPK>-<CHAPTER>-<UTT>.flac      16 kHz mono PCM-16, peak 0.9
    DIR/<split>/<SPK>/<CHAPTER>/<SPK>-<CHAPTER>.trans.txt       "SPK-CHAPTER-UTT UPPER CASE TEXT"
    DIR/<split>/<SPK>/<CHAPTER>/<SPK>-<CHAPTER>.phones.txt      "SPK-CHAPTER-UTT p1 p2 p3 ..."

Splits are ``train-clean-100``, ``dev-clean`` and ``test-clean``; every speaker appears in all
three with different sentences (about 84 % / 8 % / 8 % of each speaker's utterances, at least
one each), so speaker identification can train and test on the same speakers. A speaker has one
chapter per split: ``CHAPTER = SPK * 10 + {0 train, 1 dev, 2 test}``; utterance numbers count
from 0000 within a chapter. Phones follow speech_data/phones.py (stress removed, word
boundaries removed, space-separated).

Everything is a function of the seed and the size: the same arguments give byte-identical files
whatever the number of workers (each utterance is synthesised independently from its plan).
"""

from __future__ import annotations

import json
import multiprocessing
import random
import shutil
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import soundfile
from tqdm import tqdm

from speech_data.sentences import make_sentence
from speech_data.speakers import ESPEAK, FLITE, Speaker, choose_speakers, write_speakers_table
from speech_data.synthesis import SAMPLE_RATE, flite_available, require_tool, synthesize

DEMO_SPLITS = ("train-clean-100", "dev-clean", "test-clean")
HELD_OUT_FRACTION = 0.08  # of each speaker's utterances, for dev and for test each
DEFAULT_NUM_SPEAKERS = 24
DEFAULT_HOURS = 1.0
MIN_UTTERANCES_PER_SPEAKER = len(DEMO_SPLITS)

# Spoken duration estimate, fitted on 240 synthesised sentences (residual std about 0.5 s):
# seconds = slope * characters * (175 wpm / rate) + intercept for espeak-ng, and without the
# rate factor for flite. It only decides how many sentences reach ``hours``; the report states
# the measured total.
_ESPEAK_SECONDS_PER_CHARACTER, _ESPEAK_INTERCEPT = 0.0473, 0.54
_FLITE_SECONDS_PER_CHARACTER, _FLITE_INTERCEPT = 0.0452, 1.10


@dataclass(frozen=True)
class UtteranceJob:
    speaker: Speaker
    split: str
    chapter_id: int
    utterance_id: str  # SPK-CHAPTER-UTT
    text: str  # lower case, no punctuation
    flac_path: Path


@dataclass(frozen=True)
class SynthesisedUtterance:
    job: UtteranceJob
    num_samples: int
    phones: tuple[str, ...]


@dataclass(frozen=True)
class DemoCorpusSummary:
    root: Path
    num_utterances: int
    num_speakers: int
    seconds_per_split: dict[str, float]
    elapsed_seconds: float

    @property
    def hours(self) -> float:
        return sum(self.seconds_per_split.values()) / 3600

    def describe(self) -> str:
        splits = ", ".join(f"{split} {seconds / 60:.1f} min" for split, seconds in self.seconds_per_split.items())
        return (
            f"demo corpus {self.root}: {self.num_utterances} utterances, {self.num_speakers} speakers, "
            f"{self.hours:.3f} h ({splits}), made in {self.elapsed_seconds:.1f} s"
        )


def estimated_seconds(speaker: Speaker, text: str) -> float:
    """Rough spoken duration of ``text`` in ``speaker``'s voice (see the fitted constants above)."""
    if speaker.engine == FLITE:
        return _FLITE_SECONDS_PER_CHARACTER * len(text) + _FLITE_INTERCEPT
    assert speaker.rate is not None
    return _ESPEAK_SECONDS_PER_CHARACTER * len(text) * 175 / speaker.rate + _ESPEAK_INTERCEPT


def _sentences_per_speaker(
    speakers: list[Speaker], rng: random.Random, num_utterances: int | None, hours: float
) -> dict[int, list[str]]:
    """Deal sentences to speakers round-robin until the count (or the estimated hours) is reached."""
    minimum = MIN_UTTERANCES_PER_SPEAKER * len(speakers)
    if num_utterances is not None and num_utterances < minimum:
        raise ValueError(
            f"num_utterances={num_utterances} is too small for {len(speakers)} speakers: every speaker needs "
            f"one utterance in each of {', '.join(DEMO_SPLITS)}, so at least {minimum}"
        )
    sentences: dict[int, list[str]] = {speaker.speaker_id: [] for speaker in speakers}
    target_seconds = hours * 3600
    total_seconds = 0.0
    count = 0
    while True:
        if num_utterances is not None and count == num_utterances:
            break
        # In hours mode stop only after a full round, so speakers get equal shares.
        if num_utterances is None and total_seconds >= target_seconds and count >= minimum and count % len(speakers) == 0:
            break
        speaker = speakers[count % len(speakers)]
        text = make_sentence(rng)
        sentences[speaker.speaker_id].append(text)
        total_seconds += estimated_seconds(speaker, text)
        count += 1
    return sentences


def _split_sizes(count: int, test_fraction: float = HELD_OUT_FRACTION) -> dict[str, int]:
    # The test split may be larger than dev: the probes' confidence intervals shrink with its size.
    dev = max(1, round(count * HELD_OUT_FRACTION))
    test = max(1, round(count * test_fraction))
    if count - dev - test < 1:
        raise ValueError(f"test_fraction={test_fraction} leaves no training utterance for a speaker with {count} utterances")
    return {DEMO_SPLITS[0]: count - dev - test, DEMO_SPLITS[1]: dev, DEMO_SPLITS[2]: test}


def plan_corpus(
    root: Path,
    speakers: list[Speaker],
    *,
    seed: int,
    num_utterances: int | None = None,
    hours: float = DEFAULT_HOURS,
    test_fraction: float = HELD_OUT_FRACTION,
) -> list[UtteranceJob]:
    """Every utterance to synthesise, in a fixed order: speaker, then split, then number."""
    if num_utterances is None and hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if not 0 < test_fraction < 1 - HELD_OUT_FRACTION:
        raise ValueError(f"test_fraction must be in (0, {1 - HELD_OUT_FRACTION}), got {test_fraction}")
    rng = random.Random(seed)
    sentences = _sentences_per_speaker(speakers, rng, num_utterances, hours)
    jobs = []
    for speaker in speakers:
        texts = iter(sentences[speaker.speaker_id])
        for split_code, (split, size) in enumerate(_split_sizes(len(sentences[speaker.speaker_id]), test_fraction).items()):
            chapter_id = speaker.speaker_id * 10 + split_code
            chapter_dir = root / split / str(speaker.speaker_id) / str(chapter_id)
            for number in range(size):
                utterance_id = f"{speaker.speaker_id}-{chapter_id}-{number:04d}"
                jobs.append(
                    UtteranceJob(speaker, split, chapter_id, utterance_id, next(texts), chapter_dir / f"{utterance_id}.flac")
                )
    return jobs


def _synthesise_job(job: UtteranceJob) -> SynthesisedUtterance:
    """Worker: speak one utterance and write its FLAC file."""
    utterance = synthesize(job.speaker, job.text)
    soundfile.write(job.flac_path, utterance.waveform, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return SynthesisedUtterance(job, len(utterance.waveform), tuple(utterance.phones))


def _run_jobs(jobs: list[UtteranceJob], workers: int) -> Iterator[SynthesisedUtterance]:
    if workers <= 1:
        yield from map(_synthesise_job, jobs)
        return
    # spawn, not fork: the caller may have torch (and its thread pools) loaded, which fork
    # copies in an undefined state; the workers only need numpy, soundfile and soxr.
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(16, len(jobs) // (4 * workers)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(_synthesise_job, jobs, chunksize=chunk)


def _tool_version(command: list[str]) -> str:
    try:
        output = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unavailable"
    return " ".join(output.split()[:6])


def _clear_previous_corpus(root: Path, overwrite: bool) -> None:
    ours = [root / split for split in DEMO_SPLITS] + [root / "speakers.tsv", root / "demo_corpus.json"]
    existing = [path for path in ours if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{root} already holds a corpus ({existing[0].name} exists); pass --overwrite to replace it")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def _write_text_files(results: list[SynthesisedUtterance]) -> None:
    by_chapter: dict[Path, list[SynthesisedUtterance]] = defaultdict(list)
    for result in results:
        by_chapter[result.job.flac_path.parent].append(result)
    for chapter_dir, chapter in by_chapter.items():
        chapter.sort(key=lambda result: result.job.utterance_id)
        stem = f"{chapter[0].job.speaker.speaker_id}-{chapter[0].job.chapter_id}"
        transcript_lines = [f"{r.job.utterance_id} {r.job.text.upper()}\n" for r in chapter]
        phone_lines = [f"{r.job.utterance_id} {' '.join(r.phones)}\n" for r in chapter]
        (chapter_dir / f"{stem}.trans.txt").write_text("".join(transcript_lines), encoding="utf-8")
        (chapter_dir / f"{stem}.phones.txt").write_text("".join(phone_lines), encoding="utf-8")


def make_demo_corpus(
    root: str | Path,
    *,
    hours: float = DEFAULT_HOURS,
    num_utterances: int | None = None,
    num_speakers: int = DEFAULT_NUM_SPEAKERS,
    seed: int = 0,
    workers: int = 2,
    use_flite: bool | None = None,
    overwrite: bool = False,
    show_progress: bool = True,
    test_fraction: float = HELD_OUT_FRACTION,
) -> DemoCorpusSummary:
    """Synthesise the corpus into ``root``: ``num_utterances`` utterances, else about ``hours``.

    ``use_flite=None`` uses flite's voices when flite is installed. Raises SynthesisError (with
    the apt-get command) when espeak-ng is missing, FileExistsError when ``root`` already holds
    a corpus and ``overwrite`` is False.
    """
    started = time.perf_counter()
    require_tool(ESPEAK)
    if use_flite is None:
        use_flite = flite_available()
    elif use_flite:
        require_tool(FLITE)
    root = Path(root).expanduser().resolve()
    speakers = choose_speakers(num_speakers, include_flite=use_flite)
    jobs = plan_corpus(root, speakers, seed=seed, num_utterances=num_utterances, hours=hours, test_fraction=test_fraction)

    root.mkdir(parents=True, exist_ok=True)
    _clear_previous_corpus(root, overwrite)
    for chapter_dir in sorted({job.flac_path.parent for job in jobs}):
        chapter_dir.mkdir(parents=True, exist_ok=True)
    # Interleave speakers so every worker chunk mixes fast espeak-ng and ~6x slower flite voices.
    execution_order = sorted(jobs, key=lambda job: (job.utterance_id.split("-")[2], job.split, job.speaker.speaker_id))
    results = list(
        tqdm(
            _run_jobs(execution_order, workers),
            total=len(jobs),
            desc="synthesising",
            unit="utt",
            disable=not show_progress,
        )
    )
    _write_text_files(results)
    write_speakers_table(root / "speakers.tsv", speakers)

    seconds_per_split = {split: 0.0 for split in DEMO_SPLITS}
    for result in results:
        seconds_per_split[result.job.split] += result.num_samples / SAMPLE_RATE
    info = {
        "seed": seed,
        "num_utterances": len(results),
        "num_speakers": len(speakers),
        "test_fraction": test_fraction,
        "seconds_per_split": {split: round(seconds, 3) for split, seconds in seconds_per_split.items()},
        "requested": {"hours": None if num_utterances is not None else hours, "num_utterances": num_utterances},
        "espeak_ng": _tool_version([ESPEAK, "--version"]),
        "flite": _tool_version([FLITE, "--version"]) if use_flite else "not used",
    }
    (root / "demo_corpus.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return DemoCorpusSummary(root, len(results), len(speakers), seconds_per_split, time.perf_counter() - started)


def minimum_utterances(num_speakers: int) -> int:
    """Smallest ``num_utterances`` accepted for ``num_speakers`` speakers."""
    return MIN_UTTERANCES_PER_SPEAKER * num_speakers


__all__ = [
    "DEMO_SPLITS",
    "DemoCorpusSummary",
    "UtteranceJob",
    "estimated_seconds",
    "make_demo_corpus",
    "minimum_utterances",
    "plan_corpus",
]
