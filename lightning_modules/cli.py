"""Shared command-line plumbing of the training stages (distill, final_distill, train.py).

Each stage takes ``--config recipe.yaml`` plus command-line overrides (jsonargparse), saves
the resolved configuration as ``EXP_DIR/config.yaml`` next to its logs, and gets its
Lightning ``Trainer`` from ``lightning_modules.trainer`` with step-interval and last
checkpoints (``ckpts/step=N.ckpt``, ``ckpts/last.ckpt``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from lightning.pytorch.callbacks import ModelCheckpoint

from .config import nearest
from .run_lock import is_rank_zero
from .trainer import TrainerSettings, resume_point
from .trainer import build_trainer as build_lightning_trainer


class _Parser(ArgumentParser):
    """jsonargparse's parser, whose "not accepted" errors also name the nearest valid option."""

    def error(self, message: str, ex: Optional[Exception] = None) -> Any:  # type: ignore[override]
        match = re.search(r"[Kk]ey '([^']+)' is not expected|Option '([^']+)' is not accepted|unrecognized arguments: (\S+)", message)
        if match:
            given = next(g for g in match.groups() if g).lstrip("-")
            options = [a.dest for a in self._actions if a.dest not in ("help", "config")]
            guess = nearest(given, options)
            if guess:
                message = f"{message} (did you mean '{guess}'?)"
        return super().error(message, ex)


def new_parser(description: str) -> ArgumentParser:
    parser = _Parser(description=description, default_config_files=[], exit_on_error=True)
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
    group.add_argument("--crop_mode", type=str, default="max",
                       help="max: crop utterances to --max_sample_size, pad batches; shortest: crop each batch to its "
                            "shortest utterance (the original DPHuBERT)")
    group.add_argument("--drop_long", type=bool, default=False,
                       help="drop utterances over --max_sample_size instead of cropping them (the original DPHuBERT: true)")


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
        crop_mode=cfg.crop_mode, drop_long=cfg.drop_long,
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
    group.add_argument("--resume_checkpoint", type=Optional[str], default=None,
                       help="deprecated: the original DPHuBERT name of --resume")
    group.add_argument("--gpus", type=Optional[int], default=None, help="deprecated: the original DPHuBERT name of --devices")


# original DPHuBERT flag -> this toolkit's flag
DEPRECATED_ALIASES = {"resume_checkpoint": "resume", "gpus": "devices"}


def apply_deprecated_aliases(cfg: Namespace) -> Namespace:
    """Fold the original flag names into ours, with one deprecation note each on stderr.

    Giving both an alias and its new flag with different values is an error.
    """
    import sys

    for old, new in DEPRECATED_ALIASES.items():
        value = cfg.get(old)
        if value is None:
            continue
        value = str(value)
        current = cfg.get(new)
        default = "auto" if new == "devices" else None
        if current not in (default, value):
            raise ValueError(f"--{old} {value} conflicts with --{new} {current}; give only --{new}")
        print(f"note: --{old} is deprecated (original DPHuBERT name); use --{new} {value}", file=sys.stderr)
        cfg[new] = value
        cfg[old] = None
    return cfg


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
    """``--resume`` -> (checkpoint path, its step) by the one resume rule (``trainer.resume_point``):
    ``last`` picks the newest loadable checkpoint of ``ckpts/`` and names the damaged ones it skips."""
    point = resume_point(cfg.resume, checkpoint_dir(cfg.exp_dir) / "last.ckpt")
    return None if point is None else (str(point[0]), point[1])


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
    """The stage's Trainer: ``ckpts/step=N.ckpt`` every ``--ckpt_interval`` updates and ``ckpts/last.ckpt``.

    ``resume_step``: the step of the checkpoint being resumed; metrics.csv keeps the rows before it.
    """
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
    callbacks: list[Any] = [checkpoints] + (extra_callbacks or [])
    if cfg.stop_after_steps is not None:
        callbacks.append(StopAfterSteps(cfg.stop_after_steps, checkpoint_dir(exp_dir) / "last.ckpt"))
    settings = TrainerSettings(
        exp_dir=exp_dir,
        max_steps=max_steps,
        accelerator=cfg.accelerator,
        devices=_devices(cfg.devices),
        num_nodes=cfg.num_nodes,
        strategy="ddp" if cfg.strategy == "ddp_cpu" else cfg.strategy,
        precision=cfg.precision,
        accumulate=cfg.accum_grad,
        clip_norm=cfg.clip_norm if cfg.clip_norm > 0 else None,
        log_every=cfg.log_interval,
        progress_bar=cfg.progress_bar,
        checkpointing=True,
        validation={"val_check_interval": cfg.val_interval, "check_val_every_n_epoch": None} if cfg.val_interval > 0 else {},
        deterministic=False,
        preemption_checkpoint=checkpoint_dir(exp_dir) / "last.ckpt",
        resume_step=resume_step,
        max_nonfinite_steps=cfg.max_nonfinite_steps,
    )
    return build_lightning_trainer(settings, callbacks)


def is_global_zero() -> bool:
    return is_rank_zero()


def fit_stage(parser: ArgumentParser, cfg: Namespace, module: L.LightningModule, max_steps: int) -> L.Trainer:
    """Fit one stage into ``cfg.exp_dir``, one run per folder.

    Holds ``exp_dir/.run.lock`` for the whole run (a concurrent run is refused naming its PID
    and host), refuses an earlier run's folder without ``--resume`` / ``--overwrite``, resumes
    from the newest loadable checkpoint, keeps the metrics history, and on SIGTERM / SIGUSR1
    saves ``last.ckpt`` and exits with status 128 + signal (``--resume last`` continues).
    """
    from .preemption import fit_until_signal
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
        status = fit_until_signal(trainer, module, build_datamodule(cfg), resume[0] if resume else None)
        if status is not None:
            print(f"stopped by a signal at step {trainer.global_step}; checkpoint {checkpoint_dir(exp_dir) / 'last.ckpt'}; "
                  "continue with --resume last", flush=True)
            raise SystemExit(status)
        return trainer
    finally:
        lock.release()
