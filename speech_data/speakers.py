"""The fixed roster of synthetic speakers of the demo corpus, and ``speakers.tsv``.

Each speaker is one fixed voice setting: an espeak-ng English accent x voice variant x pitch x
rate, or one of flite's recorded voices (genuinely different voice models; used when flite is
installed). The roster does not depend on the seed, so speaker 1005 is the same voice in every
corpus; the seed only changes what is said.

``speakers.tsv`` (corpus root), header then one line per speaker::

    speaker_id  gender  engine  voice  pitch  rate  phones_voice
    1000        F       espeak-ng  en-us+f1  67  168  en-us+f1

``pitch`` is espeak-ng's ``-p`` (0-99) and ``rate`` its ``-s`` (words per minute); flite voices
use their own prosody, written ``-``. ``phones_voice`` is the espeak-ng voice whose phonemes
were stored: the speaking voice itself for espeak-ng; for flite, the closest espeak-ng accent
(flite's own phones are ARPAbet), so flite transcriptions are approximate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ESPEAK = "espeak-ng"
FLITE = "flite"

ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
# Variants with their gender as espeak-ng lists it, alternating so any prefix is mixed.
ESPEAK_VARIANTS = (
    ("f1", "F"), ("m1", "M"), ("f2", "F"), ("m2", "M"), ("f3", "F"), ("m3", "M"), ("f4", "F"), ("m4", "M"),
    ("f5", "F"), ("m5", "M"), ("Alicia", "F"), ("m6", "M"), ("Andrea", "F"), ("m7", "M"), ("Annie", "F"),
    ("adam", "M"), ("anika", "F"), ("Alex", "M"), ("belinda", "F"), ("Andy", "M"), ("linda", "F"),
    ("benjamin", "M"), ("steph", "F"), ("david", "M"), ("aunty", "F"), ("edward", "M"), ("steph2", "F"),
    ("john", "M"), ("steph3", "F"), ("max", "M"), ("grandma", "F"), ("m8", "M"),
)  # fmt: skip
# (voice, gender, closest espeak-ng accent for the phone transcription)
FLITE_VOICES = (("slt", "F", "en-us"), ("rms", "M", "en-us"), ("awb", "M", "en-gb-scotland"), ("kal16", "M", "en-us"))
# Roster positions of the flite voices: spread out so that small corpora include one.
FLITE_POSITIONS = (2, 7, 12, 17)
FIRST_SPEAKER_ID = 1000


@dataclass(frozen=True)
class Speaker:
    speaker_id: int
    gender: str  # "F" or "M"
    engine: str  # ESPEAK or FLITE
    voice: str  # espeak-ng "accent+variant", or a flite voice name
    pitch: int | None  # espeak-ng -p; None for flite
    rate: int | None  # espeak-ng -s (words per minute); None for flite
    phones_voice: str  # espeak-ng voice used for the phone transcription


def _espeak_speaker(speaker_id: int, index: int) -> Speaker:
    variant, gender = ESPEAK_VARIANTS[index]
    # Shift the accent cycle by one every full turn: variants alternate F/M, so a plain
    # ``index % 8`` would give female voices only the even accents and male ones the odd.
    accent = ESPEAK_ACCENTS[(index + index // len(ESPEAK_ACCENTS)) % len(ESPEAK_ACCENTS)]
    # Fixed, well-spread settings (no RNG, so the roster never changes): pitch within the
    # gender's natural range, rate 140-195 wpm around espeak's default of 175.
    pitch = (55 if gender == "F" else 25) + (index * 11) % 27
    rate = 140 + (index * 17) % 56
    voice = f"{accent}+{variant}"
    return Speaker(speaker_id, gender, ESPEAK, voice, pitch, rate, voice)


def full_roster(include_flite: bool) -> list[Speaker]:
    """Every available speaker in roster order (36 with flite, 32 without).

    Speaker ids are fixed per roster slot, so a voice keeps its id whether or not flite exists.
    """
    total = len(ESPEAK_VARIANTS) + len(FLITE_VOICES)
    roster: list[Speaker] = []
    espeak_index = 0
    flite_index = 0
    for position in range(total):
        speaker_id = FIRST_SPEAKER_ID + position
        if position in FLITE_POSITIONS:
            voice, gender, phones_voice = FLITE_VOICES[flite_index]
            flite_index += 1
            if include_flite:
                roster.append(Speaker(speaker_id, gender, FLITE, voice, None, None, phones_voice))
        else:
            roster.append(_espeak_speaker(speaker_id, espeak_index))
            espeak_index += 1
    return roster


def choose_speakers(num_speakers: int, include_flite: bool) -> list[Speaker]:
    """The first ``num_speakers`` of the roster; ValueError when more are asked than exist."""
    roster = full_roster(include_flite)
    if not 1 <= num_speakers <= len(roster):
        raise ValueError(f"num_speakers must be between 1 and {len(roster)} (the roster size), got {num_speakers}")
    return roster[:num_speakers]


SPEAKERS_HEADER = ("speaker_id", "gender", "engine", "voice", "pitch", "rate", "phones_voice")


def write_speakers_table(path: Path, speakers: list[Speaker]) -> None:
    def cell(value: int | None) -> str:
        return "-" if value is None else str(value)

    lines = ["\t".join(SPEAKERS_HEADER)]
    for s in speakers:
        lines.append("\t".join((str(s.speaker_id), s.gender, s.engine, s.voice, cell(s.pitch), cell(s.rate), s.phones_voice)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_speakers_table(path: Path) -> list[Speaker]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != SPEAKERS_HEADER:
        raise ValueError(f"{path}: expected header {'<TAB>'.join(SPEAKERS_HEADER)}")

    def number(value: str) -> int | None:
        return None if value == "-" else int(value)

    speakers = []
    for line in lines[1:]:
        if line:
            speaker_id, gender, engine, voice, pitch, rate, phones_voice = line.split("\t")
            speakers.append(Speaker(int(speaker_id), gender, engine, voice, number(pitch), number(rate), phones_voice))
    return speakers
