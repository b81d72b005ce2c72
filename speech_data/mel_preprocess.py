"""``preprocess``: audio tsv -> normalised log-Mel features, K-means targets, manifest csv.

Passes (each over every utterance, in parallel worker processes when ``workers > 1``):

1. stats     read + check audio, log-Mel fbank, accumulate per-bin sum / sum of squares / count
             (skipped when a ``mean-std.npy`` is reused);
2. features  recompute the fbank (cheaper than writing and re-reading un-normalised copies),
             normalise, write ``feature/<utt_id>.npy`` float32 [T, 40] (and, with a reused K-means
             model, its labels right away);
3. K-means   fit on the frames of a seeded subset of utterances (skipped when a model is reused);
4. labels    nearest-centre labels, ``cluster/<utt_id>.npy`` int64 [T] (10 ms, one per feature frame).

Outputs in ``--out``: ``feature/``, ``cluster/``, ``mean-std.npy`` (float64 (2, 40)),
``kmeans-k<K>.npy`` (float64 centres (K, 40)), ``<tsv stem>.csv`` (manifest, see
``speech_data.manifest``), ``<tsv stem>.json`` (what was run, counts, skipped files).

Bad audio (unreadable, not 16 kHz, not mono, shorter than one window, sample count different from the
tsv) stops the run with an error naming the file, or with ``skip_bad`` is left out and reported.

``relabel_manifest`` is the second (HuBERT-style) iteration: labels from any feature function of the
stored log-Mel features, e.g. a trained model's layer-8 hidden states.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import soundfile
import torch
from tqdm import tqdm

from speech_data.fbank import DEFAULT_FBANK_CONFIG, log_mel_fbank, num_frames
from speech_data.kmeans import (
    LABEL_DTYPE,
    KMeansConfig,
    KMeansModel,
    fit_kmeans,
    gather_fitting_frames,
)
from speech_data.manifest import ManifestRow, read_audio_tsv, read_manifest, utterance_id, write_manifest
from speech_data.normalize import MeanStdAccumulator, frame_sums, load_mean_std, normalize, save_mean_std

SAMPLE_RATE = DEFAULT_FBANK_CONFIG.sample_rate
NUM_MEL_BINS = DEFAULT_FBANK_CONFIG.num_mel_bins
FEATURE_DIR = "feature"
LABEL_DIR = "cluster"
MEAN_STD_FILE = "mean-std.npy"


class PreprocessError(RuntimeError):
    """Bad input or inconsistent options; the message names the offending file."""


class BadAudioError(ValueError):
    """An audio file that cannot be used; the message starts with its path."""


# ----------------------------------------------------------------------------------------------
# Audio and per-utterance work (runs in worker processes)
# ----------------------------------------------------------------------------------------------


def load_audio(path: Path, expected_num_samples: int | None = None) -> np.ndarray:
    """Read a 16 kHz mono file as float32 [S] in [-1, 1].

    Raises:
        BadAudioError: unreadable, wrong rate, not mono, sample count different from
            ``expected_num_samples``, or shorter than one 25 ms window.
    """
    try:
        info = soundfile.info(str(path))
        if info.samplerate != SAMPLE_RATE:
            raise BadAudioError(f"{path}: sample rate {info.samplerate} Hz, expected {SAMPLE_RATE} Hz")
        if info.channels != 1:
            raise BadAudioError(f"{path}: {info.channels} channels, expected mono")
        audio, _ = soundfile.read(str(path), dtype="float32", always_2d=False)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise BadAudioError(f"{path}: unreadable audio ({error})") from None
    if expected_num_samples is not None and len(audio) != expected_num_samples:
        raise BadAudioError(f"{path}: {len(audio)} samples, but the tsv says {expected_num_samples}")
    if num_frames(len(audio)) == 0:
        window = DEFAULT_FBANK_CONFIG.window_length
        raise BadAudioError(f"{path}: {len(audio)} samples, shorter than one {window}-sample window")
    return audio


def audio_log_mel(audio: np.ndarray) -> np.ndarray:
    """Un-normalised log-Mel features of float32 audio [S]: float32 [T, 40]."""
    return log_mel_fbank(torch.from_numpy(audio)).numpy()


def save_npy(path: Path, array: np.ndarray) -> None:
    """np.save via a temporary name, so an interrupted run never leaves a truncated file."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as handle:
        np.save(handle, array)
    partial.replace(path)


