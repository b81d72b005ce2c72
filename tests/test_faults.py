"""Fault tests without a training run: bad audio, bad files, interrupted writes, locks, NaN guards, flags.

Every test builds its own bad input and asserts the exact outcome: the error names the file
and the problem, nothing non-finite is written, the previous file survives.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fault_helpers import SAMPLE_RATE, make_corpus, noise, record, tiny_config, write_audio
from lightning_modules.atomic_checkpoint import AtomicCheckpointIO, ResumeError, pick_resume_checkpoint, resolve_resume_path
from lightning_modules.finite_guard import NonFiniteGuard, NonFiniteTrainingError
from lightning_modules.run_lock import RunLock, RunLockError, check_folder_reuse
from speech_data.dataset import AudioDataset
from speech_data.prepare import PrepareError, prepare_file_lists
from speech_data.tsv import write_file_list
from wav2vec2.atomic_io import atomic_copy, atomic_torch_save, atomic_write
from wav2vec2.checkpoint import save_model
from wav2vec2.finite import NonFiniteError
from wav2vec2.model import wav2vec2_model

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Audio: prepare_data.py --verify / --strict, the data loader
# ------------------------------------------------------------------------------------------


def _truncated_flac(path: Path) -> Path:
    write_audio(path, noise(2 * SAMPLE_RATE, seed=5))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy: header intact, stream cut
    return path


BAD_AUDIO = {
    # name -> (writer, expected reason)
    "truncated.flac": (_truncated_flac, "truncated"),
    "nan.wav": (lambda p: write_audio(p, np.where(np.arange(8000) == 100, np.nan, noise(8000, 1)).astype(np.float32), "FLOAT"), "non_finite"),
    "inf.wav": (lambda p: write_audio(p, np.where(np.arange(8000) == 7, np.inf, noise(8000, 2)).astype(np.float32), "FLOAT"), "non_finite"),
    "silent.flac": (lambda p: write_audio(p, np.zeros(8000, np.float32)), "silent"),
    "short.flac": (lambda p: write_audio(p, noise(300, 3)), "too_short"),
    "garbage.flac": (lambda p: p.write_bytes(b"fLaC" + os.urandom(500)), "corrupt"),
    "empty.wav": (lambda p: p.write_bytes(b""), "empty"),
}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    root = make_corpus(tmp_path_factory.mktemp("bad") / "LibriSpeech", num_train=3, num_valid=1)
    folder = root / "train-clean-100" / "11" / "1"
    for i, (name, (writer, _)) in enumerate(BAD_AUDIO.items()):
        writer(folder / f"11-1-{900 + i:04d}-{name}")
    return root


def test_verify_reports_every_bad_file_by_name_and_lists_none(bad_corpus: Path, tmp_path: Path) -> None:
    result = prepare_file_lists(bad_corpus, tmp_path / "lists", workers=2, verify=True, show_progress=False)
    reasons = {row.path.name.split("-", 3)[-1]: row.reason for row in result.problems}
    assert reasons == {name: reason for name, (_, reason) in BAD_AUDIO.items()}
    listed = (tmp_path / "lists" / "train100.tsv").read_text()
    assert not any(name in listed for name in BAD_AUDIO) and result.files_listed == 4
    summary = result.summary()
    for wording in ("1 truncated", "2 non-finite", "1 silent", "1 too short", "1 corrupt", "1 empty"):
        assert wording in summary, summary
    report = (tmp_path / "lists" / "prepare_report.tsv").read_text()
    assert "truncated.flac\ttruncated\t" in report and "nan.wav\tnon_finite\t1 NaN/inf sample(s)" in report
    for name, (_, reason) in BAD_AUDIO.items():
        record("audio (prepare --verify)", name, "clear error (reported by name, not listed)")


def test_header_scan_alone_misses_a_truncated_flac_but_strict_catches_it(bad_corpus: Path, tmp_path: Path) -> None:
    plain = prepare_file_lists(bad_corpus, tmp_path / "plain", workers=2, show_progress=False)
    assert "truncated" not in {row.reason for row in plain.problems}  # why --verify exists
    result = subprocess.run([sys.executable, str(REPO / "prepare_data.py"), "--data", str(bad_corpus), "--out",
                             str(tmp_path / "strict"), "--strict", "--workers", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 1
    assert "truncated.flac: truncated (decoding failed after" in result.stderr or "truncated.flac: truncated (stream ends" in result.stderr
    assert "nan.wav: non_finite" in result.stderr and "--strict" in result.stderr
    assert not (tmp_path / "strict" / "train100.tsv").exists()
    record("audio (prepare --strict)", "truncated FLAC + 6 other bad files", "clear error (exit 1, each named)")


def test_data_loader_refuses_non_finite_audio_naming_the_file(tmp_path: Path) -> None:
    good = write_audio(tmp_path / "a" / "good.wav", noise(4000, 0), "FLOAT")
    bad = write_audio(tmp_path / "a" / "bad.wav", np.where(np.arange(4000) == 9, np.nan, noise(4000, 1)).astype(np.float32), "FLOAT")
    write_file_list(tmp_path / "list.tsv", tmp_path / "a", [("good.wav", 4000), ("bad.wav", 4000)])
    dataset = AudioDataset(tmp_path / "list.tsv")
    assert torch.isfinite(dataset[0].waveform).all()
    with pytest.raises(ValueError, match=rf"{bad}: 1 non-finite \(NaN/inf\) sample"):
        dataset[1]
    assert good.is_file()
    record("audio (data loader)", "NaN sample in a listed float WAV", "clear error (file named)")


def test_length_filter_reports_dropped_and_cropped_at_warning(caplog) -> None:
    from speech_data.sampler import LengthBucketBatchSampler

    lengths = np.array([1000, 5000, 9000, 20000])
    with caplog.at_level("WARNING", logger="speech_data.sampler"):
        LengthBucketBatchSampler(lengths, seconds_per_batch=4.0, max_sample_size=8000, min_sample_size=2000, seed=0)
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "1 dropped as too short" in message and "2 cropped to the maximum length" in message
    record("data (length filter)", "too-short / too-long utterances", "handled (WARNING with counts)")


def test_probe_refuses_a_clip_shorter_than_the_receptive_field(tmp_path: Path) -> None:
    from evaluation.probing import Utterance, extract_features
    from evaluation.upstream import Upstream, UpstreamInfo

    torch.manual_seed(0)
    model = wav2vec2_model(**tiny_config()).eval()
    upstream = Upstream(model, UpstreamInfo("tiny", "memory", "wav2vec2"), frame_period_ms=20)
    write_audio(tmp_path / "a" / "long.flac", noise(4000, 0))
    short = write_audio(tmp_path / "a" / "short.flac", noise(300, 1))
    write_file_list(tmp_path / "p.tsv", tmp_path / "a", [("long.flac", 4000), ("short.flac", 300)])
    utterances = [Utterance(0, "long", 4000, None, None), Utterance(1, "short", 300, None, None)]
    with pytest.raises(ValueError, match=rf"{short}: 300 samples is shorter than the receptive field"):
        extract_features(upstream, tmp_path / "p.tsv", utterances, keep_frames=False)
    record("probing", "300-sample clip (< 400-sample receptive field)", "clear error (file named)")


# ------------------------------------------------------------------------------------------
# No NaN file, ever; atomic writes
# ------------------------------------------------------------------------------------------


def test_no_model_file_is_written_with_nan_weights(tmp_path: Path) -> None:
    from wav2vec2.melhubert import MelHuBERTModel
    from wav2vec2.melhubert_checkpoint import save_checkpoint
    import yaml

    model = wav2vec2_model(**tiny_config())
    path = save_model(tmp_path / "model.pth", model)
    before = path.read_bytes()
    with torch.no_grad():
        model.encoder.transformer.layers[1].feed_forward.output_dense.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=rf"{path}: refusing to write 1 tensor\(s\) with NaN/inf values: "
                                             r"state_dict.encoder.transformer.layers.1.feed_forward.output_dense.weight \(1 of"):
        save_model(path, model)
    assert path.read_bytes() == before  # the previous file is untouched
    with pytest.raises(NonFiniteError):
        save_model(tmp_path / "new.pth", model)
    assert not (tmp_path / "new.pth").exists() and not list(tmp_path.glob(".*tmp*"))

    config = yaml.safe_load((REPO / "configs" / "melhubert" / "config_model_tiny.yaml").read_text())["melhubert"]
    mel = MelHuBERTModel(config)
    with torch.no_grad():
        next(mel.parameters()).fill_(float("inf"))
    with pytest.raises(NonFiniteError, match=rf"{tmp_path / 'mel.ckpt'}: refusing to write"):
        save_checkpoint(tmp_path / "mel.ckpt", mel)
    assert not (tmp_path / "mel.ckpt").exists()
    record("non-finite weights", "save_model / MelHuBERT save_checkpoint with NaN/inf", "clear error (no file written)")


def test_lightning_checkpoints_refuse_nan_and_read_weights_only(tmp_path: Path) -> None:
    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)}, "global_step": 1, "loops": {}, "callbacks": {"kth_value": torch.tensor(float("inf"))}}
    io.save_checkpoint(good, tmp_path / "last.ckpt")  # an infinite callback score is fine; weights are checked
    with pytest.raises(NonFiniteError, match=r"last.ckpt: refusing to write 1 tensor\(s\).*optimizer_states.0.state.0.exp_avg"):
        io.save_checkpoint({**good, "optimizer_states": [{"state": {0: {"exp_avg": torch.tensor([float("nan")])}}}]}, tmp_path / "last.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(3))

    torch.save({"state_dict": {}, "obj": _Opaque()}, tmp_path / "pickle.ckpt")  # weights_only refuses it
    with pytest.raises(ResumeError, match=rf"{tmp_path / 'pickle.ckpt'}: not a readable checkpoint \(UnpicklingError"):
        io.load_checkpoint(tmp_path / "pickle.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(tmp_path / "last.ckpt", weights_only=False)
    record("checkpoint IO", "NaN optimizer moment in a Lightning checkpoint", "clear error (no file written)")
    record("checkpoint IO", "pickled object in a checkpoint (weights_only)", "clear error (file named)")


class _Opaque:
    """An arbitrary pickled class: loading it would run code, so weights_only=True refuses it."""


def _disk_full_after(nbytes: int):
    def write(handle) -> None:
        handle.write(b"x" * nbytes)
        raise OSError(28, "No space left on device")
    return write


def test_failed_write_keeps_the_previous_file_and_leaves_no_partial(tmp_path: Path) -> None:
    target = atomic_torch_save({"v": torch.arange(5)}, tmp_path / "step=4.ckpt")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask  # the permissions of a plain write, not mkstemp's 0600
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, _disk_full_after(100))
    assert torch.equal(torch.load(target, weights_only=True)["v"], torch.arange(5))
    with pytest.raises(OSError, match="No space left"):
        atomic_write(tmp_path / "step=6.ckpt", _disk_full_after(100))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step=4.ckpt"]  # no partial step=6, no temporary
    record("atomic write", "disk full mid-write (new file and overwrite)", "handled (old file kept, no partial file)")


# Child process: overwrite TARGET atomically and SIGKILL itself at POINT.
_KILL_DURING_WRITE = """
import os, signal, sys, torch
import wav2vec2.atomic_io as io
target, point = sys.argv[1], sys.argv[2]
def write(handle):
    torch.save({"v": torch.full((50_000,), 2.0)}, handle)
    if point == "mid-write":
        handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
