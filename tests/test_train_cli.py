"""train.py: Mel data loading, ``-m melhubert`` training with checkpoints and exact resume, family
detection of ``-i``, and clear errors for bad command lines and configs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from cli import train as runner
from cli.train import MODES, ModeSpec, RunnerError, run
from wav2vec2.checkpoint import open_model_file as load_initial_model
from speech_data.mel_data import BucketBatchSampler, MelDataError, MelDataset, collate_mel, filter_by_length
from speech_data.fbank import stack_frames
from speech_data.manifest import ManifestRow
from speech_data.dataset import UtteranceSlice

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = REPO / "configs" / "melhubert" / "config_model_tiny.yaml"
TINY_RUNNER = REPO / "configs" / "melhubert" / "config_runner_tiny.yaml"

pytestmark = pytest.mark.usefixtures("single_thread")


def write_manifest(folder: Path, lengths: list[int], seed: int = 0, num_clusters: int = 50) -> Path:
    """Random normalised features [T, 40] and labels [T] at 10 ms, with their csv."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, T in enumerate(lengths):
        feature, label = folder / f"utt{i}.npy", folder / f"utt{i}.labels.npy"
        np.save(feature, rng.standard_normal((T, 40)).astype(np.float32))
        np.save(label, rng.integers(0, num_clusters, T).astype(np.int64))
        rows.append([str(feature), str(label), T])
    manifest = folder / "train.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_path", "label_path", "length"])
        writer.writerows(rows)
    return manifest


def write_runner(path: Path, manifest: Path, datarc: dict[str, Any] | None = None, **runner_overrides: Any) -> Path:
    config = yaml.safe_load(TINY_RUNNER.read_text())
    config["runner"].update({"log_step": 1, "progress_bar": False, **runner_overrides})
    config["datarc"].update({"sets": [str(manifest)], **(datarc or {})})
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 10 utterances -> buckets of 4, 4, 2 (three batches per epoch).
    return write_manifest(tmp_path_factory.mktemp("mel"), [180, 260, 310, 150, 420, 205, 330, 275, 190, 240])


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def test_20ms_crop_keeps_features_and_labels_aligned(manifest: Path) -> None:
    rows = [ManifestRow(Path(r["file_path"]), Path(r["label_path"]), int(r["length"])) for r in csv.DictReader(manifest.open())]
    dataset = MelDataset(rows, frame_period_ms=20)
    features, labels = np.load(rows[1].file_path), np.load(rows[1].label_path)
    assert dataset.lengths[1] == 130  # ceil(260 / 2)
    item = dataset[UtteranceSlice(1, 7, 50)]
    np.testing.assert_array_equal(item.features.numpy(), stack_frames(features)[7:57])
    np.testing.assert_array_equal(item.labels.numpy(), labels[::2][7:57])
    ten = MelDataset(rows, frame_period_ms=10)[UtteranceSlice(1, 11, 40)]
    np.testing.assert_array_equal(ten.features.numpy(), features[11:51])
    np.testing.assert_array_equal(ten.labels.numpy(), labels[11:51])
    batch = collate_mel([dataset[UtteranceSlice(0, 0, 90)], dataset[UtteranceSlice(3, 0, 75)]])
    assert batch.features.shape == (2, 90, 80) and torch.all(batch.labels[1, 75:] == -100)
    assert batch.pad_mask[1].sum() == 75 and batch.pad_mask.dtype == torch.float32
    wrong = [ManifestRow(rows[0].file_path, rows[0].label_path, 999)]
    with pytest.raises(MelDataError, match="manifest length is 999"):
        MelDataset(wrong, frame_period_ms=10)[0]


def test_buckets_and_length_filter() -> None:
    lengths = np.array([50, 80, 70, 20, 90, 60, 30])
    sampler = BucketBatchSampler(lengths, batch_size=3, frames_per_second=50, max_frames=None, training=False)
    assert [sorted(lengths[b].tolist(), reverse=True) for b in sampler.batches] == [[90, 80, 70], [60, 50, 30], [20]]
    rows = [ManifestRow(Path("x"), Path("y"), n) for n in (100, 320, 321, 500)]
    assert [r.length for r in filter_by_length(rows, -320)] == [321, 500]
    assert [r.length for r in filter_by_length(rows, 321)] == [100, 320]
    assert len(filter_by_length(rows, 0)) == 4


