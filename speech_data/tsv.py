"""Read and write the DPHuBERT/fairseq file-list format and its label side files.

File list (``<subset>.tsv``)::

    /absolute/resolved/root
    train-clean-100/103/1240/103-1240-0000.flac<TAB>225360
    ...

Line 1 is the corpus root; every later line is a path relative to that root (forward slashes)
and its length in samples at 16 kHz. There is no header and no label column.

Label file (``<subset>.trans.tsv``, ``<subset>.phones.tsv``, ``<subset>.spk.tsv``)::

    103-1240-0000<TAB>CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED

One utterance per line: utterance id (the audio file name without extension), a tab, then the
value (transcript, space-separated phones, or speaker id). No header.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class FileList:
    """A parsed ``<subset>.tsv``: the corpus root and (relative path, num_samples) entries."""

    root: Path
    relative_paths: tuple[str, ...]
    num_samples: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.relative_paths)

    def path(self, index: int) -> Path:
        """Absolute path of entry ``index``."""
        return self.root / self.relative_paths[index]

    def utterance_id(self, index: int) -> str:
        """File name without its extension, e.g. ``103-1240-0000`` (LibriSpeech's utterance id)."""
        return utterance_id_of(self.relative_paths[index])


def utterance_id_of(relative_path: str) -> str:
    """Utterance id of a listed file: its name without the extension."""
    return PurePosixPath(relative_path).stem


def write_file_list(path: Path, root: Path, entries: Iterable[tuple[str, int]]) -> int:
    """Write a file list; returns the number of entries written.

    ``root`` is written resolved and absolute so the list keeps working from any directory.
    """
    lines = [str(Path(root).resolve())]
    for relative_path, num_samples in entries:
        if "\t" in relative_path or "\n" in relative_path:
            raise ValueError(f"{path}: cannot list {relative_path!r}: tabs and newlines are not allowed in paths")
        lines.append(f"{relative_path}\t{int(num_samples)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 1


def read_file_list(path: str | Path) -> FileList:
    """Parse a ``<subset>.tsv`` written by :func:`write_file_list` (or by DPHuBERT/fairseq)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ValueError(f"{path}: empty file list (expected the corpus root on line 1)")
    root = Path(lines[0].strip())
    relative_paths: list[str] = []
    num_samples: list[int] = []
    for line_number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"{path}:{line_number}: expected 'relative_path<TAB>num_samples', got {line!r}")
        try:
            length = int(fields[1])
        except ValueError:
            raise ValueError(f"{path}:{line_number}: num_samples {fields[1]!r} is not an integer") from None
        relative_paths.append(fields[0])
        num_samples.append(length)
    return FileList(root=root, relative_paths=tuple(relative_paths), num_samples=tuple(num_samples))


def write_labels(path: Path, labels: Iterable[tuple[str, str]]) -> int:
    """Write ``utterance_id<TAB>value`` lines; returns how many were written."""
    lines = []
    for utterance_id, value in labels:
        if "\t" in value or "\n" in value:
            raise ValueError(f"{path}: label of {utterance_id} contains a tab or newline: {value!r}")
        lines.append(f"{utterance_id}\t{value}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def read_labels(path: str | Path) -> dict[str, str]:
    """Parse a label side file into ``{utterance_id: value}`` (insertion order = file order)."""
    path = Path(path)
    labels: dict[str, str] = {}
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line:
            continue
        utterance_id, separator, value = line.partition("\t")
        if not separator:
            raise ValueError(f"{path}:{line_number}: expected 'utterance_id<TAB>value', got {line!r}")
        if utterance_id in labels:
            raise ValueError(f"{path}:{line_number}: utterance {utterance_id} is listed twice")
        labels[utterance_id] = value
    return labels


def labels_in_list_order(file_list: FileList, labels: Mapping[str, str]) -> list[tuple[str, str]]:
    """The (utterance id, label) pairs for the files of ``file_list``, in list order, skipping unlabelled ones."""
    pairs = []
    for index in range(len(file_list)):
        utterance_id = file_list.utterance_id(index)
        if utterance_id in labels:
            pairs.append((utterance_id, labels[utterance_id]))
    return pairs