if point == "before-rename":
    io.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
io.atomic_write(target, write)
if point == "after-rename":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("point", ["mid-write", "before-rename", "after-rename"])
def test_sigkill_during_a_checkpoint_write_never_damages_it(tmp_path: Path, point: str) -> None:
    target = atomic_torch_save({"v": torch.full((50_000,), 1.0)}, tmp_path / "last.ckpt")
    child = subprocess.run([sys.executable, "-c", _KILL_DURING_WRITE, str(target), point], cwd=REPO, timeout=120)
    assert child.returncode == -signal.SIGKILL
    value = float(torch.load(target, weights_only=True)["v"][0])
    assert value == (2.0 if point == "after-rename" else 1.0)
    leftovers = [p for p in tmp_path.iterdir() if p.name != "last.ckpt"]
    assert (len(leftovers) == 1) == (point != "after-rename")
    record("SIGKILL during checkpoint write", point, "handled (last.ckpt loads: old or new, never partial)")


def test_atomic_copy_of_last_is_never_half_a_file(tmp_path: Path, monkeypatch) -> None:
    source = atomic_torch_save({"v": torch.ones(10_000)}, tmp_path / "checkpoint-step-4.ckpt")
    last = atomic_torch_save({"v": torch.zeros(10)}, tmp_path / "last-step.ckpt")

    def broken_copy(reader, writer, length=0):
        writer.write(reader.read(100))
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("shutil.copyfileobj", broken_copy)
    with pytest.raises(OSError):
        atomic_copy(source, last)
    assert torch.equal(torch.load(last, weights_only=True)["v"], torch.zeros(10))
    record("atomic write", "I/O error while copying last-step.ckpt", "handled (previous last kept)")


