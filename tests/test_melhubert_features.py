"""MelHuBERT features and targets: fbank parity with Kaldi, normalisation, 20 ms stacking,
K-means targets (both iterations) and the end-to-end ``preprocess`` command."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile
import torch
from sklearn.cluster import MiniBatchKMeans
from threadpoolctl import threadpool_limits

from speech_data.fbank import halve_labels, log_mel_fbank, num_frames, stack_frames, stacked_num_frames
from speech_data.kmeans import (
    KMeansConfig,
    KMeansModel,
    cap_frames,
    choose_fitting_utterances,
    fit_kmeans,
    label_inputs,
    learn_kmeans,
)
from speech_data.manifest import MANIFEST_HEADER, ManifestRow, read_audio_tsv, read_manifest, write_manifest
from speech_data.normalize import MeanStdAccumulator, load_mean_std, normalize, save_mean_std
from speech_data.mel_preprocess import PreprocessConfig, PreprocessError, main, relabel_manifest, run_preprocess

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16_000


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def kaldi_native_log_mel(audio: np.ndarray) -> np.ndarray:
    """Reference: kaldi-native-fbank with MelHuBERT's options, on int16-scale samples. [T, 40]."""
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = SAMPLE_RATE
    options.frame_opts.dither = 0.0
    options.frame_opts.window_type = "hamming"
    options.frame_opts.frame_length_ms = 25.0
    options.frame_opts.frame_shift_ms = 10.0
    options.frame_opts.snip_edges = True
    options.frame_opts.preemph_coeff = 0.97
    options.frame_opts.remove_dc_offset = True
    options.mel_opts.num_bins = 40
    options.mel_opts.low_freq = 20.0
    options.mel_opts.high_freq = 0.0
    options.use_energy = False
    options.use_power = True
    options.use_log_fbank = True
    extractor = knf.OnlineFbank(options)
    extractor.accept_waveform(SAMPLE_RATE, (audio.astype(np.float64) * 32768.0).tolist())
    extractor.input_finished()
    frames = [extractor.get_frame(index) for index in range(extractor.num_frames_ready)]
    return np.stack(frames) if frames else np.zeros((0, 40), dtype=np.float32)


