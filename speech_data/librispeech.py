"""LibriSpeech layout: split folder names, how they map to file lists, and its text files.

Layout::

    ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt    lines "UTTID UPPER CASE TEXT"
    ROOT/<split>/<speaker>/<chapter>/<speaker>-<chapter>.phones.txt   lines "UTTID p1 p2 ..." (demo corpus only)

Routing looks at the folder names *inside* the root (and at the root's own name, for a root
that is itself one split folder), compared whole; a root path such as
``/home/dev/train-data/LibriSpeech`` therefore cannot change where a file goes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

# Which file lists each LibriSpeech split folder feeds (DPHuBERT's names plus the test sets).
SUBSETS_OF_SPLIT: dict[str, tuple[str, ...]] = {
    "train-clean-100": ("train100", "train960"),
    "train-clean-360": ("train960",),
    "train-other-500": ("train960",),
    "dev-clean": ("valid",),
    "dev-other": ("valid",),
    "test-clean": ("test-clean",),
    "test-other": ("test-other",),
}
SUBSETS: tuple[str, ...] = ("train100", "train960", "valid", "test-clean", "test-other")

_LIBRISPEECH_UTTERANCE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def split_of(relative_path: str, root_name: str = "") -> str | None:
    """The LibriSpeech split a file belongs to, or None when it is outside every known split.

    ``relative_path`` is relative to the corpus root (forward slashes). The first folder whose
    whole name is a split name wins; when none is, the root's own name counts (``--data`` may
    point at e.g. ``LibriSpeech/dev-clean`` directly).
    """
    for folder in PurePosixPath(relative_path).parts[:-1]:
        if folder in SUBSETS_OF_SPLIT:
            return folder
    return root_name if root_name in SUBSETS_OF_SPLIT else None


def speaker_of(utterance_id: str) -> str | None:
    """Speaker id of a LibriSpeech-style utterance id ``SPEAKER-CHAPTER-UTT``, else None."""
    match = _LIBRISPEECH_UTTERANCE.match(utterance_id)
    return match.group(1) if match else None


def parse_utterance_lines(path: Path, lines: Iterable[str]) -> dict[str, str]:
    """Parse ``UTTID rest of line`` lines (trans.txt / phones.txt) into ``{UTTID: rest}``."""
    parsed: dict[str, str] = {}
    for line_number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        utterance_id, _, value = line.partition(" ")
        if utterance_id in parsed:
            raise ValueError(f"{path}:{line_number}: utterance {utterance_id} appears twice")
        parsed[utterance_id] = " ".join(value.split())
    return parsed


def read_text_files(root: Path, suffix: str) -> dict[str, str]:
    """Collect every ``*<suffix>`` file under ``root`` (e.g. ``.trans.txt``) into ``{UTTID: value}``.

    Raises ValueError naming both files when an utterance id appears in two of them.
    """
    values: dict[str, str] = {}
    origin: dict[str, Path] = {}
    for path in sorted(root.rglob(f"*{suffix}")):
        for utterance_id, value in parse_utterance_lines(path, path.read_text(encoding="utf-8").splitlines()).items():
            if utterance_id in values:
                raise ValueError(f"utterance {utterance_id} is in both {origin[utterance_id]} and {path}")
            values[utterance_id] = value
            origin[utterance_id] = path
    return values