# ------------------------------------------------------------------------------------------
# Resume picks the newest checkpoint that loads
# ------------------------------------------------------------------------------------------


def _training_checkpoint(path: Path, step: int) -> Path:
    return atomic_torch_save({"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step, "loops": {}}, path)


def test_resume_skips_damaged_checkpoints_and_says_why(tmp_path: Path, caplog) -> None:
    _training_checkpoint(tmp_path / "step=2.ckpt", 2)
    _training_checkpoint(tmp_path / "step=4.ckpt", 4)
    full = _training_checkpoint(tmp_path / "step=6.ckpt", 6).read_bytes()
    (tmp_path / "step=6.ckpt").write_bytes(full[: len(full) // 2])  # torn write of a plain copier
    (tmp_path / "last.ckpt").write_bytes(b"")
    (tmp_path / ".last.ckpt.tmp-abc").write_bytes(b"partial")
    with caplog.at_level("WARNING"):
        path, step = resolve_resume_path("last", tmp_path, "last.ckpt")
    assert (path.name, step) == ("step=4.ckpt", 4)
    text = caplog.text
    assert f"skipping {tmp_path / 'last.ckpt'}: empty file (0 bytes)" in text
    assert f"skipping {tmp_path / 'step=6.ckpt'}: not a readable checkpoint" in text
    assert "removed 1 unfinished checkpoint write" in text and not (tmp_path / ".last.ckpt.tmp-abc").exists()
    record("resume", "0-byte last.ckpt + torn step=6.ckpt + stale temporary", "handled (resumes step=4, says why)")


def test_resume_errors_name_every_file(tmp_path: Path) -> None:
    (tmp_path / "last.ckpt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ResumeError, match=r"no checkpoint in .* loads:\n  .*last.ckpt: not a readable checkpoint"):
        pick_resume_checkpoint(tmp_path)
    model_file = save_model(tmp_path / "pruned.pth", wav2vec2_model(**tiny_config()))
    with pytest.raises(ResumeError, match=rf"{model_file}: not a training checkpoint that can resume a run \(no global_step, loops\)"):
        resolve_resume_path(str(model_file), tmp_path, "last.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nowhere.ckpt"):
        resolve_resume_path(str(tmp_path / "nowhere.ckpt"), tmp_path, "last.ckpt")
    with pytest.raises(ResumeError, match="no checkpoint"):
        pick_resume_checkpoint(tmp_path / "empty_dir_missing")
    record("resume", "every checkpoint damaged / a .pth passed to --resume / missing file", "clear error (files named)")


# ------------------------------------------------------------------------------------------
# One run per folder
# ------------------------------------------------------------------------------------------


def test_second_run_into_a_locked_folder_is_refused_naming_pid_and_host(tmp_path: Path) -> None:
    with RunLock(tmp_path / "exp"):
        with pytest.raises(RunLockError, match=rf"in use by another run: PID {os.getpid()} on host {socket.gethostname()}"):
            RunLock(tmp_path / "exp").acquire()
    RunLock(tmp_path / "exp").acquire().release()  # released at the end of the run
    record("run lock", "second run while the first holds the folder", "clear error (PID + host named)")


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    with caplog.at_level("WARNING"):
        lock = RunLock(tmp_path).acquire()
    assert f"taking over the lock of a run that is gone (PID {dead.pid}" in caplog.text
    assert json.loads((tmp_path / ".run.lock").read_text())["pid"] == os.getpid()
    lock.release()
    (tmp_path / ".run.lock").write_text(json.dumps({"pid": 1, "host": "node-07", "started": "then"}))
    with pytest.raises(RunLockError, match="PID 1 on host node-07"):
        RunLock(tmp_path).acquire()  # another host: its PID cannot be checked here
    record("run lock", "stale lock (dead PID, same host) / lock from another host", "handled / clear error")


def test_finished_folder_needs_resume_or_overwrite(tmp_path: Path) -> None:
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "ckpts" / "last.ckpt").write_bytes(b"x")
    (tmp_path / "config.yaml").write_text("a: 1")
    artefacts = ("ckpts", "config.yaml", "csv_logs")
    with pytest.raises(RunLockError, match=r"already holds an earlier run \(ckpts, config.yaml\): pass --resume"):
        check_folder_reuse(tmp_path, artefacts, resume=False, overwrite=False)
    check_folder_reuse(tmp_path, artefacts, resume=True, overwrite=False)
    assert (tmp_path / "ckpts" / "last.ckpt").exists()
    check_folder_reuse(tmp_path, artefacts, resume=False, overwrite=True)
    assert not (tmp_path / "ckpts").exists() and not (tmp_path / "config.yaml").exists()
    record("folder reuse", "fresh run into a finished folder", "clear error (--resume / --overwrite named)")


# ------------------------------------------------------------------------------------------
# Non-finite loss / gradient guard
# ------------------------------------------------------------------------------------------


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.linear(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.1)


def _fit_with_bad_batches(tmp_path: Path, bad: set[int], max_consecutive: int, steps: int = 8):
    x = torch.randn(steps, 4)
    x[sorted(bad)] = float("nan")
    module = _Regression()
    weights = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            weights.append(pl_module.linear.weight.detach().clone())

    guard = NonFiniteGuard(max_consecutive)
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[guard, Record()], default_root_dir=tmp_path,
                        plugins=[AtomicCheckpointIO()], enable_checkpointing=False)
    trainer.fit(module, DataLoader(TensorDataset(x, torch.randn(steps, 1)), batch_size=1))
    return guard, weights, module


def test_nonfinite_steps_are_skipped_and_counted(tmp_path: Path, caplog) -> None:
    with caplog.at_level("WARNING", logger="lightning_modules.finite_guard"):
        guard, weights, module = _fit_with_bad_batches(tmp_path, {2, 5}, max_consecutive=3)
    assert guard.skipped_total == 2 and guard.consecutive == 0
    assert torch.equal(weights[2], weights[1]) and torch.equal(weights[5], weights[4])  # skipped: unchanged
    assert not torch.equal(weights[3], weights[2])  # the next good step trains again
    assert all(torch.isfinite(w).all() for w in weights)
    assert "step 2: non-finite loss nan; update skipped (1 in a row, 1 in total)" in caplog.text
    record("training loop", "NaN batch (loss and gradient)", "handled (step skipped, counted, WARNING)")


def test_too_many_nonfinite_steps_in_a_row_stop_the_run(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps with a non-finite loss or gradient"):
        _fit_with_bad_batches(tmp_path, {3, 4, 5}, max_consecutive=3)
    record("training loop", "3 NaN batches in a row (limit 3)", "clear error (run stops)")


# ------------------------------------------------------------------------------------------
# Flags and entry-point loaders
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("teacher") / "tiny-teacher.pth", wav2vec2_model(**tiny_config()))


@pytest.mark.parametrize("flags, message", [
    (["--cos_type", "cosine"], "cos_type"),
    (["--distill_mode", "layer2"], "distill_mode"),
    (["--target_macs_ratio", "1.5"], "--target_macs_ratio must be in (0, 1]"),
    (["--target_macs_ratio", "0"], "--target_macs_ratio must be in (0, 1]"),
    (["--target_sparsity", "1.2"], "--target_sparsity must be in [0, 1)"),
])
def test_bad_flags_are_refused(flags, message, teacher: Path, tmp_path: Path, capsys) -> None:
    from cli.dphubert import distill_main

    with pytest.raises(SystemExit) as stop:
        distill_main(["--teacher_ckpt", str(teacher), "--exp_dir", str(tmp_path / "exp"), *flags])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()
    record("flags", " ".join(flags), "clear error (exit 2, flag named)")


def _damaged_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"truncated": tmp_path / "truncated.pth", "empty": tmp_path / "empty.pth", "text": tmp_path / "text.pth",
             "wrong-kind": tmp_path / "wrong.pth"}
    files["truncated"].write_bytes(data[: len(data) // 3])
    torch.save({"weights": torch.zeros(2)}, files["wrong-kind"])
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a model\n")
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "wrong-kind"])
def test_stage_entry_points_name_a_damaged_file(kind: str, teacher: Path, tmp_path: Path) -> None:
    from cli.dphubert import distill_main, final_distill_main, prune_main, save_final_main
    from wav2vec2.checkpoint import open_model_file

    bad = _damaged_files(tmp_path, teacher)[kind]
    calls = {
        "distill.py --teacher_ckpt": lambda: distill_main(["--teacher_ckpt", str(bad), "--exp_dir", str(tmp_path / "e1")]),
        "final_distill.py --student_ckpt": lambda: final_distill_main(["--teacher_ckpt", str(teacher), "--student_ckpt", str(bad),
                                                                       "--exp_dir", str(tmp_path / "e2")]),
        "prune.py --distilled_ckpt": lambda: prune_main(["--distilled_ckpt", str(bad), "--out", str(tmp_path / "p.pth")]),
        "save_final_ckpt.py --config_path": lambda: save_final_main(["--config_path", str(bad), "--ckpt_after_final_distill", str(bad)]),
        "train.py -i": lambda: open_model_file(bad),
        "distill.py --resume": lambda: distill_main(["--teacher_ckpt", str(teacher), "--exp_dir", str(tmp_path / "e4"),
                                                     "--distill_layers", "0.1,2", "--resume", str(bad)]),
    }
    for entry, call in calls.items():
        with pytest.raises(Exception) as error:
            call()
        assert not isinstance(error.value, (EOFError, KeyError, RuntimeError)) or str(bad) in str(error.value), (entry, error.value)
        assert str(bad) in str(error.value), (entry, type(error.value), error.value)
        record("entry-point loaders", f"{kind} file to {entry}", "clear error (file named)")


def test_warning_signal_handler_leaves_slurm_auto_requeue_to_lightning(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment

    from lightning_modules.preemption import SaveOnSignal

    before = signal.getsignal(signal.SIGUSR1)
    try:
        callback = SaveOnSignal(tmp_path / "last.ckpt")
        slurm = SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=SLURMEnvironment(auto_requeue=True)))
        callback.on_train_start(slurm, None)
        assert signal.getsignal(signal.SIGUSR1) is before  # Lightning's requeue handler owns SIGUSR1 there
        local = SimpleNamespace(_accelerator_connector=SimpleNamespace(cluster_environment=LightningEnvironment()))
        callback.on_train_start(local, None)
        assert signal.getsignal(signal.SIGUSR1) == callback._handler
    finally:
        signal.signal(signal.SIGUSR1, before)
    record("preemption", "SIGUSR1 under SLURM auto-requeue vs. plain run", "handled (one owner per signal)")


def test_stage_script_reports_a_bad_file_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(b"PK\x03\x04 cut off")
    result = subprocess.run([sys.executable, str(REPO / "prune.py"), "--distilled_ckpt", str(bad)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(f"prune.py: error: {bad}: not a readable checkpoint") and "Traceback" not in result.stderr
    record("entry-point loaders", "damaged checkpoint to the prune.py script", "clear error (one line, exit 2)")


def test_every_trainer_gets_the_reliability_pieces(tmp_path: Path) -> None:
    """The one Trainer builder gives every run (DPHuBERT stages, train.py, demo teacher) the
    atomic NaN-checked checkpoint IO, the non-finite guard, the history-keeping CSV logger and,
    when a stop checkpoint is named, the signal saver; a damaged file is a CheckpointError."""
    from lightning_modules.history_logger import HistoryCSVLogger
    from lightning_modules.preemption import SaveOnSignal
    from lightning_modules.trainer import TrainerSettings, build_trainer, resume_point
    from wav2vec2.state_dicts import CheckpointError, write_atomically

    plain_run = build_trainer(TrainerSettings(exp_dir=tmp_path, loggers=("csv",), progress_bar=False))
    assert isinstance(plain_run.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [type(c) for c in plain_run.callbacks if isinstance(c, (NonFiniteGuard, SaveOnSignal))] == [NonFiniteGuard]
    assert isinstance(plain_run.logger, HistoryCSVLogger)
    stage = build_trainer(TrainerSettings(exp_dir=tmp_path, loggers=("csv",), progress_bar=False,
                                          signal_checkpoint=tmp_path / "last.ckpt", max_nonfinite_steps=3))
    savers = [c for c in stage.callbacks if isinstance(c, SaveOnSignal)]
    assert len(savers) == 1 and savers[0].checkpoint_path == tmp_path / "last.ckpt"
    assert next(c for c in stage.callbacks if isinstance(c, NonFiniteGuard)).max_consecutive == 3

    with pytest.raises(NonFiniteError, match=r"x.pth: refusing to write 1 tensor"):
        write_atomically({"state_dict": {"w": torch.tensor([float("nan")])}}, tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    (tmp_path / "last.ckpt").write_bytes(b"")
    assert issubclass(ResumeError, CheckpointError)
    with pytest.raises(CheckpointError, match=rf"{tmp_path / 'last.ckpt'}: empty file"):
        resume_point(str(tmp_path / "last.ckpt"), tmp_path / "last.ckpt")
    assert resume_point(None, tmp_path / "last.ckpt") is None
