"""``sbatch run.sh`` on a real single-node SLURM (munged + slurmctld + slurmd started by the test).

The recipe ``tiny_slurm`` runs every stage with 2 tasks on one node, so the training stages are
2 DDP ranks (gloo) launched by ``srun``. One job runs uninterrupted (submitted as the README says,
``sbatch run.sh tiny_slurm``, from a tree without ``exp/``); a second one gets the warning signal
(SIGUSR1, as ``--signal=USR1@N`` sends it before the time limit) in the middle of stage 1, saves,
requeues itself, resumes, and must end with the same final weights.

Skipped, with the reason, where SLURM cannot run: not Linux, not root, SLURM not installed and
no apt-get, or daemons that do not come up. The daemons are stopped by PID at the end.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch

from local_slurm import LocalSlurm, SlurmUnavailable, install
from wav2vec2.model import wav2vec2_model

REPO = Path(__file__).resolve().parents[1]
RECIPE = "tiny_slurm"
FINAL = f"exp/{RECIPE}/tiny-slurm-teacher-dp-sp0.50.pth"
STAGE1_STEPS = 10
JOB_TIMEOUT_S = 600
# What a run leaves in the tree; everything else of the checkout is shared by symlinks.
RUN_OUTPUTS = {"exp", "data", "pretrained", "demo_corpus_tiny", ".git"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalSlurm]:
    if not sys.platform.startswith("linux"):
        pytest.skip("a local SLURM needs Linux")
    if os.geteuid() != 0:
        pytest.skip("starting munged/slurmctld/slurmd needs root")
    try:
        install()
    except SlurmUnavailable as error:
        pytest.skip(f"SLURM unavailable: {error}")
    local = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        local.start()
    except SlurmUnavailable as error:
        local.stop()
        pytest.skip(f"the local SLURM did not start: {error}")
    try:
        yield local
    finally:
        local.stop()  # cancels what is left, then the daemons by PID
        assert all(local.pid(daemon) is None for daemon in ("munged", "slurmctld", "slurmd"))


def checkout(root: Path, share_data_from: Path | None = None) -> Path:
    """A tree like a fresh clone (no exp/): the repository's files as symlinks."""
    root.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name not in RUN_OUTPUTS and not entry.name.startswith("slurm-"):
            (root / entry.name).symlink_to(entry)
    if share_data_from is not None:  # the same corpus and teacher, so the two runs are comparable
        for name in ("data", "pretrained", "demo_corpus_tiny"):
            (root / name).symlink_to(share_data_from / name)
    return root


def job_field(cluster: LocalSlurm, job: str, field: str) -> str:
    text = cluster.scontrol("show", "job", "-o", job)
    match = re.search(rf"\b{field}=(\S+)", text)
    assert match, text
    return match.group(1)