# Per-process caches: each statistics/centres file is read once per worker, not once per utterance.
# A run writes these files before any task reads them, and clears the caches when it starts (workers
# are new processes for every run; the inline runner shares the caller's process).
@functools.lru_cache(maxsize=4)
def _cached_mean_std(path: Path) -> np.ndarray:
    return load_mean_std(path)


@functools.lru_cache(maxsize=4)
def _cached_kmeans(path: Path) -> KMeansModel:
    return KMeansModel.load(path)


Operation = Literal["stats", "features", "labels"]


@dataclass(frozen=True)
class UtteranceTask:
    """One utterance's work in one pass; paths only, so tasks pickle cheaply."""

    operation: Operation
    index: int
    audio_path: Path
    num_samples: int
    feature_path: Path
    label_path: Path
    mean_std_path: Path | None = None
    kmeans_path: Path | None = None


@dataclass(frozen=True)
class UtteranceResult:
    index: int
    num_frames: int = 0
    sums: tuple[np.ndarray, np.ndarray] | None = None
    bad_audio: str | None = None


def process_utterance(task: UtteranceTask) -> UtteranceResult:
    """Run ``task.operation`` for one utterance; bad audio is reported, other failures raise."""
    try:
        if task.operation == "labels":
            features = np.load(task.feature_path)
        else:
            log_mel = audio_log_mel(load_audio(task.audio_path, task.num_samples))
            if task.operation == "stats":
                count, total, total_of_squares = frame_sums(log_mel)
                return UtteranceResult(task.index, count, (total, total_of_squares))
            assert task.mean_std_path is not None
            mean_std = _cached_mean_std(task.mean_std_path)
            features = normalize(log_mel, mean_std)
            save_npy(task.feature_path, features)
        if task.kmeans_path is not None:
            model = _cached_kmeans(task.kmeans_path)
            save_npy(task.label_path, model.predict(features))
        return UtteranceResult(task.index, len(features))
    except BadAudioError as error:
        return UtteranceResult(task.index, bad_audio=str(error))
    except Exception as error:
        raise RuntimeError(f"{task.audio_path}: {task.operation} failed: {error!r}") from error


def _init_worker() -> None:
    # Parallelism comes from the worker processes; intra-op threads would oversubscribe the cores.
    torch.set_num_threads(1)


