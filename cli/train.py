"""``train.py``: one command for MelHuBERT pre-training and every compression mode.

::

    python train.py -m MODE [-i CKPT] -g MODEL.yaml -c RUNNER.yaml -n EXP_DIR [-f 10|20] [--seed N] [--resume [CKPT]]

What a run does:

1. reads and checks both yamls (errors name the file and the key), copies them into
   ``EXP_DIR`` as ``config_model.yaml`` and ``config_runner.yaml``;
2. seeds python / numpy / torch (cuDNN deterministic, as the original);
3. loads ``-i`` if given through the one model loader (``wav2vec2.checkpoint.open_model_file``),
   which detects the format by content: a MelHuBERT checkpoint (``model`` + ``Upstream_Config``:
   ours, released ones, any ``train.py`` output), a wav2vec2-family model file (``state_dict`` +
   ``config``) or a DPHuBERT stage checkpoint;
4. asks the mode's plug-in module for the LightningModule and fits it on the Mel data of
   ``datarc`` with the Trainer of ``lightning_modules.trainer`` (TensorBoard + CSV logs in
   ``EXP_DIR``, progress bar, gradient accumulation, precision, DDP via ``runner.devices``);
5. saves ``EXP_DIR/checkpoint-step-{N}.ckpt`` every ``runner.save_step`` updates,
   ``checkpoint-epoch-{E}.ckpt`` every ``runner.save_every_x_epochs`` epochs and
   ``last-step.ckpt`` at each of those and at the end (``lightning_modules.suite_checkpoints``).
   Each is a Lightning checkpoint (exact
   ``--resume``) that also holds the MelHuBERT keys ``model``, ``Upstream_Config``,
   ``Optimizer``, ``Step``, ``Runner`` (see ``wav2vec2.melhubert_checkpoint``), so it is a valid ``-i``
   for every mode and loads with the original recipe.

Modes and their plug-in modules (``MODES``): a plug-in defines

* ``build_module(mode, model, model_cfg, runner_cfg, init_checkpoint) -> CompressionModule``:
  ``model`` is the ``-i`` model (eval mode; None without ``-i``), ``model_cfg`` / ``runner_cfg``
  the parsed yamls, ``init_checkpoint`` the ``-i`` file's dict. The runner adds to
  ``runner_cfg["runner"]``: ``seed``, ``frame_period_ms``, ``exp_dir``, ``initial_weight``
  (the ``-i`` path or None), ``resume_from`` (or None), ``init_optimizer_from_initial_weight``,
  ``model_config_path``, ``runner_config_path``. On ``--resume`` ``model`` /
  ``init_checkpoint`` come from the checkpoint being resumed (its ``Upstream_Config``
  describes the current, possibly compressed, architecture); Lightning then restores
  weights, optimizer, loops and RNG from it.
* ``export(module) -> dict``: the checkpoint keys describing the trained model (for MelHuBERT
  ``{"model", "Upstream_Config"}``; for a waveform model ``{"wav2vec2": {"state_dict", "config"}}``,
  because Lightning's own keys such as ``state_dict`` must not be overwritten); the runner adds
  ``Optimizer``, ``Step`` and ``Runner``.
* optionally ``build_datamodule(model_cfg, runner_cfg) -> LightningDataModule`` (default:
  :func:`mel_datamodule`).

Modes whose module does not exist yet fail with a "not implemented yet" error naming the file.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, Sequence

import lightning as L
import numpy as np
import torch
from lightning_modules.atomic_checkpoint import ResumeError
from lightning_modules.finite_guard import NonFiniteTrainingError
from lightning_modules.preemption import fit_until_signal
from lightning_modules.run_lock import RunLock, RunLockError, check_folder_reuse, is_rank_zero
from lightning_modules.suite_checkpoints import LAST_CHECKPOINT, SuiteCheckpoints
from lightning_modules.trainer import TrainerSettings, build_trainer, resume_point
from methods.suite_config import (
    RunnerError,
    RunnerSettings,
    check_runner_config,
    check_runner_keys,
    load_yaml,
    mel_datamodule,
    sequence_length,
)
from wav2vec2.atomic_io import atomic_copy
from wav2vec2.checkpoint import CheckpointError, open_model_file
from wav2vec2.finite import NonFiniteError
from speech_data.mel_data import MelDataError

logger = logging.getLogger(__name__)

MODEL_CONFIG_COPY = "config_model.yaml"
RUNNER_CONFIG_COPY = "config_runner.yaml"


@dataclass(frozen=True)
class ModeSpec:
    """One ``-m`` choice: the plug-in module implementing it and whether it needs ``-i``."""

    name: str
    module: str
    requires_init: bool
    description: str

    @property
    def file(self) -> str:
        return self.module.replace(".", "/") + ".py"


MODES: dict[str, ModeSpec] = {
    spec.name: spec
    for spec in (
        ModeSpec("melhubert", "methods.melhubert_pretrain", False,
                 "pre-train MelHuBERT (from scratch, or continue from -i)"),
        ModeSpec("weight-pruning", "methods.weight_pruning", True,
                 "iterative global magnitude pruning with retraining"),
        ModeSpec("head-pruning", "methods.head_pruning", True,
                 "remove attention heads step by step (l1 or data-driven scores) with retraining"),
        ModeSpec("row-pruning", "methods.row_pruning", True,
                 "remove FFN rows step by step with retraining"),
        ModeSpec("low-rank", "methods.low_rank_retraining", True,
                 "truncated-SVD factorisation of linear maps with retraining"),
        ModeSpec("distillation", "methods.distillation", True,
                 "distil the -i teacher into a smaller student"),
    )
}


def load_mode(name: str) -> ModuleType:
    """Import the plug-in of mode ``name``; NotImplementedError if it is not there (yet)."""
    if name not in MODES:
        raise RunnerError(f"unknown mode '{name}'; choose from: {', '.join(MODES)}")
    spec = MODES[name]
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as error:
        # The plug-in's own module, or the package it would live in, is missing.
        if error.name is None or not spec.module.startswith(error.name):
            raise
        raise NotImplementedError(f"mode '{name}' is registered but not implemented yet: {spec.file} does not exist") from None
    missing = [fn for fn in ("build_module", "export") if not callable(getattr(module, fn, None))]
    if missing:
        raise NotImplementedError(f"mode '{name}': {spec.file} does not define {' and '.join(missing)}() yet")
    return module


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


def suite_trainer(settings: RunnerSettings, exp_dir: Path, callbacks: Sequence[L.Callback],
                  resumed_step: Optional[int] = None, max_nonfinite_steps: int = 20) -> L.Trainer:
    """The run's Trainer settings: loggers, progress bar, accumulation, precision, devices.

    TensorBoard adds event files to ``tb_logs``; CSV metrics go to ``csv_logs/metrics.csv``; a
    resume keeps its rows before ``resumed_step`` and appends. Checkpoints are written atomically
    and never with NaN weights; non-finite steps are skipped; SIGTERM / SIGUSR1 save ``last-step.ckpt``.
    """
    limits: dict[str, Any] = (
        {"max_epochs": settings.n_epochs, "max_steps": -1} if settings.n_epochs > 0
        else {"max_epochs": -1, "max_steps": settings.total_steps}
    )
    validation: dict[str, Any] = {"limit_val_batches": 0}
    if settings.valid_sets:
        validation = ({"val_check_interval": settings.valid_step, "check_val_every_n_epoch": None}
                      if settings.valid_step else {"check_val_every_n_epoch": 1})
    return build_trainer(TrainerSettings(
        exp_dir=exp_dir,
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        accumulate=settings.accumulate,
        clip_norm=None,  # the module clips (with NaN-skip) in configure_gradient_clipping
        log_every=settings.log_step,
        progress_bar=settings.progress_bar,
        resume_step=resumed_step,
        max_nonfinite_steps=max_nonfinite_steps,
        signal_checkpoint=exp_dir / LAST_CHECKPOINT,
        checkpointing=False,  # SuiteCheckpoints writes the checkpoints
        validation=validation,
        **limits,
    ), callbacks)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="train.py",
        description="MelHuBERT pre-training and compression (" + "; ".join(f"{s.name}: {s.description}" for s in MODES.values()) + ")",
    )
    parser.add_argument("-m", "--mode", required=True, choices=list(MODES), help="what to run")
    parser.add_argument("-i", "--initial_weight", type=Path, default=None,
                        help="checkpoint to start from / compress (teacher in distillation): MelHuBERT .ckpt or wav2vec2-family .pth")
    parser.add_argument("-g", "--model_config", type=Path, default=None, help="model yaml (default on --resume: EXP_DIR/config_model.yaml)")
    parser.add_argument("-c", "--runner_config", type=Path, default=None, help="runner yaml (default on --resume: EXP_DIR/config_runner.yaml)")
    parser.add_argument("-n", "--expdir", type=Path, required=True, help="checkpoints, logs and config copies go here")
    parser.add_argument("-f", "--frame_period", type=int, choices=(10, 20), default=20, help="frame period in ms (20: stacked frames)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                        help="continue exactly from CKPT (default: the newest checkpoint of EXP_DIR that loads)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete an earlier run's checkpoints and logs in EXP_DIR and start afresh")
    parser.add_argument("--max_nonfinite_steps", type=int, default=20,
                        help="stop after this many consecutive steps with a NaN/inf loss or gradient (skipped); 0: never")
    parser.add_argument("--init_optimizer_from_initial_weight", action="store_true",
                        help="also start the optimizer moments from the -i checkpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda", "gpu"), default=None,
                        help="override runner.accelerator")
    parser.add_argument("--multi_gpu", action="store_true",
                        help="the original's flag: train on every visible GPU (DDP; overrides runner.devices)")
    return parser


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _resolve_resume(args: argparse.Namespace) -> Optional[tuple[Path, int]]:
    """The one resume rule (``trainer.resume_point``): ``--resume`` alone picks the newest
    checkpoint of EXP_DIR that loads (``last-step.ckpt`` first), naming the damaged ones it skips."""
    return resume_point(args.resume, args.expdir / LAST_CHECKPOINT)


def _config_paths(args: argparse.Namespace, resuming: bool) -> tuple[Path, Path]:
    saved_model, saved_runner = args.expdir / MODEL_CONFIG_COPY, args.expdir / RUNNER_CONFIG_COPY
    model_path = args.model_config or (saved_model if resuming else None)
    runner_path = args.runner_config or (saved_runner if resuming else None)
    if model_path is None or runner_path is None:
        missing = " and ".join(flag for flag, value in (("-g MODEL.yaml", model_path), ("-c RUNNER.yaml", runner_path)) if value is None)
        raise RunnerError(f"missing {missing}")
    if resuming and saved_model.is_file() and model_path.resolve() != saved_model.resolve():
        if load_yaml(model_path, "model") != load_yaml(saved_model, "model"):
            raise RunnerError(f"--resume: {model_path} differs from the run's {saved_model}; a resumed run keeps its "
                              "model config (omit -g to use the saved one)")
    if resuming and saved_runner.is_file() and runner_path.resolve() != saved_runner.resolve():
        if load_yaml(runner_path, "runner") != load_yaml(saved_runner, "runner"):
            logger.warning("--resume: %s differs from the run's %s; the new runner config is used and copied "
                           "(the run is no longer an exact continuation)", runner_path, saved_runner)
    return model_path, runner_path


def _copy_config(source: Path, target: Path) -> None:
    if not target.exists() or source.resolve() != target.resolve():
        atomic_copy(source, target)


# What a run leaves in EXP_DIR: a fresh run refuses a folder holding any of them without --resume / --overwrite.
RUN_ARTEFACTS = ("*.ckpt", "csv_logs", "tb_logs")


def run(argv: Optional[Sequence[str]] = None) -> Path:
    """Parse ``argv``, train, return the path of ``last-step.ckpt``. Raises on bad input.

    The run holds ``EXP_DIR/.run.lock`` throughout (a concurrent run into the folder is refused);
    a signal-stopped run raises ``SystemExit(128 + signal)`` after saving ``last-step.ckpt``.
    """
    args = build_parser().parse_args(argv)
    lock = RunLock(args.expdir)
    if is_rank_zero():  # DDP children started by Lightning run inside the parent's lock
        lock.acquire()
    try:
        return _run_locked(args)
    finally:
        lock.release()


def _run_locked(args: argparse.Namespace) -> Path:
    spec = MODES[args.mode]
    if is_rank_zero():
        check_folder_reuse(args.expdir, RUN_ARTEFACTS, resume=args.resume is not None, overwrite=args.overwrite)
    point = _resolve_resume(args)
    resume = None if point is None else point[0]
    if spec.requires_init and args.initial_weight is None and resume is None:
        raise RunnerError(f"mode '{args.mode}' needs -i CKPT (the pre-trained model to {'distil' if args.mode == 'distillation' else 'compress'})")
    if args.initial_weight is not None and not args.initial_weight.is_file():
        raise FileNotFoundError(f"-i: checkpoint not found: {args.initial_weight}")
    if args.init_optimizer_from_initial_weight and args.initial_weight is None:
        raise RunnerError("--init_optimizer_from_initial_weight needs -i CKPT")
    plugin = load_mode(args.mode)

    model_path, runner_path = _config_paths(args, resume is not None)
    model_cfg = load_yaml(model_path, "model")
    runner_cfg = load_yaml(runner_path, "runner")
    check_runner_keys(runner_cfg, runner_path)
    settings = check_runner_config(runner_cfg, runner_path)
    if args.device is not None:
        settings = _with_accelerator(settings, args.device)
    if args.multi_gpu:
        settings = _with_all_gpus(settings)
    sequence_length(model_cfg, settings, model_path)  # checked before any work

    exp_dir: Path = args.expdir
    exp_dir.mkdir(parents=True, exist_ok=True)
    _copy_config(model_path, exp_dir / MODEL_CONFIG_COPY)
    _copy_config(runner_path, exp_dir / RUNNER_CONFIG_COPY)
    seed_everything(args.seed)

    source = resume if resume is not None else args.initial_weight
    initial = open_model_file(source) if source is not None else None
    runner_cfg = dict(runner_cfg)
    runner_cfg["runner"] = {
        **runner_cfg["runner"],
        "seed": args.seed,
        "frame_period_ms": args.frame_period,
        "exp_dir": str(exp_dir),
        "initial_weight": None if args.initial_weight is None else str(args.initial_weight),
        "resume_from": None if resume is None else str(resume),
        "init_optimizer_from_initial_weight": bool(args.init_optimizer_from_initial_weight) and resume is None,
        "model_config_path": str(model_path),
        "runner_config_path": str(runner_path),
    }
    try:
        module = plugin.build_module(args.mode, initial.model if initial else None, model_cfg, runner_cfg,
                                     initial.checkpoint if initial else None)
    except (TypeError, ValueError) as error:
        raise RunnerError(str(error)) from error
    build_data = getattr(plugin, "build_datamodule", None)
    datamodule = build_data(model_cfg, runner_cfg) if callable(build_data) else mel_datamodule(model_cfg, runner_cfg)

    checkpoints = SuiteCheckpoints(exp_dir, plugin.export, runner_cfg, settings.save_step, settings.save_every_x_epochs)
    resumed_step = None if point is None else point[1]
    trainer = suite_trainer(settings, exp_dir, [checkpoints], resumed_step, args.max_nonfinite_steps)
    status = fit_until_signal(trainer, module, datamodule, resume)
    if status is not None:
        print(f"train.py: stopped by a signal at step {trainer.global_step}; {exp_dir / LAST_CHECKPOINT} saved; "
              "continue with --resume", flush=True)
        raise SystemExit(status)
    last = exp_dir / LAST_CHECKPOINT
    if trainer.is_global_zero:
        print(f"train.py: {args.mode} finished at step {trainer.global_step}; wrote {last}")
    return last


def _with_accelerator(settings: RunnerSettings, device: str) -> RunnerSettings:
    from dataclasses import replace

    return replace(settings, accelerator="gpu" if device == "cuda" else device)


def _with_all_gpus(settings: RunnerSettings) -> RunnerSettings:
    """``--multi_gpu`` (the original's DataParallel switch) as Lightning devices: every visible GPU, DDP."""
    from dataclasses import replace

    count = torch.cuda.device_count()
    if count == 0:
        raise RunnerError("--multi_gpu: no CUDA GPU is visible; drop the flag to train on "
                          f"runner.accelerator={settings.accelerator!r}, or set runner.devices in the runner yaml")
    return replace(settings, accelerator="gpu", devices=count, strategy="ddp" if count > 1 else settings.strategy)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: errors in the input become one ``train.py: error: ...`` line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (RunnerError, CheckpointError, MelDataError, FileNotFoundError, NotImplementedError, RunLockError,
            ResumeError, NonFiniteError, NonFiniteTrainingError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