def wait_for_job(cluster: LocalSlurm, job: str, log: Path, on_pending=None) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        state = job_field(cluster, job, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL"):
            return state
        if state == "PENDING" and on_pending is not None:
            on_pending()
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    pytest.fail(f"job {job} not finished after {JOB_TIMEOUT_S} s; log tail:\n{tail}")


def submitted_job(text: str) -> str:
    match = re.search(r"Submitted batch job (\d+)", text)
    assert match, text
    return match.group(1)


def load_final(path: Path) -> dict[str, torch.Tensor]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = wav2vec2_model(**payload["config"])
    model.load_state_dict(payload["state_dict"], strict=True)
    return payload["state_dict"]


def logged_losses(metrics_csv: Path) -> dict[int, float]:
    with metrics_csv.open() as handle:
        return {int(row["step"]): float(row["train/loss"]) for row in csv.DictReader(handle) if row.get("train/loss")}


@pytest.fixture(scope="module")
def uninterrupted(cluster: LocalSlurm, tmp_path_factory) -> Path:
    """``sbatch run.sh tiny_slurm`` in a fresh tree: the small submit job submits the real one."""
    tree = checkout(tmp_path_factory.mktemp("run") / "clone")
    submit = subprocess.run(["sbatch", "run.sh", RECIPE], cwd=tree, env=cluster.env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    launcher = submitted_job(submit.stdout)
    assert wait_for_job(cluster, launcher, tree / f"slurm-{launcher}.out") == "COMPLETED"
    launcher_log = (tree / f"slurm-{launcher}.out").read_text()
    assert f"--ntasks-per-node=2 --ntasks=2 --cpus-per-task=1 --mem=4G" in launcher_log, launcher_log
    job = submitted_job(launcher_log)
    log = tree / "exp" / RECIPE / f"slurm-{job}.out"
    state = wait_for_job(cluster, job, log)
    assert state == "COMPLETED", f"job {job}: {state}\n{log.read_text(errors='replace')[-4000:]}"
    return tree


def test_every_stage_runs_under_sbatch_with_two_ranks(uninterrupted: Path) -> None:
    log = (uninterrupted / "exp" / RECIPE / "run.log").read_text()
    for name in ("corpus", "file-lists", "teacher", "distill", "prune", "final-distill", "save-final"):
        assert re.search(rf"^== \[{name}\] done in \d+ s$", log, re.M), f"stage {name} did not finish:\n{log[-3000:]}"
    assert "srun --kill-on-bad-exit=1 .venv/bin/python distill.py" in log
    # Both DDP ranks trained, in both training stages, and agreed on the step count.
    assert log.count(f"SLURM rank 0/2: trained {STAGE1_STEPS} batches in this process, global step {STAGE1_STEPS}") == 1, log
    assert log.count(f"SLURM rank 1/2: trained {STAGE1_STEPS} batches in this process, global step {STAGE1_STEPS}") == 1, log
    assert len(re.findall(r"^SLURM rank [01]/2: trained \d+ batches", log, re.M)) == 4
    assert log.count("distributed_backend=gloo") == 2
    # Only rank 0 writes logs: one metrics file, one header.
    metrics = (uninterrupted / "exp" / RECIPE / "distill" / "csv_logs" / "metrics.csv").read_text()
    assert metrics.count("epoch,") == 1
    state = load_final(uninterrupted / FINAL)
    assert state and all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_preempted_job_requeues_resumes_and_matches(cluster: LocalSlurm, uninterrupted: Path, tmp_path: Path) -> None:
    tree = checkout(tmp_path / "clone", share_data_from=uninterrupted)
    submit = subprocess.run(["bash", "run.sh", "--slurm", RECIPE], cwd=tree, env=cluster.env, capture_output=True, text=True, timeout=60)
    assert submit.returncode == 0, submit.stderr
    job = submitted_job(submit.stdout)
    log = tree / "exp" / RECIPE / f"slurm-{job}.out"
    first_checkpoint = tree / "exp" / RECIPE / "distill" / "ckpts" / "step=2.ckpt"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not first_checkpoint.exists():
        assert time.monotonic() < deadline and job_field(cluster, job, "JobState") in ("PENDING", "RUNNING"), log.read_text()[-3000:]
        time.sleep(0.2)
    # The warning SLURM sends before the time limit (--signal=USR1@N), sent now, to the srun step.
    subprocess.run(["scancel", "--signal=USR1", job], env=cluster.env, check=True, timeout=30)

    def start_requeued_job_now() -> None:
        # SLURM holds a requeued job for a while (BeginTime); a test need not wait for that.
        if int(job_field(cluster, job, "Restarts")) > 0:
            cluster.scontrol("update", f"JobId={job}", "StartTime=now", check=False)

    state = wait_for_job(cluster, job, log, on_pending=start_requeued_job_now)
    text = log.read_text()
    assert state == "COMPLETED", f"job {job}: {state}\n{text[-4000:]}"
    assert int(job_field(cluster, job, "Restarts")) == 1
    preempted = re.search(r"preempted \(SIGUSR1\) at step (\d+): saved \S+last\.ckpt; requeued SLURM job " + job, text)
    assert preempted, text[-4000:]
    assert 2 <= int(preempted.group(1)) < STAGE1_STEPS, "the signal must land in the middle of stage 1"
    assert f"JOB {job} ON" in text and "DUE TO JOB REQUEUE" in text
    run_log = (tree / "exp" / RECIPE / "run.log").read_text()
    assert f"== SLURM job {job} (restart 1)" in run_log
    assert "== [distill] resuming from exp/tiny_slurm/distill/ckpts/last.ckpt" in run_log
    assert "== [teacher] skipped" in run_log
    resumed = STAGE1_STEPS - int(preempted.group(1))
    assert f"SLURM rank 1/2: trained {resumed} batches in this process, global step {STAGE1_STEPS}" in run_log

    # The resumed part of the stage-1 loss curve is the uninterrupted one.
    reference_curve = logged_losses(uninterrupted / "exp" / RECIPE / "distill" / "csv_logs" / "metrics.csv")
    resumed_curve = logged_losses(tree / "exp" / RECIPE / "distill" / "csv_logs" / "metrics.csv")
    later = [step for step in reference_curve if step >= int(preempted.group(1))]
    assert later and all(step in resumed_curve for step in later), (sorted(reference_curve), sorted(resumed_curve))
    for step in later:
        assert abs(resumed_curve[step] - reference_curve[step]) <= 1e-5 * abs(reference_curve[step]) + 1e-6, step

    reference = load_final(uninterrupted / FINAL)
    final = load_final(tree / FINAL)
    assert final.keys() == reference.keys()
    difference = max(float((final[k].double() - reference[k].double()).abs().max()) for k in final if final[k].numel())
    print(f"preempted vs uninterrupted: max |weight difference| = {difference:.3g} over {len(final)} tensors")
    assert difference <= 1e-6
