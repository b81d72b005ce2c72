"""Training under SLURM: ranks from ``srun``, and a checkpoint-and-requeue on preemption.

``cluster_trainer_kwargs(...)`` is what the trainer builder calls. Three cases:

- inside an ``srun`` step (``SLURM_STEP_ID`` set): the step's tasks are the DDP ranks. With N tasks
  per node on M nodes the trainer gets ``devices=N``, ``num_nodes=M`` and DDP (gloo on CPU, NCCL on
  GPU) through Lightning's ``SLURMEnvironment``; the recipe's ``devices`` / ``num_nodes`` give way
  to the allocation (a note says so when they differ).
- inside a SLURM batch job but not in an ``srun`` step (a stage the batch shell runs itself): one
  local process, whatever ``SLURM_NTASKS`` says, so Lightning does not wait for ranks that were
  never launched.
- outside SLURM: the configuration as given.

In every case a ``PreemptionCheckpoint`` callback is added. On the warning signal that
``sbatch --signal=USR1@SECONDS`` asks for (SIGUSR1), or on SIGTERM, it lets the current step finish,
agrees with the other ranks on the step to stop at, writes ``ckpts/last.ckpt`` atomically (temp
file, then rename), requeues the job when it runs under SLURM and got SIGUSR1 (``scontrol requeue``,
rank 0 only) and ends the process with ``PREEMPTED_EXIT_CODE``. ``--resume last`` then continues
exactly from that step. Lightning's own SLURM handler is switched off (``auto_requeue=False``): it
saves from inside the signal handler, in the middle of a step, and each rank at its own moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any, Optional

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import LightningEnvironment, SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_info

# EX_TEMPFAIL: "try again later"; run.sh tells a preempted stage from a failed one by it.
PREEMPTED_EXIT_CODE = 75


def in_srun_step() -> bool:
    """This process is one task of an ``srun`` step (not the batch shell's own process)."""
    return "SLURM_JOB_ID" in os.environ and "SLURM_STEP_ID" in os.environ and "SLURM_STEP_NUM_TASKS" in os.environ


def in_slurm_job() -> bool:
    return "SLURM_JOB_ID" in os.environ


def srun_layout() -> tuple[int, int]:
    """(tasks per node, nodes) of the current ``srun`` step; SLURM starts the same number on each node."""
    num_tasks = int(os.environ["SLURM_STEP_NUM_TASKS"])
    num_nodes = int(os.environ.get("SLURM_STEP_NUM_NODES", os.environ.get("SLURM_NNODES", "1")))
    if num_tasks % num_nodes:
        raise RuntimeError(f"srun started {num_tasks} tasks on {num_nodes} nodes; DDP needs the same number on every "
                           f"node (sbatch --ntasks-per-node)")
    # Lightning reads SLURM_NTASKS_PER_NODE to validate the layout; srun -n without it leaves it unset.
    os.environ.setdefault("SLURM_NTASKS_PER_NODE", str(num_tasks // num_nodes))
    return num_tasks // num_nodes, num_nodes


class PreemptionCheckpoint(L.Callback):
    """On SIGUSR1 / SIGTERM: finish the step, save ``checkpoint_path`` atomically, requeue, exit.

    The handlers only record the signal; the work happens at the next ``on_train_batch_end``
    that completed an optimizer step (never in the middle of gradient accumulation), where every
    rank is at the same step: the flag is max-reduced across ranks, so a signal that reached one
    rank stops all of them together (SIGTERM outranks SIGUSR1: a job being ended is not requeued).
    Handlers are installed at ``setup`` and again after Lightning's own at ``on_train_start``, and
    restored at ``teardown``.
    """

    def __init__(self, checkpoint_path: Path, requeue: bool) -> None:
        self.checkpoint_path = Path(checkpoint_path)
        self.requeue = requeue
        self._signal: int = 0
        self._previous: dict[int, Any] = {}
        self._step_seen = -1

    def _record(self, signum: int, _frame: Optional[FrameType]) -> None:
        self._signal = max(self._signal, int(signum))

    def _install(self) -> None:
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._record)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Early, so a signal during start-up is kept for the first step instead of ending the process.
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Again after Lightning registered its own SIGTERM handler, which would raise mid-epoch.
        self._install()
        self._step_seen = trainer.global_step

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            flag = torch.tensor([self._signal], dtype=torch.int64, device=trainer.strategy.root_device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            return int(flag.item())
        return self._signal

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self._step_seen:
            return  # accumulating gradients: a checkpoint here would lose them
        self._step_seen = trainer.global_step
        signum = self._agreed_signal(trainer)
        if not signum:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.checkpoint_path.with_name(self.checkpoint_path.name + ".partial")
        trainer.save_checkpoint(partial)  # every rank calls it (it ends in a barrier); rank 0 writes
        name = signal.Signals(signum).name
        requeued = ""
        if trainer.is_global_zero:
            os.replace(partial, self.checkpoint_path)
            if self.requeue and signum == signal.SIGUSR1 and in_slurm_job():
                job = os.environ.get("SLURM_ARRAY_JOB_ID")
                job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ["SLURM_JOB_ID"]
                result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"{name} at step {trainer.global_step}: saved {self.checkpoint_path}, but "
                                       f"'scontrol requeue {job}' failed: {result.stderr.strip()}")
                requeued = f"; requeued SLURM job {job}"
            print(f"preempted ({name}) at step {trainer.global_step}: saved {self.checkpoint_path}{requeued}; "
                  f"--resume last continues from here", flush=True)
        trainer.strategy.barrier("preemption-checkpoint")
        # This batch's metrics reach the loggers only after the hook returns, which it never does:
        # log them now (Lightning's own call for the step) and flush, so the resumed run's history
        # (which keeps the rows before its step) has every step once.
        trainer._logger_connector.update_train_step_metrics()
        for logger in trainer.loggers:
            logger.save()
        # SystemExit passes through Lightning's teardown and ends the process with this code.
        raise SystemExit(PREEMPTED_EXIT_CODE)


class RankReport(L.Callback):
    """One line per rank when training ends: evidence in the job log that every task trained."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        self.batches += 1

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"SLURM rank {trainer.global_rank}/{trainer.world_size}: trained {self.batches} batches in this process, "
              f"global step {trainer.global_step}", flush=True)


def cluster_trainer_kwargs(devices: Any, num_nodes: int, strategy: Any,
                           checkpoint_path: Path) -> tuple[dict[str, Any], list[L.Callback]]:
    """Trainer keyword arguments (devices, num_nodes, strategy, plugins) and callbacks for this launch.

    ``checkpoint_path``: where a preempted run saves (the builder's ``last.ckpt``, which
    ``--resume last`` reads).
    """
    kwargs: dict[str, Any] = {"devices": devices, "num_nodes": num_nodes, "strategy": strategy}
    callbacks: list[L.Callback] = [PreemptionCheckpoint(checkpoint_path, requeue=in_slurm_job())]
    if in_srun_step():
        tasks_per_node, nodes = srun_layout()
        if (devices, num_nodes) not in (("auto", nodes), (tasks_per_node, nodes)):
            rank_zero_info(f"SLURM: devices={devices}, num_nodes={num_nodes} replaced by this srun step's "
                           f"{tasks_per_node} task(s) per node on {nodes} node(s)")
        kwargs.update(devices=tasks_per_node, num_nodes=nodes,
                      plugins=[SLURMEnvironment(auto_requeue=False)])
        if tasks_per_node * nodes > 1 and strategy in ("auto", "ddp_cpu"):
            kwargs["strategy"] = "ddp"
        callbacks.append(RankReport())
        print(f"SLURM rank {os.environ['SLURM_PROCID']}/{tasks_per_node * nodes} on node {os.environ.get('SLURMD_NODENAME', '?')} "
              f"(job {os.environ['SLURM_JOB_ID']}, step {os.environ['SLURM_STEP_ID']}, local rank {os.environ.get('SLURM_LOCALID', '0')})",
              flush=True)
    elif in_slurm_job():
        kwargs["plugins"] = [LightningEnvironment()]
    return kwargs, callbacks