# ----------------------------------------------------------------------------------------------
# Training, checkpoints, resume
# ----------------------------------------------------------------------------------------------


def test_melhubert_training_writes_checkpoints_and_resumes_exactly(tmp_path: Path, manifest: Path) -> None:
    runner_yaml = write_runner(tmp_path / "runner.yaml", manifest, total_steps=5, save_step=2)
    exp = tmp_path / "exp"
    last = run(["-m", "melhubert", "-g", str(TINY_MODEL), "-c", str(runner_yaml), "-n", str(exp), "--seed", "3"])
    assert (exp / "config_model.yaml").read_bytes() == TINY_MODEL.read_bytes()
    assert (exp / "config_runner.yaml").read_bytes() == runner_yaml.read_bytes()
    for name in ("checkpoint-step-2.ckpt", "checkpoint-step-4.ckpt", "last-step.ckpt"):
        assert (exp / name).is_file(), name
    all_states = torch.load(last, weights_only=True)
    assert all_states["Step"] == 5 and all_states["Optimizer"]["state"]
    assert all_states["Upstream_Config"]["task"] == {"sequence_length": 200}
    metrics = (exp / "csv_logs" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/loss", "train/accuracy_masked", "train/grad_norm", "train/skipped_updates"):
        assert column in metrics
    assert any((exp / "tb_logs").iterdir())

    from lightning_modules.run_lock import RunLockError

    with pytest.raises(RunLockError, match="pass --resume"):
        run(["-m", "melhubert", "-g", str(TINY_MODEL), "-c", str(runner_yaml), "-n", str(exp)])

    # The original recipe reads our output.
    from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel

    model = MelHuBERTModel(MelHuBERTConfig(all_states["Upstream_Config"]["melhubert"]))
    model.load_state_dict(all_states["model"])

    # Resume mid-epoch from step 2 (batches 3 per epoch) and cross an epoch boundary: same weights at step 5.
    reference = {k: v.clone() for k, v in all_states["model"].items()}
    run(["-m", "melhubert", "-n", str(exp), "--seed", "3", "--resume", str(exp / "checkpoint-step-2.ckpt")])
    resumed = torch.load(exp / "last-step.ckpt", weights_only=True)
    assert resumed["Step"] == 5
    history = list(csv.DictReader((exp / "csv_logs" / "metrics.csv").open()))
    steps = sorted({int(row["step"]) for row in history if row.get("train/loss")})
    assert steps == [0, 1, 2, 3, 4], steps  # steps 0-1 kept from the first run, 2-4 appended once by the resume
    for key, value in reference.items():
        assert torch.equal(resumed["model"][key], value), key

    # Any output is a valid -i: continue training it for one epoch (3 buckets), with validation.
    epoch_runner = write_runner(tmp_path / "epoch.yaml", manifest, {"valid_sets": [str(manifest)]}, n_epochs=1,
                                total_steps=-1, save_step=None, save_every_x_epochs=1, valid_step=2)
    again = run(["-m", "melhubert", "-i", str(last), "-g", str(TINY_MODEL), "-c", str(epoch_runner), "-n", str(tmp_path / "exp2")])
    assert torch.load(again, weights_only=True)["Step"] == 3
    assert (tmp_path / "exp2" / "checkpoint-epoch-1.ckpt").is_file()
    assert "valid/accuracy_masked" in (tmp_path / "exp2" / "csv_logs" / "metrics.csv").read_text().splitlines()[0]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_nan_gradients_skip_the_update() -> None:
    from methods.melhubert_pretrain import MelHuBERTPretrainModule
    from wav2vec2.melhubert import MelHuBERTModel

    model = MelHuBERTModel(yaml.safe_load(TINY_MODEL.read_text())["melhubert"])
    module = MelHuBERTPretrainModule(model, learning_rate=0.1)
    optimizer = torch.optim.AdamW(module.parameter_groups(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    next(model.parameters()).grad[0] = float("nan")
    module.configure_gradient_clipping(optimizer)
    optimizer.step()
    assert module.skipped_updates == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    for p in model.parameters():
        p.grad = torch.full_like(p, 100.0)
    module.configure_gradient_clipping(optimizer)
    total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters()))
    assert module.skipped_updates == 1 and abs(float(total) - 10.0) < 1e-3


# ----------------------------------------------------------------------------------------------
# -i detection and errors
# ----------------------------------------------------------------------------------------------


def test_wav2vec2_family_files_are_detected(tmp_path: Path, manifest: Path, tiny_model: Any) -> None:
    from wav2vec2.checkpoint import save_model

    path = save_model(tmp_path / "hubert.pth", tiny_model("hubert"))
    initial = load_initial_model(path)
    assert initial.family == "wav2vec2" and not initial.model.training
    plain_file = torch.load(path, weights_only=True)
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "wav2vec2": plain_file}, tmp_path / "nested.ckpt")
    assert load_initial_model(tmp_path / "nested.ckpt").family == "wav2vec2"
    runner_yaml = write_runner(tmp_path / "runner.yaml", manifest, total_steps=1)
    with pytest.raises(RunnerError, match="must be a MelHuBERT checkpoint"):
        run(["-m", "melhubert", "-i", str(path), "-g", str(TINY_MODEL), "-c", str(runner_yaml), "-n", str(tmp_path / "e")])
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="neither a MelHuBERT checkpoint"):
        load_initial_model(tmp_path / "other.pt")


