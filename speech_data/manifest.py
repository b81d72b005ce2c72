"""Input audio lists and the MelHuBERT feature/label manifest.

Audio list (DPHuBERT / fairseq tsv): first line the absolute root directory, then one line per
utterance ``relative_path<TAB>num_samples``.

Manifest (csv, MelHuBERT-compatible): header ``file_path,label_path,length``, one row per utterance,
absolute paths to ``feature/<utt_id>.npy`` (float32 [T, 40], normalised log-Mel at 10 ms) and
``cluster/<utt_id>.npy`` (int64 labels), and ``length`` = T, the number of **10 ms feature frames**
in the feature file, whatever the frame period the labels were made for. A 20 ms consumer stacks the
features into ceil(T / 2) frames itself (``speech_data.fbank.stack_frames``), so a length filter on
this column is always in 10 ms units (unlike the original MelHuBERT code's 20 ms csv, whose length was in 20 ms units).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from speech_data.tsv import read_file_list

MANIFEST_HEADER: tuple[str, str, str] = ("file_path", "label_path", "length")


@dataclass(frozen=True)
class AudioEntry:
    """One line of an audio tsv: the absolute path and the sample count the tsv claims."""

    path: Path
    num_samples: int


def read_audio_tsv(tsv_path: str | Path) -> list[AudioEntry]:
    """Read a DPHuBERT-format tsv (root line, then ``relative_path<TAB>num_samples`` lines).

    Parsing is ``speech_data.tsv.read_file_list``'s; features are written next to absolute paths,
    so the root must be absolute here.

    Raises:
        ValueError: on an empty file, a relative root, or a malformed line (named by line number).
    """
    file_list = read_file_list(tsv_path)
    if not file_list.root.is_absolute():
        raise ValueError(f"{tsv_path}: the root directory on line 1 must be absolute, got {file_list.root}")
    return [AudioEntry(file_list.path(i), n) for i, n in enumerate(file_list.num_samples)]


def utterance_id(audio_path: str | Path) -> str:
    """The file name without its extension (``.../103-1240-0000.flac`` -> ``103-1240-0000``)."""
    return Path(audio_path).stem


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: feature file, label file, number of 10 ms feature frames."""

    file_path: Path
    label_path: Path
    length: int


def write_manifest(path: str | Path, rows: list[ManifestRow]) -> None:
    """Write the csv (header + rows, absolute paths), replacing any existing file atomically."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_HEADER)
        for row in rows:
            writer.writerow([str(Path(row.file_path).absolute()), str(Path(row.label_path).absolute()), row.length])
    partial.replace(path)


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest csv written by ``write_manifest`` (or the original MelHuBERT code's tidy scripts)."""
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(field.strip() for field in header) != MANIFEST_HEADER:
            raise ValueError(f"{path}: expected header {','.join(MANIFEST_HEADER)}, got {header}")
        rows = []
        for line_number, fields in enumerate(reader, start=2):
            if len(fields) != 3:
                raise ValueError(f"{path}:{line_number}: expected 3 fields, got {fields}")
            try:
                rows.append(ManifestRow(Path(fields[0]), Path(fields[1]), int(fields[2])))
            except ValueError:
                raise ValueError(f"{path}:{line_number}: length {fields[2]!r} is not an integer") from None
        return rows
