"""Fault tests on real (tiny) DPHuBERT stage runs: kill + damaged last.ckpt, SIGTERM, locks, bad audio.

Each asserts the exact outcome: the resumed loss curve and weights equal the uninterrupted run's,
metrics.csv keeps every step exactly once, refusals name the holder / file.
"""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from fault_helpers import logged, make_corpus, noise, record, stage_args, student_state, tiny_config, write_audio
from lightning_modules import slurm
from cli.dphubert import distill_main
from lightning_modules.run_lock import RunLock, RunLockError
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import save_model
from wav2vec2.model import wav2vec2_model

STEPS = 6


@pytest.fixture(scope="module")
def tsv(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    make_corpus(root / "LibriSpeech")
    prepare_file_lists(root / "LibriSpeech", root / "tsv", workers=2, show_progress=False)
    return root / "tsv"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("teacher") / "tiny-teacher.pth", wav2vec2_model(**tiny_config()))


@pytest.fixture(scope="module")
def reference(tsv: Path, teacher: Path, tmp_path_factory) -> Path:
    exp = tmp_path_factory.mktemp("reference") / "exp"
    distill_main(stage_args(tsv, teacher, exp, STEPS))
    return exp


def _assert_same_run(exp: Path, reference: Path) -> None:
    got, want = logged(exp / "csv_logs" / "metrics.csv", "train/loss"), logged(reference / "csv_logs" / "metrics.csv", "train/loss")
    assert [s for s, _ in got] == [s for s, _ in want] == list(range(STEPS)), (got, want)  # every step once: history kept
    for (step, a), (_, b) in zip(got, want):
        assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6), (step, a, b)
    final, expected = student_state(exp / "ckpts" / "last.ckpt"), student_state(reference / "ckpts" / "last.ckpt")
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.allclose(final[key], expected[key], rtol=1e-5, atol=1e-6), key


def test_kill_with_a_damaged_last_resumes_from_the_newest_good_checkpoint(tsv, teacher, reference, tmp_path, caplog) -> None:
    exp = tmp_path / "exp"
    distill_main(stage_args(tsv, teacher, exp, STEPS) + ["--stop_after_steps", "4"])
    last = exp / "ckpts" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # what a plain copy / cross-filesystem move left when killed
    with caplog.at_level("WARNING"):
        distill_main(stage_args(tsv, teacher, exp, STEPS) + ["--resume", "last"])
    assert f"skipping {last}: not a readable checkpoint" in caplog.text
    assert f"resuming from {exp / 'ckpts' / 'step=4.ckpt'} (step 4)" in caplog.text
    _assert_same_run(exp, reference)
    record("stage run", "killed at step 4, last.ckpt torn; --resume last", "handled (resumes step=4, same curve + weights, history kept)")


class _PreemptAtStep(slurm.PreemptionCheckpoint):
    """The DPHuBERT stages' signal handler, with the signal sent to this process at ``at_step``."""

    signum = signal.SIGTERM
    at_step = 3

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.at_step and not self._signal:
            os.kill(os.getpid(), self.signum)
        super().on_train_batch_end(trainer, *args)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_a_checkpoint_and_the_resume_continues_exactly(signum, tsv, teacher, reference, tmp_path, monkeypatch, capsys) -> None:
    exp = tmp_path / "exp"
    monkeypatch.setattr(slurm, "PreemptionCheckpoint", type("Preempt", (_PreemptAtStep,), {"signum": signum}))
    with pytest.raises(SystemExit) as stop:
        distill_main(stage_args(tsv, teacher, exp, STEPS, ckpt_interval=5))
    assert stop.value.code == slurm.PREEMPTED_EXIT_CODE
    assert "--resume last continues from here" in capsys.readouterr().out
    assert torch.load(exp / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert not (exp / ".run.lock").exists()
    monkeypatch.undo()
    distill_main(stage_args(tsv, teacher, exp, STEPS, ckpt_interval=5) + ["--resume", "last"])
    assert sorted(p.name for p in (exp / "ckpts").iterdir()) == ["last.ckpt", "step=5.ckpt"]  # no last-v1.ckpt
    _assert_same_run(exp, reference)
    record("stage run", f"{signal.Signals(signum).name} at step 3", "handled (checkpoint saved, exit 75, exact resume)")


def test_one_run_per_folder(tsv, teacher, reference, tmp_path) -> None:
    exp = tmp_path / "exp"
    with RunLock(exp):
        with pytest.raises(RunLockError, match=rf"in use by another run: PID {os.getpid()} on host"):
            distill_main(stage_args(tsv, teacher, exp, 2))
    assert not (exp / "ckpts").exists()
    record("stage run", "second distill.py into a running run's folder", "clear error (PID + host)")
    distill_main(stage_args(tsv, teacher, exp, 2))
    with pytest.raises(RunLockError, match=r"already holds an earlier run \(ckpts, csv_logs, .*pass --resume"):
        distill_main(stage_args(tsv, teacher, exp, 4))
    record("stage run", "distill.py again into a finished folder", "clear error (--resume / --overwrite)")
    distill_main(stage_args(tsv, teacher, exp, 4) + ["--overwrite", "true"])
    assert not (exp / "ckpts" / "last-v1.ckpt").exists()
    assert torch.load(exp / "ckpts" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert [s for s, _ in logged(exp / "csv_logs" / "metrics.csv", "train/loss")] == [0, 1, 2, 3]
    record("stage run", "--overwrite into a finished folder", "handled (old run deleted, no last-v1)")


def test_nan_audio_in_the_training_list_stops_the_run_naming_the_file(tsv, teacher, tmp_path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    root = Path((tsv / "train100.tsv").read_text().splitlines()[0])
    bad = write_audio(root / "train-clean-100" / "11" / "1" / "11-1-0999.wav",
                      np.where(np.arange(20000) == 5, np.nan, noise(20000, 9)).astype(np.float32), "FLOAT")
    try:
        lines = (tsv / "train100.tsv").read_text().splitlines()
        (lists / "train100.tsv").write_text("\n".join(lines[:1] + [f"{bad.relative_to(root)}\t20000"] + lines[1:]) + "\n")
        (lists / "valid.tsv").write_text((tsv / "valid.tsv").read_text())
        with pytest.raises(ValueError, match=rf"{bad}: 1 non-finite \(NaN/inf\) sample"):
            distill_main(stage_args(lists, teacher, tmp_path / "exp", 20))
    finally:
        bad.unlink()
    for path in (tmp_path / "exp" / "ckpts").glob("*.ckpt"):
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    record("stage run", "NaN float WAV listed for training", "clear error (file named, no NaN checkpoint)")
