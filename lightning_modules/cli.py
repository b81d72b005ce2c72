"""Shared command-line plumbing of the training stages (distill, final_distill, train.py).

Each stage takes ``--config recipe.yaml`` plus command-line overrides (jsonargparse), saves
the resolved configuration as ``EXP_DIR/config.yaml`` next to its logs, and builds one
Lightning ``Trainer`` with TensorBoard + CSV loggers, step-interval and last checkpoints,
and Lightning's progress bar.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from .atomic_checkpoint import AtomicCheckpointIO, resolve_resume_path
from .finite_guard import NonFiniteGuard
from .history_logger import HistoryCSVLogger
from .preemption import SaveOnSignal
from .run_lock import is_rank_zero


def new_parser(description: str) -> ArgumentParser:
    parser = ArgumentParser(description=description, default_config_files=[], exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML recipe; command-line flags override it")
    return parser


def add_data_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--tsv_dir", type=Path, default=Path("data/librispeech"), help="folder of prepare_data.py file lists")
    group.add_argument("--train_subset", type=str, default="train960", help="tsv name without extension, e.g. train100, train960")
    group.add_argument("--valid_subset", type=str, default="valid")
    group.add_argument("--seconds_per_batch", type=float, default=160.0, help="audio seconds per batch per device")
    group.add_argument("--max_sample_size", type=int, default=250_000, help="longer utterances are cropped (samples)")
    group.add_argument("--min_sample_size", type=int, default=32_000, help="shorter utterances are dropped and counted (samples)")
    group.add_argument("--num_workers", type=int, default=4)


def build_datamodule(cfg: Namespace) -> Any:
    from speech_data.datamodule import SpeechDataModule

    tsv_dir: Path = cfg.tsv_dir
    train_tsv = tsv_dir / f"{cfg.train_subset}.tsv"
    if not train_tsv.is_file():
        raise FileNotFoundError(f"training file list not found: {train_tsv} (run prepare_data.py first)")
    valid_tsv = tsv_dir / f"{cfg.valid_subset}.tsv" if cfg.valid_subset else None
    if valid_tsv is not None and not valid_tsv.is_file():
        raise FileNotFoundError(f"validation file list not found: {valid_tsv}")
    return SpeechDataModule(
        train_tsv, valid_tsv, seconds_per_batch=cfg.seconds_per_batch, max_sample_size=cfg.max_sample_size,
        min_sample_size=cfg.min_sample_size, num_workers=cfg.num_workers, seed=cfg.seed,
    )


def add_trainer_args(parser: ArgumentParser) -> None:
    group = parser.add_argument_group("trainer")
    group.add_argument("--exp_dir", type=Path, required=True, help="logs, checkpoints and the resolved config go here")
    group.add_argument("--accelerator", type=str, default="auto", help="cpu, gpu or auto")
    group.add_argument("--devices", type=str, default="auto", help="number of devices (GPUs or CPU processes) or 'auto'")
    group.add_argument("--num_nodes", type=int, default=1)
    group.add_argument("--strategy", type=str, default="auto", help="auto, ddp, ddp_cpu ... (ddp on several devices)")
    group.add_argument("--precision", type=str, default="32-true", help="32-true, bf16-mixed or 16-mixed")
    group.add_argument("--accum_grad", type=int, default=1, help="gradient accumulation (keeps the effective batch on fewer GPUs)")
    group.add_argument("--clip_norm", type=float, default=10.0)
    group.add_argument("--log_interval", type=int, default=50)
    group.add_argument("--ckpt_interval", type=int, default=1000, help="save a checkpoint every N optimizer steps")
    group.add_argument("--val_interval", type=int, default=0, help="validate every N steps (0: at the end of each epoch)")
    group.add_argument("--seed", type=int, default=2022)
    group.add_argument("--resume", type=str, default=None,
                       help="a Lightning .ckpt to continue from, or 'last' (the newest checkpoint of exp_dir that loads)")
    group.add_argument("--overwrite", type=bool, default=False,
                       help="delete an earlier run's checkpoints and logs in exp_dir and start afresh")
    group.add_argument("--max_nonfinite_steps", type=int, default=20,
                       help="stop after this many consecutive steps with a NaN/inf loss or gradient (skipped); 0: never")
    group.add_argument("--progress_bar", type=bool, default=True)
    group.add_argument("--stop_after_steps", type=Optional[int], default=None,
                       help="stop (with a checkpoint) after N steps without changing the schedule, e.g. for a job time limit")


def save_config(parser: ArgumentParser, cfg: Namespace, exp_dir: Path, name: str = "config.yaml") -> Path:
    exp_dir.mkdir(parents=True, exist_ok=True)
    path = exp_dir / name
    parser.save(cfg, path, overwrite=True, skip_none=False, skip_validation=True)
    return path


def checkpoint_dir(exp_dir: Path) -> Path:
    return exp_dir / "ckpts"


# What a stage run leaves in exp_dir; a fresh run refuses a folder holding any of them
# (lightning_modules.run_lock.check_folder_reuse) unless --resume or --overwrite.
RUN_ARTEFACTS = ("ckpts", "csv_logs", "tb_logs", "config.yaml", "pruned.pth", "*-dp*.pth", "distilhubert.pth")


def resolve_resume(cfg: Namespace) -> Optional[tuple[str, int]]:
    """``--resume`` -> (checkpoint path, its step); ``last`` skips damaged files and says so."""
    resolved = resolve_resume_path(cfg.resume, checkpoint_dir(cfg.exp_dir), "last.ckpt")
    return None if resolved is None else (str(resolved[0]), resolved[1])


def _devices(value: str) -> Any:
    return value if value == "auto" else int(value)


class StopAfterSteps(L.Callback):
    """Ends training after ``num_steps`` optimizer steps and saves ``last.ckpt`` there."""

    def __init__(self, num_steps: int, checkpoint_path: Path) -> None:
        self.num_steps = num_steps
        self.checkpoint_path = checkpoint_path

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.num_steps and not trainer.should_stop:
            trainer.should_stop = True
            trainer.save_checkpoint(self.checkpoint_path)


def build_trainer(cfg: Namespace, max_steps: int, extra_callbacks: Optional[list[Any]] = None,
                  resume_step: Optional[int] = None) -> L.Trainer:
    """``resume_step``: the step of the checkpoint being resumed; metrics.csv keeps the rows before it."""
    exp_dir: Path = cfg.exp_dir
    checkpoints = ModelCheckpoint(
        dirpath=checkpoint_dir(exp_dir),
        filename="step={step}",
        auto_insert_metric_name=False,
        every_n_train_steps=cfg.ckpt_interval,
        save_top_k=-1,
        save_last=True,
        save_on_train_epoch_end=False,
        # One run per folder (run_lock): a resumed run must rewrite last.ckpt, never start last-v1.ckpt,
        # which later stages and --resume last would not see.
        enable_version_counter=False,
    )
    loggers = [
        TensorBoardLogger(str(exp_dir), name="tb_logs", version=""),
        HistoryCSVLogger(str(exp_dir), name="csv_logs", version="", resume_step=resume_step),
    ]
    callbacks: list[Any] = [checkpoints, LearningRateMonitor(logging_interval="step")] + (extra_callbacks or [])
    callbacks += [NonFiniteGuard(cfg.max_nonfinite_steps), SaveOnSignal(checkpoint_dir(exp_dir) / "last.ckpt")]
    if cfg.stop_after_steps is not None:
        callbacks.append(StopAfterSteps(cfg.stop_after_steps, checkpoint_dir(exp_dir) / "last.ckpt"))
    strategy = cfg.strategy
    devices = _devices(cfg.devices)
    if strategy == "ddp_cpu":
        strategy = "ddp"
    val_kwargs: dict[str, Any] = {}
    if cfg.val_interval > 0:
        val_kwargs = {"val_check_interval": cfg.val_interval, "check_val_every_n_epoch": None}
    return L.Trainer(
        default_root_dir=str(exp_dir),
        accelerator=cfg.accelerator,
        devices=devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        max_steps=max_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.accum_grad,
        gradient_clip_val=cfg.clip_norm if cfg.clip_norm > 0 else None,
        log_every_n_steps=cfg.log_interval,
        callbacks=callbacks,
        logger=loggers,
        use_distributed_sampler=False,  # our batch sampler shards by rank itself
        enable_progress_bar=cfg.progress_bar,
        num_sanity_val_steps=0,
        deterministic=False,
        plugins=[AtomicCheckpointIO()],  # atomic, NaN-checked writes; weights_only=True reads (resume too)
        **val_kwargs,
    )


def is_global_zero() -> bool:
    return is_rank_zero()


def fit_stage(parser: ArgumentParser, cfg: Namespace, module: L.LightningModule, max_steps: int) -> L.Trainer:
    """Fit one stage into ``cfg.exp_dir``, one run per folder.

    Holds ``exp_dir/.run.lock`` for the whole run (a concurrent run is refused naming its PID
    and host), refuses an earlier run's folder without ``--resume`` / ``--overwrite``, resumes
    from the newest loadable checkpoint, keeps the metrics history, and on SIGTERM / SIGUSR1
    saves ``last.ckpt`` and exits with status 128 + signal (``--resume last`` continues).
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from .preemption import exit_status
    from .run_lock import RunLock, check_folder_reuse

    exp_dir: Path = cfg.exp_dir
    lock = RunLock(exp_dir)
    if is_rank_zero():  # DDP children started by Lightning run inside the parent's lock
        lock.acquire()
    try:
        if is_rank_zero():
            check_folder_reuse(exp_dir, RUN_ARTEFACTS, resume=cfg.resume is not None, overwrite=cfg.overwrite)
        resume = resolve_resume(cfg)
        trainer = build_trainer(cfg, max_steps=max_steps, resume_step=resume[1] if resume else None)
        if trainer.is_global_zero:
            save_config(parser, cfg, exp_dir)
        saver = next(c for c in trainer.callbacks if isinstance(c, SaveOnSignal))
        try:
            trainer.fit(module, datamodule=build_datamodule(cfg), ckpt_path=resume[0] if resume else None)
        except SIGTERMException:
            saver.received = saver.received or 15
        status = exit_status(saver)
        if status is not None:
            print(f"stopped by a signal at step {trainer.global_step}; checkpoint {checkpoint_dir(exp_dir) / 'last.ckpt'}; "
                  "continue with --resume last", flush=True)
            raise SystemExit(status)
        return trainer
    finally:
        lock.release()
