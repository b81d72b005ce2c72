#!/usr/bin/env python3
"""SIGKILL loop on a tiny DPHuBERT stage-1 run: kill at random moments (many during checkpoint
writes), resume, repeat; the final model must equal the uninterrupted run's.

The experiment folder lives on its own tmpfs mount (``--mount``, needs root) while ``TMPDIR``
stays on the root filesystem, the cluster situation (node-local temp vs shared storage) in
which a temp-file-then-move save is not atomic. Each checkpoint is written every step so most
kills land in or near a write; every other kill waits for a ``.last.ckpt.tmp-*`` temporary to
appear and kills then, mid-write.

    python benchmarks/kill_loop.py --kills 20 --steps 30 [--mount /mnt/killloop] [--seed 0]

Prints one row per kill and a summary; exit status 1 if any resume failed or the final
weights differ from the uninterrupted run.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def stage_command(tsv: Path, teacher: Path, exp: Path, steps: int) -> list[str]:
    from fault_helpers import stage_args

    return [sys.executable, str(REPO / "distill.py"), *stage_args(tsv, teacher, exp, steps, ckpt_interval=1)]


def final_state(exp: Path):
    from fault_helpers import student_state

    return student_state(exp / "ckpts" / "last.ckpt")


def losses(exp: Path) -> list[tuple[int, float]]:
    from fault_helpers import logged

    return logged(exp / "csv_logs" / "metrics.csv", "train/loss")


def mount_tmpfs(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"kill_loop: could not mount a tmpfs at {path} ({result.stderr.strip()}); using it as a plain folder")
        return False
    return True


def wait_for(predicate, process: subprocess.Popen, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if process.poll() is not None:
            return False
        if predicate():
            return True
        time.sleep(0.002)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--mount", type=Path, default=Path("/mnt/kill_loop_exp"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    from fault_helpers import make_corpus, tiny_config
    from speech_data.prepare import prepare_file_lists
    import torch
    from wav2vec2.checkpoint import save_model
    from wav2vec2.model import wav2vec2_model

    work = Path(tempfile.mkdtemp(prefix="kill_loop_"))  # TMPDIR: the root filesystem
    mounted = mount_tmpfs(args.mount)
    running: list[subprocess.Popen] = []

    def stop(signum, frame):  # a timeout / Ctrl-C: stop the current run too, then unmount in `finally`
        for child in running:
            if child.poll() is None:
                child.kill()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        make_corpus(work / "LibriSpeech")
        prepare_file_lists(work / "LibriSpeech", work / "tsv", workers=2, show_progress=False)
        torch.manual_seed(0)
        teacher = save_model(work / "teacher.pth", wav2vec2_model(**tiny_config()))
        tsv = work / "tsv"
        env = dict(os.environ, TMPDIR=str(work), PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        fs_exp = os.stat(args.mount).st_dev
        fs_tmp = os.stat(work).st_dev
        print(f"experiment folder {args.mount} (device {fs_exp}, tmpfs={mounted}); TMPDIR {work} (device {fs_tmp})")

        reference = args.mount / "reference"
        done = subprocess.run(stage_command(tsv, teacher, reference, args.steps), env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:])
            return 1

        exp = args.mount / "killed"
        ckpts = exp / "ckpts"
        rows = []
        failures = 0
        kills = 0
        attempt = 0
        while True:
            attempt += 1
            has_ckpt = ckpts.is_dir() and any(ckpts.glob("*.ckpt"))
            extra = ["--resume", "last"] if has_ckpt else (["--overwrite", "true"] if exp.exists() else [])
            log = work / f"run{attempt}.log"
            with log.open("w") as handle:
                process = subprocess.Popen(stage_command(tsv, teacher, exp, args.steps) + extra, env=env, cwd=REPO,
                                           stdout=handle, stderr=subprocess.STDOUT)
            running[:] = [process]
            moment = "-"
            if kills < args.kills:
                before = len(list(ckpts.glob("step=*.ckpt"))) if ckpts.is_dir() else 0
                if kills % 2 == 0:
                    # Mid-write: kill as soon as a temporary of last.ckpt or step=N.ckpt exists.
                    hit = wait_for(lambda: ckpts.is_dir() and any(p.name.startswith(".") and ".tmp-" in p.name
                                                                  for p in ckpts.iterdir()), process, 300)
                    moment = "during a checkpoint write" if hit else "-"
                else:
                    # A random moment after at least one new step: between writes, in a step, in a write.
                    hit = wait_for(lambda: ckpts.is_dir() and len(list(ckpts.glob("step=*.ckpt"))) > before, process, 300)
                    if hit:
                        time.sleep(rng.uniform(0.0, 1.5))
                        moment = "random (after a new step)"
                if hit and process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    kills += 1
            code = process.wait()
            text = log.read_text()
            resumed = re.search(r"resuming from (\S+) \(step (\d+)\)", text)
            skipped = re.findall(r"skipping (\S+):", text)
            status = "killed" if code == -signal.SIGKILL else ("finished" if code == 0 else f"FAILED rc={code}")
            if code not in (0, -signal.SIGKILL):
                failures += 1
                print(text[-2000:])
            removed = re.findall(r"unfinished checkpoint write\(s\) of a killed run: (.+)", text)
            rows.append((attempt, " ".join(extra) or "(fresh)", Path(resumed.group(1)).name + f" @{resumed.group(2)}" if resumed else "-",
                         ",".join(Path(s).name for s in skipped) or "-", removed[0] if removed else "-", moment, status))
            print("| " + " | ".join(str(c) for c in rows[-1]) + " |", flush=True)
            if code == 0 or failures > 3:
                break
            if attempt > args.kills * 3:
                failures += 1
                break

        print("\n| run | flags | resumed from | skipped (damaged) | removed temporaries | kill moment | outcome |\n"
              "|---|---|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
        same = False
        if failures == 0:
            a, b = final_state(exp), final_state(reference)
            same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
            max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            got, want = losses(exp), losses(reference)
            steps_ok = [s for s, _ in got] == [s for s, _ in want] == list(range(args.steps))
            curve_ok = steps_ok and all(abs(x - y) <= 1e-6 + 1e-5 * abs(y) for (_, x), (_, y) in zip(got, want))
            print(f"\nkills: {kills} ({sum(r[5] == 'during a checkpoint write' for r in rows)} during a checkpoint write); "
                  f"runs: {len(rows)}; failed resumes: {failures}; final weights equal to the uninterrupted run: {same} "
                  f"(max |diff| {max_diff:.3g}); metrics.csv steps 0..{args.steps - 1} each once: {steps_ok}; "
                  f"loss curve equal: {curve_ok}")
            same = same and curve_ok
        else:
            print(f"\nkills: {kills}; failed resumes: {failures}")
        return 0 if failures == 0 and same else 1
    finally:
        if mounted:
            subprocess.run(["umount", str(args.mount)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