def test_command_line_errors(tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    runner_yaml = write_runner(tmp_path / "runner.yaml", manifest, total_steps=1)
    base = ["-g", str(TINY_MODEL), "-c", str(runner_yaml), "-n", str(tmp_path / "exp")]
    with pytest.raises(SystemExit):
        run(["-m", "quantization", *base])
    assert "invalid choice: 'quantization'" in capsys.readouterr().err
    with pytest.raises(RunnerError, match="needs -i CKPT"):
        run(["-m", "head-pruning", *base])
    with pytest.raises(FileNotFoundError, match="-i: checkpoint not found"):
        run(["-m", "row-pruning", "-i", str(tmp_path / "missing.ckpt"), *base])
    monkeypatch.setitem(MODES, "future-mode", ModeSpec("future-mode", "compression.mode_future_mode", True, "test"))
    with pytest.raises(NotImplementedError, match="compression/mode_future_mode.py does not exist"):
        runner.load_mode("future-mode")
    # main() turns input errors into one line and exit status 2.
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["-m", "head-pruning", *base])
    assert exit_info.value.code == 2 and "train.py: error: mode 'head-pruning' needs -i" in capsys.readouterr().err


def test_config_errors_name_file_and_key(tmp_path: Path, manifest: Path) -> None:
    def attempt(runner_text: str | None = None, model_text: str | None = None, extra: tuple[str, ...] = ()) -> str:
        runner_path, model_path = tmp_path / "r.yaml", tmp_path / "m.yaml"
        runner_path.write_text(runner_text if runner_text is not None else write_runner(tmp_path / "ok.yaml", manifest).read_text())
        model_path.write_text(model_text if model_text is not None else TINY_MODEL.read_text())
        with pytest.raises((RunnerError, FileNotFoundError)) as error:
            run(["-m", "melhubert", "-g", str(model_path), "-c", str(runner_path), "-n", str(tmp_path / "exp"), *extra])
        return str(error.value)

    good = yaml.safe_load(write_runner(tmp_path / "ok.yaml", manifest).read_text())
    assert "r.yaml: invalid YAML" in attempt("runner: [unclosed\n")
    assert "missing section 'datarc'" in attempt(yaml.safe_dump({k: v for k, v in good.items() if k != "datarc"}))
    assert "key 'optimizer.lr' must be a number" in attempt(yaml.safe_dump({**good, "optimizer": {"lr": "fast"}}))
    missing_data = {**good, "datarc": {**good["datarc"], "sets": [str(tmp_path / "nope.csv")]}}
    assert "'datarc.sets' lists" in attempt(yaml.safe_dump(missing_data))
    message = attempt(extra=("-f", "10"))
    assert "m.yaml" in message and "feat_emb_dim is 80" in message
    bad_model = yaml.safe_load(TINY_MODEL.read_text())
    bad_model["melhubert"]["activation_fn"] = "relu"
    assert "activation_fn" in attempt(model_text=yaml.safe_dump(bad_model))
    assert "model config not found" in str(pytest.raises(FileNotFoundError, run, [
        "-m", "melhubert", "-g", str(tmp_path / "none.yaml"), "-c", str(tmp_path / "ok.yaml"), "-n", str(tmp_path / "exp")]).value)


def test_train_py_entry_point() -> None:
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "head-pruning" in result.stdout and "--resume" in result.stdout