class UtteranceRunner:
    """Runs tasks in order, inline or in a spawn-based process pool (fork is unsafe after torch/OpenMP use)."""

    def __init__(self, workers: int, progress: bool) -> None:
        self.workers = workers
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> UtteranceRunner:
        if self.workers > 1:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            # On an error, drop queued utterances instead of finishing the whole corpus first.
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run(self, tasks: Sequence[UtteranceTask], description: str) -> Iterator[UtteranceResult]:
        """Yield one result per task, in task order, with a progress bar."""
        if self._pool is None:
            results: Iterable[UtteranceResult] = map(process_utterance, tasks)
        else:
            chunk = max(1, min(32, len(tasks) // (8 * self.workers)))
            results = self._pool.map(process_utterance, tasks, chunksize=chunk)
        yield from tqdm(results, total=len(tasks), desc=description, unit="utt", disable=not self.progress, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# The preprocess run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything one ``preprocess`` run needs."""

    tsv: Path
    out_dir: Path
    kmeans: KMeansConfig = KMeansConfig()
    workers: int = 1
    skip_bad: bool = False
    # Reuse statistics / centres (e.g. the training set's for dev and test sets).
    mean_std_path: Path | None = None
    kmeans_path: Path | None = None
    # Replace an existing mean-std.npy / kmeans-k<K>.npy in out_dir with freshly computed ones.
    overwrite: bool = False
    manifest_name: str | None = None
    progress: bool = True


@dataclass
class PreprocessSummary:
    """What a run produced."""

    manifest_path: Path
    mean_std_path: Path
    kmeans_path: Path
    num_utterances: int
    num_frames: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (audio path, reason)
    kmeans_fit_frames: int | None = None  # None when the model was reused
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        hours = self.num_frames * DEFAULT_FBANK_CONFIG.frame_shift_ms / 1000 / 3600
        kmeans = (
            f"k-means fitted on {self.kmeans_fit_frames} frames" if self.kmeans_fit_frames is not None else "k-means reused"
        )
        stages = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.seconds.items())
        return (
            f"preprocess: {self.num_utterances} utterances, {self.num_frames} frames ({hours:.2f} h), "
            f"{len(self.skipped)} skipped; manifest {self.manifest_path}; mean-std {self.mean_std_path}; "
            f"{kmeans} -> {self.kmeans_path}; {sum(self.seconds.values()):.1f}s ({stages})"
        )


def _output_path(reused: Path | None, default: Path, overwrite: bool, what: str, option: str) -> Path:
    """Where statistics/centres are read from or written to; refuses to clobber another run's file."""
    if reused is not None:
        if not reused.is_file():
            raise PreprocessError(f"{reused}: {what} to reuse does not exist")
        return reused.absolute()
    if default.exists() and not overwrite:
        raise PreprocessError(
            f"{default}: {what} already exists; reuse it with {option} {default}, or pass --overwrite to recompute it"
        )
    return default


def run_preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Run the whole pipeline (see the module docstring); raises PreprocessError on bad input."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    _cached_mean_std.cache_clear()
    _cached_kmeans.cache_clear()
    try:
        entries = read_audio_tsv(config.tsv)
    except (OSError, ValueError) as error:
        raise PreprocessError(str(error)) from None
    if not entries:
        raise PreprocessError(f"{config.tsv}: no audio files listed")
    out_dir = config.out_dir.absolute()
    feature_dir, label_dir = out_dir / FEATURE_DIR, out_dir / LABEL_DIR
    feature_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)

    first_path_of_id: dict[str, Path] = {}
    for entry in entries:
        utt = utterance_id(entry.path)
        if utt in first_path_of_id:
            raise PreprocessError(f"{entry.path}: utterance id {utt!r} already used by {first_path_of_id[utt]}")
        first_path_of_id[utt] = entry.path

    mean_std_path = _output_path(config.mean_std_path, out_dir / MEAN_STD_FILE, config.overwrite, "mean/std", "--mean-std")
    default_kmeans_path = out_dir / f"kmeans-k{config.kmeans.num_clusters}.npy"
    kmeans_path = _output_path(config.kmeans_path, default_kmeans_path, config.overwrite, "K-means model", "--kmeans-model")
    if config.mean_std_path is not None:
        _check_dim(load_mean_std(mean_std_path).shape[1], mean_std_path, "mean/std")
    if config.kmeans_path is not None:
        _check_dim(KMeansModel.load(kmeans_path).dim, kmeans_path, "K-means model")

    tasks = [
        UtteranceTask(
            operation="stats",
            index=index,
            audio_path=entry.path,
            num_samples=entry.num_samples,
            feature_path=feature_dir / f"{utterance_id(entry.path)}.npy",
            label_path=label_dir / f"{utterance_id(entry.path)}.npy",
        )
        for index, entry in enumerate(entries)
    ]
    skipped: dict[int, str] = {}

    def keep_good(results: Iterator[UtteranceResult]) -> dict[int, UtteranceResult]:
        good = {}
        for result in results:
            if result.bad_audio is None:
                good[result.index] = result
            elif config.skip_bad:
                skipped[result.index] = result.bad_audio
            else:
                raise PreprocessError(f"{result.bad_audio} (pass --skip-bad to leave bad files out)")
        return good

    fit_frames: int | None = None
    with UtteranceRunner(config.workers, config.progress) as runner:
        if config.mean_std_path is None:
            stage_start = time.perf_counter()
            accumulator = MeanStdAccumulator(NUM_MEL_BINS)
            # Results arrive in task order, so the float64 sums do not depend on the worker count.
            for result in keep_good(runner.run(tasks, "fbank statistics")).values():
                assert result.sums is not None
                accumulator.add_sums(result.num_frames, *result.sums)
            if accumulator.count == 0:
                raise PreprocessError(f"{config.tsv}: no usable audio")
            save_mean_std(mean_std_path, accumulator.mean_std())
            seconds["stats"] = time.perf_counter() - stage_start

        stage_start = time.perf_counter()
        labels_known = config.kmeans_path is not None
        feature_tasks = [
            _with(task, operation="features", mean_std_path=mean_std_path, kmeans_path=kmeans_path if labels_known else None)
            for task in tasks
            if task.index not in skipped
        ]
        frame_counts = {index: result.num_frames for index, result in keep_good(runner.run(feature_tasks, "features")).items()}
        if not frame_counts:
            raise PreprocessError(f"{config.tsv}: no usable audio")
        seconds["features"] = time.perf_counter() - stage_start

        if not labels_known:
            stage_start = time.perf_counter()
            good_feature_paths = [task.feature_path for task in feature_tasks if task.index in frame_counts]
            frames = gather_fitting_frames(good_feature_paths, np.load, config.kmeans)
            fit_frames = len(frames)
            try:
                model = fit_kmeans(frames, config.kmeans)
            except ValueError as error:
                raise PreprocessError(f"{config.tsv}: {error}") from None
            model.save(kmeans_path)
            seconds["kmeans"] = time.perf_counter() - stage_start

            stage_start = time.perf_counter()
            label_tasks = [
                _with(task, operation="labels", kmeans_path=kmeans_path) for task in feature_tasks if task.index in frame_counts
            ]
            keep_good(runner.run(label_tasks, "labels"))
            seconds["labels"] = time.perf_counter() - stage_start

    manifest_path = out_dir / f"{config.manifest_name or config.tsv.stem}.csv"
    rows = [
        ManifestRow(tasks[index].feature_path, tasks[index].label_path, frame_counts[index]) for index in sorted(frame_counts)
    ]
    write_manifest(manifest_path, rows)
    summary = PreprocessSummary(
        manifest_path=manifest_path,
        mean_std_path=mean_std_path,
        kmeans_path=kmeans_path,
        num_utterances=len(rows),
        num_frames=sum(frame_counts.values()),
        skipped=[(str(tasks[index].audio_path), reason) for index, reason in sorted(skipped.items())],
        kmeans_fit_frames=fit_frames,
        seconds=seconds,
    )
    _write_run_record(manifest_path.with_suffix(".json"), config, summary, time.perf_counter() - started)
    return summary


def _with(task: UtteranceTask, **changes: object) -> UtteranceTask:
    return dataclasses.replace(task, **changes)  # type: ignore[arg-type]


def _check_dim(dim: int, path: Path, what: str) -> None:
    if dim != NUM_MEL_BINS:
        raise PreprocessError(f"{path}: {what} has dimension {dim}, the features have {NUM_MEL_BINS} Mel bins")


def _write_run_record(path: Path, config: PreprocessConfig, summary: PreprocessSummary, total_seconds: float) -> None:
    """Provenance next to the manifest: options, inputs, counts, skipped files."""
    record = {
        "tsv": str(config.tsv.absolute()),
        "kmeans_config": asdict(config.kmeans),
        "mean_std_reused": config.mean_std_path is not None,
        "kmeans_reused": config.kmeans_path is not None,
        "mean_std_path": str(summary.mean_std_path),
        "kmeans_path": str(summary.kmeans_path),
        "num_utterances": summary.num_utterances,
        "num_frames_10ms": summary.num_frames,
        "kmeans_fit_frames": summary.kmeans_fit_frames,
        "skipped": [{"path": audio, "reason": reason} for audio, reason in summary.skipped],
        "seconds": {**summary.seconds, "total": total_seconds},
        "feature_format": "float32 [T, 40] normalised log-Mel, 10 ms frames",
        "label_format": f"{np.dtype(LABEL_DTYPE).name} [T], one label per 10 ms frame",
    }
    path.write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------
# Second iteration: labels from a trained model's representation
# ----------------------------------------------------------------------------------------------


def relabel_manifest(
    manifest_path: Path,
    feature_fn: Callable[[torch.Tensor], torch.Tensor],
    out_dir: Path,
    config: KMeansConfig,
    *,
    label_dir_name: str = "cluster_iter2",
    kmeans_model: KMeansModel | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[Path, KMeansModel]:
    """New K-means targets from a feature function of the stored (normalised, 10 ms) log-Mel features.

    Args:
        manifest_path: a manifest written by ``run_preprocess``.
        feature_fn: Tensor[T, 40] float32 on ``device`` -> Tensor[T', D], e.g. layer-8 hidden states
            of a trained MelHuBERT (which stacks to 20 ms itself when it runs at 20 ms). Called under
            ``torch.no_grad``; put the model in eval mode first. T' must be T (10 ms model) or
            ceil(T / 2) (20 ms model), the two label rates the MelHuBERT dataset understands.
        out_dir: receives ``<label_dir_name>/<utt_id>.npy`` (int64 [T']),
            ``<label_dir_name>-kmeans-k<K>.npy`` and ``<manifest stem>-<label_dir_name>.csv``.
        config: K-means options (subset fraction, seed, ...).
        kmeans_model: reuse these centres instead of fitting (dev/test sets).

    Returns:
        (new manifest path, the K-means model used). The manifest keeps the feature paths and the
        10 ms ``length``; only ``label_path`` changes.
    """
    rows = read_manifest(manifest_path)
    if not rows:
        raise PreprocessError(f"{manifest_path}: empty manifest")
    out_dir = out_dir.absolute()
    label_dir = out_dir / label_dir_name
    label_dir.mkdir(parents=True, exist_ok=True)

    def model_features(row: ManifestRow) -> torch.Tensor:
        return feature_fn(torch.from_numpy(np.load(row.file_path)).to(device))

    if kmeans_model is None:
        kmeans_model = fit_kmeans(gather_fitting_frames(rows, model_features, config), config)
        kmeans_model.save(out_dir / f"{label_dir_name}-kmeans-k{kmeans_model.num_clusters}.npy")

    new_rows = []
    for row in tqdm(rows, desc="relabel", unit="utt", disable=not progress, file=sys.stderr):
        with torch.no_grad():
            labels = kmeans_model.predict(model_features(row))
        if len(labels) not in (row.length, (row.length + 1) // 2):
            raise PreprocessError(
                f"{row.file_path}: feature function gave {len(labels)} frames for {row.length} 10 ms frames "
                f"(expected {row.length} or {(row.length + 1) // 2})"
            )
        label_path = label_dir / f"{utterance_id(row.file_path)}.npy"
        save_npy(label_path, labels)
        new_rows.append(ManifestRow(row.file_path, label_path, row.length))
    new_manifest = out_dir / f"{manifest_path.stem}-{label_dir_name}.csv"
    write_manifest(new_manifest, new_rows)
    return new_manifest, kmeans_model


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="preprocess.py",
        description="MelHuBERT data preparation: normalised 40-bin log-Mel features (10 ms), "
        "K-means targets and a file_path,label_path,length manifest from a DPHuBERT-format tsv.",
    )
    parser.add_argument(
        "--tsv", type=Path, default=None, help="audio list: root dir, then relative_path<TAB>num_samples lines"
    )
    kaldi = parser.add_argument_group("the original MelHuBERT Kaldi archive (instead of --tsv; speech_data/kaldi_archive.py)")
    kaldi.add_argument("--from-kaldi", type=Path, default=None, metavar="ARCHIVE_DIR",
                       help="convert the original's fbank .scp/.ark, *.bas.scp labels and .mean-var into --out")
    kaldi.add_argument("--kaldi-feats", type=Path, default=None, help="the fbank .scp (default: the one in ARCHIVE_DIR)")
    kaldi.add_argument("--kaldi-labels", type=Path, default=None, help="the labels .bas.scp (default: the one in ARCHIVE_DIR)")
    kaldi.add_argument("--kaldi-mean-var", type=Path, default=None, help="the .mean-var (default: the one in ARCHIVE_DIR)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--num-clusters", type=int, default=512)
    parser.add_argument("--kmeans-fraction", type=float, default=0.1, help="fraction of utterances whose frames fit K-means")
    parser.add_argument("--max-frames", type=int, default=None, help="cap on K-means fitting frames (seeded subsample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kmeans-n-init", type=int, default=KMeansConfig.n_init)
    parser.add_argument("--kmeans-batch-size", type=int, default=KMeansConfig.batch_size)
    parser.add_argument("--kmeans-max-iter", type=int, default=KMeansConfig.max_iter)
    parser.add_argument("--kmeans-threads", type=int, default=None, help="threads for K-means fitting (default: all cores)")
    parser.add_argument("--workers", type=int, default=_available_cores(), help="worker processes (default: all cores)")
    parser.add_argument("--skip-bad", action="store_true", help="leave out bad audio files and report them instead of stopping")
    parser.add_argument("--mean-std", type=Path, default=None, help="reuse this mean-std.npy (e.g. the training set's)")
    parser.add_argument("--kmeans-model", type=Path, default=None, help="reuse these K-means centres (.npy)")
    parser.add_argument("--overwrite", action="store_true", help="recompute an existing mean-std.npy / kmeans model in --out")
    parser.add_argument("--manifest-name", default=None, help="manifest file stem (default: the tsv's stem)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.tsv is None) == (args.from_kaldi is None):
        parser.error("give exactly one of --tsv (compute from audio) and --from-kaldi (the original's archive)")
    if args.from_kaldi is not None:
        from speech_data.kaldi_archive import KaldiArchiveError, tidy_kaldi_archive

        try:
            manifest = tidy_kaldi_archive(args.from_kaldi, args.out, args.manifest_name or "libri-360-data-cluster-pair",
                                          num_clusters=args.num_clusters, feats_scp=args.kaldi_feats,
                                          labels_scp=args.kaldi_labels, mean_var=args.kaldi_mean_var)
        except (KaldiArchiveError, ModuleNotFoundError) as error:
            print(f"preprocess: error: {error}", file=sys.stderr)
            return 1
        print(f"preprocess: converted the Kaldi archive {args.from_kaldi} -> {manifest}")
        return 0
    try:
        config = PreprocessConfig(
            tsv=args.tsv,
            out_dir=args.out,
            kmeans=KMeansConfig(
                num_clusters=args.num_clusters,
                fraction=args.kmeans_fraction,
                max_frames=args.max_frames,
                seed=args.seed,
                n_init=args.kmeans_n_init,
                batch_size=args.kmeans_batch_size,
                max_iter=args.kmeans_max_iter,
                num_threads=args.kmeans_threads,
            ),
            workers=args.workers,
            skip_bad=args.skip_bad,
            mean_std_path=args.mean_std,
            kmeans_path=args.kmeans_model,
            overwrite=args.overwrite,
            manifest_name=args.manifest_name,
            progress=not args.no_progress,
        )
        summary = run_preprocess(config)
    except (PreprocessError, ValueError) as error:
        print(f"preprocess: error: {error}", file=sys.stderr)
        return 1
    for audio, reason in summary.skipped:
        print(f"preprocess: skipped {reason}", file=sys.stderr)
    print(summary.line())
    return 0