def vowel_like(seconds: float, f0: float = 120.0, seed: int = 0) -> np.ndarray:
    """Harmonics with two formant bumps, vibrato and noise, after a near-silent lead-in (quiet frames
    are where log-Mel precision is hardest): float32 [S] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    time_axis = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3.0 * time_axis))
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    signal = np.zeros_like(time_axis)
    for harmonic in range(1, 60):
        frequency = harmonic * f0
        if frequency > 7500:
            break
        envelope = np.exp(-(((frequency - 700) / 250) ** 2)) + 0.5 * np.exp(-(((frequency - 1800) / 300) ** 2))
        signal += (1.0 / harmonic + envelope) * np.sin(harmonic * phase)
    signal *= 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * time_axis) ** 2  # syllable-like amplitude changes
    signal = 0.4 * signal / np.abs(signal).max()
    signal[: int(0.1 * SAMPLE_RATE)] = 0.0
    signal += 2e-4 * rng.standard_normal(len(time_axis))
    return np.clip(signal, -1, 1).astype(np.float32)


def write_corpus(directory: Path, durations: list[float], name: str = "train") -> tuple[Path, list[Path]]:
    """16-bit 16 kHz wavs plus a DPHuBERT tsv listing them; returns (tsv path, audio paths)."""
    audio_dir = directory / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    lines = [str(audio_dir)]
    for index, seconds in enumerate(durations):
        path = audio_dir / f"{name}-{index:03d}.wav"
        audio = vowel_like(seconds, f0=90.0 + 25 * index, seed=index)
        soundfile.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
        lines.append(f"{path.name}\t{len(audio)}")
    tsv = directory / f"{name}.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return tsv, paths


def read_back(path: Path) -> np.ndarray:
    audio, _ = soundfile.read(path, dtype="float32")
    return audio


# One fitting thread: sklearn's OpenMP loops slow down by ~30x when the machine is busy.
SMALL_KMEANS = KMeansConfig(num_clusters=8, fraction=0.5, seed=0, n_init=2, batch_size=256, max_iter=20, num_threads=1)


# ----------------------------------------------------------------------------------------------
# log-Mel filterbank
# ----------------------------------------------------------------------------------------------


def test_fbank_matches_kaldi_native_fbank_on_vowel_like_signal() -> None:
    audio = vowel_like(1.5, f0=110.0)
    reference = kaldi_native_log_mel(audio)
    ours = log_mel_fbank(torch.from_numpy(audio))
    assert ours.shape == (num_frames(len(audio)), 40) == reference.shape
    assert ours.dtype == torch.float32
    # The signal must exercise the whole dynamic range, or a parity check would say little.
    assert reference.max() - reference.min() > 10
    assert np.abs(ours.numpy() - reference).max() <= 1e-3


def test_fbank_matches_kaldi_native_fbank_on_espeak_utterance(tmp_path: Path) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not on PATH (install the espeak-ng Debian package) - synthetic-speech parity not checked")
    import soxr

    wav = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(wav), "Self supervised speech models learn hidden units."], check=True)
    speech, rate = soundfile.read(wav, dtype="float64")
    if speech.ndim > 1:
        speech = speech.mean(axis=1)
    audio = np.clip(soxr.resample(speech, rate, SAMPLE_RATE), -1, 1).astype(np.float32)
    reference = kaldi_native_log_mel(audio)
    ours = log_mel_fbank(torch.from_numpy(audio)).numpy()
    assert ours.shape == reference.shape and len(ours) > 100
    assert np.abs(ours - reference).max() <= 1e-3


@pytest.mark.parametrize("num_samples", [0, 1, 399, 400, 401, 559, 560, 16_000, 16_123])
def test_frame_count_formula(num_samples: int) -> None:
    expected = 1 + (num_samples - 400) // 160 if num_samples >= 400 else 0
    audio = vowel_like(num_samples / SAMPLE_RATE) if num_samples else np.zeros(0, dtype=np.float32)
    assert num_frames(num_samples) == expected
    assert log_mel_fbank(torch.from_numpy(audio)).shape == (expected, 40)
    assert len(kaldi_native_log_mel(audio)) == expected


def test_padded_batch_matches_single_utterances_and_frame_lengths() -> None:
    first, second = vowel_like(0.5, f0=100.0, seed=1), vowel_like(0.77, f0=180.0, seed=2)
    batch = torch.zeros(2, len(second))
    batch[0, : len(first)] = torch.from_numpy(first)
    batch[1] = torch.from_numpy(second)
    features = log_mel_fbank(batch)
    lengths = num_frames(torch.tensor([len(first), len(second)]))
    assert lengths.tolist() == [num_frames(len(first)), num_frames(len(second))]
    assert features.shape == (2, num_frames(len(second)), 40)
    for row, audio in enumerate([first, second]):
        single = log_mel_fbank(torch.from_numpy(audio))
        torch.testing.assert_close(features[row, : lengths[row]], single, rtol=0, atol=1e-4)
    assert num_frames(np.array([399, 400, 560])).tolist() == [0, 1, 2]
    # float64 input is computed (and returned) in float64.
    assert log_mel_fbank(torch.from_numpy(first).double()).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_fbank_on_cuda_matches_cpu() -> None:
    batch = torch.from_numpy(np.stack([vowel_like(0.8, f0=f0, seed=i) for i, f0 in enumerate([100.0, 210.0])]))
    torch.testing.assert_close(log_mel_fbank(batch.cuda()).cpu(), log_mel_fbank(batch), rtol=0, atol=1e-3)


# ----------------------------------------------------------------------------------------------
# normalisation
# ----------------------------------------------------------------------------------------------


def test_mean_std_equals_numpy_on_stacked_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    utterances = [(rng.normal(12.0, 4.0, size=(length, 40)) + np.arange(40)).astype(np.float32) for length in (17, 250, 3)]
    accumulator = MeanStdAccumulator(40)
    for features in utterances:
        accumulator.add(features)
    mean_std = accumulator.mean_std()
    every_frame = np.concatenate(utterances).astype(np.float64)
    assert mean_std.shape == (2, 40) and accumulator.count == 270
    np.testing.assert_allclose(mean_std[0], every_frame.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(mean_std[1], every_frame.std(axis=0), rtol=1e-9)  # population std (ddof=0)

    save_mean_std(tmp_path / "mean-std.npy", mean_std)
    stored = np.load(tmp_path / "mean-std.npy")
    assert stored.shape == (2, 40) and stored.dtype == np.float64
    np.save(tmp_path / "float32.npy", mean_std.astype(np.float32))
    np.testing.assert_allclose(load_mean_std(tmp_path / "float32.npy"), mean_std, rtol=1e-6)
    np.save(tmp_path / "wrong.npy", np.zeros((40, 2)))
    with pytest.raises(ValueError, match="wrong.npy"):
        load_mean_std(tmp_path / "wrong.npy")

    normalised = normalize(utterances[1], mean_std)
    assert normalised.dtype == np.float32
    np.testing.assert_allclose(normalised, (utterances[1] - mean_std[0]) / mean_std[1], rtol=1e-5, atol=1e-5)
    tensor_normalised = normalize(torch.from_numpy(utterances[1]), mean_std)
    np.testing.assert_allclose(tensor_normalised.numpy(), normalised, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 20 ms frame period
# ----------------------------------------------------------------------------------------------


def test_stack_frames_even_and_odd_lengths() -> None:
    frames = np.arange(5 * 3, dtype=np.float32).reshape(5, 3)  # frame t = [3t, 3t+1, 3t+2]
    stacked = stack_frames(frames)
    assert stacked.shape == (3, 6) and stacked.dtype == np.float32
    np.testing.assert_array_equal(stacked[0], [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(stacked[1], [6, 7, 8, 9, 10, 11])
    np.testing.assert_array_equal(stacked[2], [12, 13, 14, 0, 0, 0])  # odd T: zero second half
    assert stack_frames(frames[:4]).shape == (2, 6)
    np.testing.assert_array_equal(stack_frames(frames[:4])[1], [6, 7, 8, 9, 10, 11])

    batch = torch.zeros(2, 5, 3)
    batch[0] = torch.from_numpy(frames)
    batch[1, :4] = torch.from_numpy(frames[:4])  # zero-padded shorter row
    stacked_batch = stack_frames(batch)
    assert stacked_batch.shape == (2, 3, 6)
    torch.testing.assert_close(stacked_batch[0], torch.from_numpy(stacked))
    torch.testing.assert_close(stacked_batch[1, :2], torch.from_numpy(stack_frames(frames[:4])))
    assert stacked_num_frames(5) == 3 and stacked_num_frames(4) == 2
    assert stacked_num_frames(torch.tensor([4, 5])).tolist() == [2, 3]


def test_halve_labels_keeps_even_frames_or_matching_labels() -> None:
    labels_10ms = np.array([7, 1, 8, 2, 9])
    np.testing.assert_array_equal(halve_labels(labels_10ms, 3), [7, 8, 9])
    np.testing.assert_array_equal(halve_labels(np.array([7, 1, 8, 2]), 2), [7, 8])
    labels_20ms = np.array([4, 5, 6])
    np.testing.assert_array_equal(halve_labels(labels_20ms, 3), [4, 5, 6])  # already at 20 ms: as is
    assert halve_labels(torch.tensor([1, 2, 3, 4]), 2).tolist() == [1, 3]
    with pytest.raises(ValueError):
        halve_labels(np.arange(9), 3)


# ----------------------------------------------------------------------------------------------
# K-means
# ----------------------------------------------------------------------------------------------


def clustered_frames(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(12, 40))
    return centres[rng.integers(0, 12, count)] + rng.normal(0, 1, size=(count, 40))


def test_kmeans_is_seeded_and_labels_in_range() -> None:
    frames = clustered_frames(3000, seed=0)
    config = KMeansConfig(num_clusters=16, seed=5, n_init=2, batch_size=512, max_iter=20, num_threads=1)
    first, second = fit_kmeans(frames, config), fit_kmeans(frames, config)
    assert first.centers.shape == (16, 40) and first.centers.dtype == np.float64
    np.testing.assert_array_equal(first.centers, second.centers)
    labels = first.predict(frames.astype(np.float32))
    assert labels.dtype == np.int64 and labels.shape == (3000,)
    assert labels.min() >= 0 and labels.max() < 16
    assert len(np.unique(labels)) > 8  # the clusters are actually used
    other_seed = fit_kmeans(frames, dataclasses.replace(config, seed=6))
    assert not np.array_equal(other_seed.centers, first.centers)
    with pytest.raises(ValueError, match="at least as many frames as clusters"):
        fit_kmeans(frames[:10], config)


def test_predict_from_saved_centres_equals_sklearn_predict(tmp_path: Path) -> None:
    frames = clustered_frames(4000, seed=1)
    config = KMeansConfig(num_clusters=32, seed=3, n_init=3, batch_size=1024, max_iter=30, num_threads=1)
    model = fit_kmeans(frames, config)
    estimator = MiniBatchKMeans(
        n_clusters=32, n_init=3, batch_size=1024, max_iter=30, max_no_improvement=100,
        reassignment_ratio=0.0, random_state=3, compute_labels=False,
    )
    with threadpool_limits(limits=1):
        estimator.fit(frames)
    np.testing.assert_array_equal(model.centers, estimator.cluster_centers_)

    model.save(tmp_path / "kmeans.npy")
    loaded = KMeansModel.load(tmp_path / "kmeans.npy")
    new_frames = np.concatenate([clustered_frames(20_000, seed=2), np.random.default_rng(9).normal(0, 6, (5000, 40))])
    with threadpool_limits(limits=1):
        expected = estimator.predict(new_frames)
        expected_from_float32 = estimator.predict(new_frames.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(loaded.predict(new_frames), expected)
    tensor_labels = loaded.predict_tensor(torch.from_numpy(new_frames).float())
    assert tensor_labels.dtype == torch.int64
    np.testing.assert_array_equal(tensor_labels.numpy(), expected_from_float32)


def test_fitting_subset_is_a_seeded_fraction_of_utterances() -> None:
    chosen = choose_fitting_utterances(10, 0.3, seed=4)
    assert len(chosen) == 3 and len(set(chosen.tolist())) == 3 and chosen.max() < 10
    np.testing.assert_array_equal(chosen, choose_fitting_utterances(10, 0.3, seed=4))
    assert len(choose_fitting_utterances(10, 0.01, seed=0)) == 1  # never empty
    frames = np.arange(100.0)[:, None]
    capped = cap_frames(frames, 10, seed=0)
    assert capped.shape == (10, 1) and len(np.unique(capped)) == 10 and np.all(np.diff(capped[:, 0]) > 0)
    np.testing.assert_array_equal(capped, cap_frames(frames, 10, seed=0))
    assert cap_frames(frames, None, seed=0) is frames


def test_learn_kmeans_with_a_toy_feature_function_labels_at_its_frame_rate() -> None:
    """Second iteration on waveforms: a fixed random projection of stacked log-Mel as the 'model'."""
    projection = torch.from_numpy(np.random.default_rng(0).normal(size=(80, 16))).float()

    def toy_model_layer(waveform: torch.Tensor) -> torch.Tensor:  # [S] -> [ceil(T / 2), 16] (20 ms)
        return stack_frames(log_mel_fbank(waveform)) @ projection

    durations = [0.6, 0.9, 1.1, 0.45]
    waveforms = [torch.from_numpy(vowel_like(seconds, f0=100 + 40 * i, seed=i)) for i, seconds in enumerate(durations)]
    config = KMeansConfig(num_clusters=6, fraction=0.5, seed=1, n_init=2, batch_size=128, max_iter=10, num_threads=1)
    model = learn_kmeans(waveforms, toy_model_layer, config)
    assert model.centers.shape == (6, 16)
    np.testing.assert_array_equal(model.centers, learn_kmeans(waveforms, toy_model_layer, config).centers)
    for waveform, labels in zip(waveforms, label_inputs(waveforms, toy_model_layer, model), strict=True):
        assert labels.shape == (stacked_num_frames(num_frames(len(waveform))),)
        np.testing.assert_array_equal(labels, model.predict(toy_model_layer(waveform)))
        assert labels.min() >= 0 and labels.max() < 6


# ----------------------------------------------------------------------------------------------
# manifest and tsv
# ----------------------------------------------------------------------------------------------


def test_audio_tsv_reader_reports_malformed_lines(tmp_path: Path) -> None:
    tsv = tmp_path / "list.tsv"
    tsv.write_text("/data/root\na/b.flac\t16000\n\nc.flac\t8000\n")
    entries = read_audio_tsv(tsv)
    assert [(str(e.path), e.num_samples) for e in entries] == [("/data/root/a/b.flac", 16000), ("/data/root/c.flac", 8000)]
    tsv.write_text("/data/root\na.flac 16000\n")
    with pytest.raises(ValueError, match=r"list.tsv:2"):
        read_audio_tsv(tsv)
    tsv.write_text("relative/root\na.flac\t1\n")
    with pytest.raises(ValueError, match="absolute"):
        read_audio_tsv(tsv)


def test_manifest_round_trip_and_malformed_rows(tmp_path: Path) -> None:
    rows = [ManifestRow(tmp_path / "feature" / "a.npy", tmp_path / "cluster" / "a.npy", 321)]
    write_manifest(tmp_path / "m.csv", rows)
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "file_path,label_path,length", f"{tmp_path}/feature/a.npy,{tmp_path}/cluster/a.npy,321"
    ]
    assert read_manifest(tmp_path / "m.csv") == rows
    (tmp_path / "bad.csv").write_text("file_path,label_path,length\n/a.npy,/b.npy\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        read_manifest(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------------------------
# end-to-end preprocess
# ----------------------------------------------------------------------------------------------

DURATIONS = [0.6, 1.2, 0.85, 1.6, 0.43, 1.0]
Preprocessed = tuple[Path, list[Path], Path]  # (tsv, audio paths, output directory)


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Preprocessed:
    """One inline preprocess run shared by the tests below: (tsv, audio paths, out dir)."""
    directory = tmp_path_factory.mktemp("corpus")
    tsv, paths = write_corpus(directory, DURATIONS)
    out = directory / "out"
    summary = run_preprocess(PreprocessConfig(tsv=tsv, out_dir=out, kmeans=SMALL_KMEANS, workers=1, progress=False))
    assert summary.num_utterances == len(DURATIONS) and not summary.skipped
    chosen = choose_fitting_utterances(len(paths), SMALL_KMEANS.fraction, SMALL_KMEANS.seed)
    assert summary.kmeans_fit_frames == sum(num_frames(len(read_back(paths[i]))) for i in chosen)
    assert "6 utterances" in summary.line()
    return tsv, paths, out


def test_preprocess_writes_consistent_features_labels_and_manifest(preprocessed: Preprocessed) -> None:
    tsv, paths, out = preprocessed
    assert (out / "train.csv").read_text().splitlines()[0] == ",".join(MANIFEST_HEADER)
    rows = read_manifest(out / "train.csv")
    assert len(rows) == len(paths)
    mean_std = np.load(out / "mean-std.npy")
    assert mean_std.shape == (2, 40)
    model = KMeansModel.load(out / "kmeans-k8.npy")
    assert model.centers.shape == (8, 40)

    raw_features = [log_mel_fbank(torch.from_numpy(read_back(path))).numpy().astype(np.float64) for path in paths]
    every_frame = np.concatenate(raw_features)
    np.testing.assert_allclose(mean_std[0], every_frame.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(mean_std[1], every_frame.std(axis=0), rtol=1e-7)

    stored_features = []
    for row, path, raw in zip(rows, paths, raw_features, strict=True):
        assert row.file_path.is_absolute() and row.label_path.is_absolute()
        assert row.file_path == out / "feature" / f"{path.stem}.npy"
        features, labels = np.load(row.file_path), np.load(row.label_path)
        assert features.dtype == np.float32 and features.shape == (row.length, 40)
        assert row.length == num_frames(len(read_back(path)))
        assert labels.dtype == np.int64 and labels.shape == (row.length,)
        assert labels.min() >= 0 and labels.max() < 8
        np.testing.assert_allclose(features, (raw - mean_std[0]) / mean_std[1], atol=1e-4)
        np.testing.assert_array_equal(labels, model.predict(features))
        stored_features.append(features)
    normalised = np.concatenate(stored_features)
    np.testing.assert_allclose(normalised.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(normalised.std(axis=0), 1, atol=1e-4)
    record = json.loads((out / "train.json").read_text())
    assert record["num_frames_10ms"] == sum(row.length for row in rows)


def test_preprocess_cli_with_two_workers_reproduces_the_inline_run(preprocessed: Preprocessed, tmp_path: Path) -> None:
    tsv, _, inline_out = preprocessed
    out = tmp_path / "parallel"
    command = [
        sys.executable, str(REPO_ROOT / "preprocess.py"), "--tsv", str(tsv), "--out", str(out),
        "--num-clusters", "8", "--kmeans-fraction", "0.5", "--seed", "0", "--kmeans-n-init", "2",
        "--kmeans-batch-size", "256", "--kmeans-max-iter", "20", "--kmeans-threads", "1", "--workers", "2",
        "--no-progress",
    ]
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("preprocess: 6 utterances")
    np.testing.assert_array_equal(np.load(out / "mean-std.npy"), np.load(inline_out / "mean-std.npy"))
    np.testing.assert_array_equal(np.load(out / "kmeans-k8.npy"), np.load(inline_out / "kmeans-k8.npy"))
    for inline_row, row in zip(read_manifest(inline_out / "train.csv"), read_manifest(out / "train.csv"), strict=True):
        assert row.length == inline_row.length
        np.testing.assert_array_equal(np.load(row.file_path), np.load(inline_row.file_path))
        np.testing.assert_array_equal(np.load(row.label_path), np.load(inline_row.label_path))


def test_dev_set_reuses_training_statistics_and_centres(preprocessed: Preprocessed, tmp_path: Path) -> None:
    _, _, train_out = preprocessed
    dev_tsv, dev_paths = write_corpus(tmp_path, [0.7, 0.95], name="dev")
    dev_out = tmp_path / "dev-out"
    summary = run_preprocess(
        PreprocessConfig(
            tsv=dev_tsv, out_dir=dev_out, kmeans=SMALL_KMEANS, progress=False,
            mean_std_path=train_out / "mean-std.npy", kmeans_path=train_out / "kmeans-k8.npy",
        )
    )
    assert summary.kmeans_fit_frames is None and summary.mean_std_path == train_out / "mean-std.npy"
    assert not (dev_out / "mean-std.npy").exists() and not (dev_out / "kmeans-k8.npy").exists()
    train_mean_std = np.load(train_out / "mean-std.npy")
    model = KMeansModel.load(train_out / "kmeans-k8.npy")
    for row, path in zip(read_manifest(dev_out / "dev.csv"), dev_paths, strict=True):
        raw = log_mel_fbank(torch.from_numpy(read_back(path))).numpy()
        features = np.load(row.file_path)
        np.testing.assert_allclose(features, normalize(raw, train_mean_std), atol=1e-5)
        np.testing.assert_array_equal(np.load(row.label_path), model.predict(features))

    # Recomputing statistics into a directory that already has them needs an explicit choice.
    with pytest.raises(PreprocessError, match="mean-std.npy: mean/std already exists"):
        run_preprocess(PreprocessConfig(tsv=dev_tsv, out_dir=train_out, kmeans=SMALL_KMEANS, progress=False))


def test_second_iteration_relabels_the_manifest_at_the_model_frame_rate(preprocessed: Preprocessed, tmp_path: Path) -> None:
    _, _, out = preprocessed
    projection = torch.from_numpy(np.random.default_rng(3).normal(size=(80, 24))).float()
    seen_shapes = []

    def toy_layer8(mel: torch.Tensor) -> torch.Tensor:  # normalised log-Mel [T, 40] -> 20 ms [ceil(T/2), 24]
        seen_shapes.append(tuple(mel.shape))
        return torch.tanh(stack_frames(mel) @ projection)

    config = KMeansConfig(num_clusters=5, fraction=0.5, seed=2, n_init=2, batch_size=128, max_iter=10, num_threads=1)
    manifest, model = relabel_manifest(out / "train.csv", toy_layer8, tmp_path, config, progress=False)
    assert model.centers.shape == (5, 24)
    assert (tmp_path / "cluster_iter2-kmeans-k5.npy").is_file()
    old_rows, new_rows = read_manifest(out / "train.csv"), read_manifest(manifest)
    assert all(shape[1] == 40 for shape in seen_shapes)
    for old, new in zip(old_rows, new_rows, strict=True):
        assert new.file_path == old.file_path and new.length == old.length
        labels = np.load(new.label_path)
        assert labels.dtype == np.int64 and labels.shape == (stacked_num_frames(old.length),)
        assert labels.min() >= 0 and labels.max() < 5
        np.testing.assert_array_equal(labels, model.predict(toy_layer8(torch.from_numpy(np.load(old.file_path)))))
        np.testing.assert_array_equal(halve_labels(labels, stacked_num_frames(old.length)), labels)

    def wrong_rate(mel: torch.Tensor) -> torch.Tensor:  # 40 ms frames fit neither label rate
        return stack_frames(stack_frames(mel)) @ torch.ones(160, 24)

    with pytest.raises(PreprocessError, match="feature function gave"):
        relabel_manifest(out / "train.csv", wrong_rate, tmp_path / "bad", config, kmeans_model=model, progress=False)


def test_bad_sample_rate_is_an_error_naming_the_file_or_skipped_with_a_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tsv, _ = write_corpus(tmp_path, [0.5, 0.6, 0.7])
    bad = tmp_path / "audio" / "resampled-wrong.wav"
    soundfile.write(bad, vowel_like(0.5)[:11025], 22_050, subtype="PCM_16")
    with tsv.open("a") as handle:
        handle.write(f"{bad.name}\t11025\n")
    kmeans = dataclasses.replace(SMALL_KMEANS, num_clusters=4)
    config = PreprocessConfig(tsv=tsv, out_dir=tmp_path / "out", kmeans=kmeans, progress=False)

    with pytest.raises(PreprocessError, match=r"resampled-wrong\.wav: sample rate 22050 Hz, expected 16000 Hz"):
        run_preprocess(config)
    assert not (tmp_path / "out" / "train.csv").exists()

    cli_args = ["--tsv", str(tsv), "--out", str(tmp_path / "cli"), "--num-clusters", "4", "--workers", "1", "--no-progress"]
    assert main(cli_args) == 1
    assert "resampled-wrong.wav" in capsys.readouterr().err

    summary = run_preprocess(dataclasses.replace(config, skip_bad=True))
    assert summary.num_utterances == 3
    assert [Path(path).name for path, _ in summary.skipped] == ["resampled-wrong.wav"]
    assert "1 skipped" in summary.line()
    assert len(read_manifest(tmp_path / "out" / "train.csv")) == 3
    assert json.loads((tmp_path / "out" / "train.json").read_text())["skipped"][0]["path"] == str(bad)


@pytest.mark.parametrize("problem", ["stereo", "unreadable", "wrong_count", "too_short"])
def test_other_bad_audio_is_named(tmp_path: Path, problem: str) -> None:
    tsv, _ = write_corpus(tmp_path, [0.5])
    bad = tmp_path / "audio" / f"{problem}.wav"
    samples = 8000
    if problem == "stereo":
        soundfile.write(bad, np.stack([vowel_like(0.5)] * 2, axis=1), SAMPLE_RATE, subtype="PCM_16")
    elif problem == "unreadable":
        bad.write_bytes(b"not audio at all")
    elif problem == "wrong_count":
        soundfile.write(bad, vowel_like(0.5), SAMPLE_RATE, subtype="PCM_16")
        samples = 7999
    else:
        soundfile.write(bad, vowel_like(0.02), SAMPLE_RATE, subtype="PCM_16")
        samples = 320
    with tsv.open("a") as handle:
        handle.write(f"{bad.name}\t{samples}\n")
    kmeans = dataclasses.replace(SMALL_KMEANS, num_clusters=2)
    config = PreprocessConfig(tsv=tsv, out_dir=tmp_path / "out", kmeans=kmeans, progress=False)
    expected = {
        "stereo": "2 channels", "unreadable": "unreadable", "wrong_count": "tsv says 7999", "too_short": "shorter than one",
    }
    with pytest.raises(PreprocessError, match=rf"{problem}\.wav: .*{expected[problem]}"):
        run_preprocess(config)


def test_duplicate_utterance_ids_are_rejected(tmp_path: Path) -> None:
    tsv, paths = write_corpus(tmp_path, [0.5])
    (tmp_path / "audio" / "other").mkdir()
    shutil.copy(paths[0], tmp_path / "audio" / "other" / paths[0].name)
    with tsv.open("a") as handle:
        handle.write(f"other/{paths[0].name}\t{len(read_back(paths[0]))}\n")
    with pytest.raises(PreprocessError, match="already used by"):
        run_preprocess(PreprocessConfig(tsv=tsv, out_dir=tmp_path / "out", kmeans=SMALL_KMEANS, progress=False))


def test_kmeans_fit_shows_a_step_bar_with_sklearns_step_budget(capsys: pytest.CaptureFixture[str]) -> None:
    frames = clustered_frames(3000, seed=0)
    config = KMeansConfig(num_clusters=16, seed=5, n_init=2, batch_size=512, max_iter=20, num_threads=1)
    with_bar = fit_kmeans(frames, config)
    err = capsys.readouterr().err
    # sklearn's budget: max_iter * n_frames // batch_size = 20 * 3000 // 512 minibatch steps.
    assert "K-means (16 clusters, 3000 frames)" in err and "/117 [" in err, err
    steps = [int(part.split("/117")[0].split()[-1]) for part in err.split("|") if "/117" in part]
    assert max(steps) >= 1  # the bar advanced: sklearn still calls the per-step hook
    np.testing.assert_array_equal(with_bar.centers, fit_kmeans(frames, config, progress=False).centers)
    assert capsys.readouterr().err == ""
