"""Turn a LibriSpeech-layout corpus into DPHuBERT file lists plus label side files and a report.

Output directory (``--out``, default ``data/librispeech``)::

    train100.tsv  train960.tsv  valid.tsv  test-clean.tsv  test-other.tsv
        File lists (see speech_data/tsv.py): line 1 the resolved absolute corpus root, then
        ``relative_path<TAB>num_samples`` sorted by path. Only subsets with at least one file
        are written. Routing by split folder: train-clean-100 -> train100 and train960;
        train-clean-360, train-other-500 -> train960; dev-clean, dev-other -> valid;
        test-clean -> test-clean; test-other -> test-other.
    <subset>.trans.tsv    ``utterance_id<TAB>UPPER CASE TRANSCRIPT`` from the ``*.trans.txt`` files
    <subset>.phones.tsv   ``utterance_id<TAB>p1 p2 ...`` from ``*.phones.txt`` (demo corpus)
    <subset>.spk.tsv      ``utterance_id<TAB>speaker_id`` for LibriSpeech-style ids SPK-CHAPTER-UTT
        Label files hold the subset's utterances in the order of its tsv; an utterance without
        a label is left out (and reported as ``no_transcript`` for transcripts). Join by id.
    speakers.tsv          copied from the corpus root when present (the demo corpus writes one)
    prepare_report.tsv    header ``path<TAB>reason<TAB>detail``, one row per problem; reasons:
        corrupt, empty, sample_rate, channels (those files are not listed anywhere),
        with ``verify`` (full decode, speech_data/verify.py) also truncated, undecodable,
        non_finite, silent, too_short (not listed either),
        no_split (audio outside every known split folder; not listed),
        no_transcript (listed, but no line in any trans.txt).

Listed files are exactly the readable, non-empty, 16 kHz, mono ones inside a split folder.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from speech_data.librispeech import SUBSETS, SUBSETS_OF_SPLIT, read_text_files, speaker_of, split_of
from speech_data.probe import CHANNELS, CORRUPT, EMPTY, SAMPLE_RATE, find_audio_files, probe_audio_files
from speech_data.tsv import utterance_id_of, write_file_list, write_labels
from speech_data.verify import NON_FINITE, SILENT, TOO_SHORT, TRUNCATED, UNDECODABLE, verify_audio_files

NO_SPLIT = "no_split"
NO_TRANSCRIPT = "no_transcript"
REPORT_NAME = "prepare_report.tsv"

# Summary-line wording per problem reason, in report order.
REASON_WORDING = {
    CORRUPT: "corrupt",
    EMPTY: "empty",
    SAMPLE_RATE: "not 16 kHz",
    CHANNELS: "multi-channel",
    NO_SPLIT: "outside any split",
    NO_TRANSCRIPT: "without transcript",
    TRUNCATED: "truncated",
    UNDECODABLE: "undecodable",
    NON_FINITE: "non-finite",
    SILENT: "silent",
    TOO_SHORT: "too short",
}


class PrepareError(RuntimeError):
    """Raised by ``strict`` preparation when any file has a problem; the message names each one."""


@dataclass(frozen=True)
class ReportRow:
    path: Path  # absolute
    reason: str
    detail: str


@dataclass
class PrepareResult:
    out_dir: Path
    files_listed: int
    subset_sizes: dict[str, int]  # subset name -> number of files (written subsets only)
    subset_seconds: dict[str, float]
    problems: list[ReportRow] = field(default_factory=list)

    def problem_counts(self) -> Counter[str]:
        return Counter(row.reason for row in self.problems)

    def summary(self) -> str:
        """One line: ``N files listed, M problems: a corrupt, b empty, ...``."""
        counts = self.problem_counts()
        parts = ", ".join(f"{counts.get(reason, 0)} {wording}" for reason, wording in REASON_WORDING.items())
        line = f"{self.files_listed} files listed, {len(self.problems)} problems: {parts}"
        if self.problems:
            line += f" (see {self.out_dir / REPORT_NAME})"
        return line


def _write_report(path: Path, rows: list[ReportRow]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["path\treason\tdetail"] + [f"{row.path}\t{row.reason}\t{row.detail}" for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _strict_failure(rows: list[ReportRow], report_path: Path) -> PrepareError:
    shown = rows[:20]
    lines = [f"{len(rows)} problem(s) found and --strict is set (full list in {report_path}):"]
    lines += [f"  {row.path}: {row.reason} ({row.detail})" for row in shown]
    if len(rows) > len(shown):
        lines.append(f"  ... and {len(rows) - len(shown)} more")
    return PrepareError("\n".join(lines))


def prepare_file_lists(
    data_root: str | Path,
    out_dir: str | Path,
    *,
    workers: int = 4,
    strict: bool = False,
    verify: bool = False,
    sample_rate: int = 16_000,
    show_progress: bool = True,
) -> PrepareResult:
    """Scan ``data_root`` and write the file lists, label files and report into ``out_dir``.

    Raises FileNotFoundError / NotADirectoryError for a bad root, and PrepareError in ``strict``
    mode when any problem is found (the report is still written; file lists are not).
    ``verify`` (implied by ``strict``) decodes every file completely to find truncated,
    undecodable, non-finite, silent and too-short audio.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"--data {root}: no such directory")
    if not root.is_dir():
        raise NotADirectoryError(f"--data {root}: not a directory")
    root = root.resolve()
    out = Path(out_dir).expanduser().resolve()

    relative_paths = find_audio_files(root)
    if not relative_paths:
        raise FileNotFoundError(f"--data {root}: no .flac or .wav files found below it")
    probes = probe_audio_files(
        root, relative_paths, workers=workers, expected_sample_rate=sample_rate, show_progress=show_progress
    )
    if verify or strict:
        usable = [probe for probe in probes if not probe.problems]
        verdicts = verify_audio_files(root, [(p.relative_path, p.num_samples) for p in usable],
                                      workers=workers, show_progress=show_progress)
        found = dict(zip((p.relative_path for p in usable), verdicts))
        probes = [p if not found.get(p.relative_path) else
                  type(p)(p.relative_path, p.num_samples, p.sample_rate, p.channels, found[p.relative_path])
                  for p in probes]
    transcripts = read_text_files(root, ".trans.txt")
    phones = read_text_files(root, ".phones.txt")

    problems: list[ReportRow] = []
    entries_of_subset: dict[str, list[tuple[str, int]]] = {subset: [] for subset in SUBSETS}
    for probe in probes:
        path = root / probe.relative_path
        if probe.problems:
            problems += [ReportRow(path, problem.reason, problem.detail) for problem in probe.problems]
            continue
        split = split_of(probe.relative_path, root.name)
        if split is None:
            problems.append(ReportRow(path, NO_SPLIT, f"not inside any of {', '.join(SUBSETS_OF_SPLIT)}"))
            continue
        if transcripts and utterance_id_of(probe.relative_path) not in transcripts:
            problems.append(ReportRow(path, NO_TRANSCRIPT, "no line for this utterance in any *.trans.txt"))
        for subset in SUBSETS_OF_SPLIT[split]:
            entries_of_subset[subset].append((probe.relative_path, probe.num_samples))

    report_path = out / REPORT_NAME
    _write_report(report_path, problems)
    if strict and problems:
        raise _strict_failure(problems, report_path)

    subset_sizes: dict[str, int] = {}
    subset_seconds: dict[str, float] = {}
    listed: set[str] = set()
    for subset, entries in entries_of_subset.items():
        if not entries:
            _remove_stale_outputs(out, subset)
            continue
        entries.sort()
        write_file_list(out / f"{subset}.tsv", root, entries)
        subset_sizes[subset] = len(entries)
        subset_seconds[subset] = sum(length for _, length in entries) / sample_rate
        listed.update(relative_path for relative_path, _ in entries)
        _write_subset_labels(out, subset, [utterance_id_of(relative_path) for relative_path, _ in entries], transcripts, phones)

    speakers_table = root / "speakers.tsv"
    if speakers_table.is_file():
        shutil.copyfile(speakers_table, out / "speakers.tsv")
    return PrepareResult(out, len(listed), subset_sizes, subset_seconds, problems)


def _remove_stale_outputs(out: Path, subset: str) -> None:
    """Delete this tool's outputs for a subset that is empty now, so an old run cannot leak into a new one."""
    for suffix in (".tsv", ".trans.tsv", ".phones.tsv", ".spk.tsv"):
        (out / f"{subset}{suffix}").unlink(missing_ok=True)


def _write_subset_labels(
    out: Path, subset: str, utterance_ids: list[str], transcripts: dict[str, str], phones: dict[str, str]
) -> None:
    speakers = {uid: speaker for uid in utterance_ids if (speaker := speaker_of(uid)) is not None}
    for suffix, labels in ((".trans.tsv", transcripts), (".phones.tsv", phones), (".spk.tsv", speakers)):
        path = out / f"{subset}{suffix}"
        if labels:
            write_labels(path, [(uid, labels[uid]) for uid in utterance_ids if uid in labels])
        else:
            path.unlink(missing_ok=True)
