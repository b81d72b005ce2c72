"""The original MelHuBERT data archive (Kaldi fbank + K-means labels) -> this toolkit's data layout.

The original ``preprocess.sh`` downloaded an archive of Kaldi outputs and tidied it into numpy
files. The archive holds (names of the LibriSpeech-360 one; found by suffix, any depth):

* ``<name>.scp``: ``UTT PATH:OFFSET`` lines into binary ``.ark`` files of fbank matrices
  (float ``FM``, double ``DM`` or compressed ``CM``, read with ``kaldiio``);
* ``<name>.bas.scp``: the same into text arks whose entry is one line of integer cluster ids;
* ``<name>.mean-var``: per-bin sums, per-bin sums of squares, frame count (three lines).

Only the base name of each PATH is used, re-rooted into the folder of the scp (the archive was
made elsewhere). Output, as the original's tidy step and ``preprocess.py``: ``feature/<utt>.npy``
(float32 [T, 40], normalised with the archive's statistics), ``cluster/<utt>.npy`` (int64),
``mean-std.npy`` (float64 (2, 40), population std) and the ``file_path,label_path,length`` csv.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from speech_data.manifest import ManifestRow, write_manifest

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class KaldiArchiveError(ValueError):
    """A missing or malformed archive file; the message names it."""


def _one(folder: Path, pattern: str, exclude: str = "", given: Optional[Path] = None) -> Path:
    if given is not None:
        if not given.is_file():
            raise KaldiArchiveError(f"{given}: no such file")
        return given
    found = sorted(p for p in folder.rglob(pattern) if not (exclude and p.name.endswith(exclude)))
    if len(found) != 1:
        raise KaldiArchiveError(f"{folder}: expected one {pattern} file, found {[str(p) for p in found] or 'none'}; "
                                "name it with --kaldi-feats / --kaldi-labels / --kaldi-mean-var")
    return found[0]


def read_mean_var(path: Path) -> np.ndarray:
    """``.mean-var`` (sums, sums of squares, count) -> float64 (2, D): mean, population std."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if len(lines) != 3:
        raise KaldiArchiveError(f"{path}: expected 3 lines (sums, sums of squares, frame count), found {len(lines)}")
    sums, squares = (np.array([float(x) for x in _NUMBER.findall(line)]) for line in lines[:2])
    counts = _NUMBER.findall(lines[2])
    if sums.size == 0 or sums.shape != squares.shape or len(counts) != 1 or float(counts[0]) <= 0:
        raise KaldiArchiveError(f"{path}: malformed statistics ({sums.size} sums, {squares.size} squares, count {counts})")
    count = float(counts[0])
    mean = sums / count
    return np.stack([mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0))])


def read_scp(path: Path) -> Iterator[tuple[str, Path, int]]:
    """``(utt, ark re-rooted next to the scp, byte offset)`` per line."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        match = re.fullmatch(r"(.+):(\d+)", parts[1].strip()) if len(parts) == 2 else None
        if match is None:
            raise KaldiArchiveError(f"{path}:{number}: expected 'UTT PATH:OFFSET', got {line!r}")
        yield parts[0], path.parent / Path(match.group(1)).name, int(match.group(2))


def read_label_line(ark: Path, offset: int) -> np.ndarray:
    """The integer ids of one text-ark entry (the line at ``offset``)."""
    with ark.open("rb") as handle:
        handle.seek(offset)
        text = handle.readline().decode()
    try:
        return np.array([int(token) for token in text.split()], dtype=np.int64)
    except ValueError:
        raise KaldiArchiveError(f"{ark}@{offset}: expected integer cluster ids, got {text[:80]!r}") from None


def tidy_kaldi_archive(archive: Path, out_dir: Path, manifest_name: str = "libri-360-data-cluster-pair",
                       num_clusters: int = 512, feats_scp: Optional[Path] = None, labels_scp: Optional[Path] = None,
                       mean_var: Optional[Path] = None) -> Path:
    """Convert the archive in ``archive`` into ``out_dir``; returns the manifest path."""
    import kaldiio

    feats_scp = _one(archive, "*.scp", exclude=".bas.scp", given=feats_scp)
    labels_scp = _one(archive, "*.bas.scp", given=labels_scp)
    mean_std = read_mean_var(_one(archive, "*.mean-var", given=mean_var))
    labels = {utt: (ark, offset) for utt, ark, offset in read_scp(labels_scp)}
    out_dir = out_dir.absolute()
    (out_dir / "feature").mkdir(parents=True, exist_ok=True)
    (out_dir / "cluster").mkdir(exist_ok=True)
    np.save(out_dir / "mean-std.npy", mean_std)
    rows = []
    for utt, ark, offset in read_scp(feats_scp):
        if utt not in labels:
            raise KaldiArchiveError(f"{labels_scp}: no labels for {utt} (listed in {feats_scp})")
        try:
            features = np.asarray(kaldiio.load_mat(f"{ark}:{offset}"), dtype=np.float64)
        except Exception as error:  # kaldiio's errors do not name the file
            raise KaldiArchiveError(f"{ark}@{offset} ({utt}): unreadable Kaldi matrix ({error})") from error
        if features.ndim != 2 or features.shape[1] != mean_std.shape[1]:
            raise KaldiArchiveError(f"{ark}@{offset} ({utt}): features {features.shape}, statistics for {mean_std.shape[1]} bins")
        ids = read_label_line(*labels[utt])
        frames = features.shape[0]
        if len(ids) not in (frames, (frames + 1) // 2):
            raise KaldiArchiveError(f"{labels_scp}: {utt} has {len(ids)} labels for {frames} frames")
        if ids.size and not (0 <= ids.min() and ids.max() < num_clusters):
            raise KaldiArchiveError(f"{labels_scp}: {utt} has cluster ids outside [0, {num_clusters})")
        feature_path, label_path = out_dir / "feature" / f"{utt}.npy", out_dir / "cluster" / f"{utt}.npy"
        np.save(feature_path, ((features - mean_std[0]) / mean_std[1]).astype(np.float32))
        np.save(label_path, ids)
        rows.append(ManifestRow(feature_path, label_path, frames))
    if not rows:
        raise KaldiArchiveError(f"{feats_scp}: no utterances")
    manifest = out_dir / f"{manifest_name}.csv"
    write_manifest(manifest, rows)
    return manifest
