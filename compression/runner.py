"""``train.py``: one command for MelHuBERT pre-training and every compression mode.

::

    python train.py -m MODE [-i CKPT] -g MODEL.yaml -c RUNNER.yaml -n EXP_DIR [-f 10|20] [--seed N] [--resume [CKPT]]

What a run does:

1. reads and checks both yamls (errors name the file and the key), copies them into
   ``EXP_DIR`` as ``config_model.yaml`` and ``config_runner.yaml``;
2. seeds python / numpy / torch (cuDNN deterministic, as the original);
3. loads ``-i`` if given, detecting the family by content: a MelHuBERT checkpoint (``model`` +
   ``Upstream_Config``: ours, released ones, any ``train.py`` output) or a wav2vec2-family
   model file (``state_dict`` + ``config``, ``wav2vec2.checkpoint``);
4. asks the mode's plug-in module for the LightningModule and fits it on the Mel data of
   ``datarc`` with a Lightning Trainer (TensorBoard + CSV logs in ``EXP_DIR``, progress bar,
   gradient accumulation, precision, DDP via ``runner.devices``);
5. saves ``EXP_DIR/checkpoint-step-{N}.ckpt`` every ``runner.save_step`` updates,
   ``checkpoint-epoch-{E}.ckpt`` every ``runner.save_every_x_epochs`` epochs and
   ``last-step.ckpt`` at each of those and at the end. Each is a Lightning checkpoint (exact
   ``--resume``) that also holds the MelHuBERT keys ``model``, ``Upstream_Config``,
   ``Optimizer``, ``Step``, ``Runner`` (see ``melhubert.checkpoint``), so it is a valid ``-i``
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
from typing import Any, Callable, Mapping, Optional, Sequence

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from compression.config import ConfigError, DottedConfig
from melhubert.checkpoint import (
    CheckpointError,
    is_melhubert_checkpoint,
    model_from_checkpoint,
    plain,
    read_checkpoint,
)
from lightning_modules.atomic_checkpoint import AtomicCheckpointIO, ResumeError, resolve_resume_path
from lightning_modules.finite_guard import NonFiniteGuard, NonFiniteTrainingError
from lightning_modules.history_logger import HistoryCSVLogger
from lightning_modules.preemption import SaveOnSignal, exit_status
from lightning_modules.run_lock import RunLock, RunLockError, check_folder_reuse, is_rank_zero
from melhubert.data import MelDataError
from wav2vec2.atomic_io import atomic_copy
from wav2vec2.finite import NonFiniteError

logger = logging.getLogger(__name__)

MODEL_CONFIG_COPY = "config_model.yaml"
RUNNER_CONFIG_COPY = "config_runner.yaml"
LAST_CHECKPOINT = "last-step.ckpt"
WAV2VEC2_KEY = "wav2vec2"  # train.py checkpoints of waveform models: {"wav2vec2": {"state_dict", "config"}}
# What a run leaves in EXP_DIR: a fresh run refuses a folder holding any of them without --resume / --overwrite.
RUN_ARTEFACTS = ("*.ckpt", "csv_logs", "tb_logs")
LIGHTNING_KEYS = frozenset({"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step"})


# A command line or config problem; the message names the file / key / option. One class with the
# modes' YAML errors, so callers catch every configuration problem the same way.
RunnerError = ConfigError


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
        ModeSpec("melhubert", "lightning_modules.melhubert_pretrain", False,
                 "pre-train MelHuBERT (from scratch, or continue from -i)"),
        ModeSpec("weight-pruning", "compression.mode_weight_pruning", True,
                 "iterative global magnitude pruning with retraining"),
        ModeSpec("head-pruning", "compression.mode_head_pruning", True,
                 "remove attention heads step by step (l1 or data-driven scores) with retraining"),
        ModeSpec("row-pruning", "compression.mode_row_pruning", True,
                 "remove FFN rows step by step with retraining"),
        ModeSpec("low-rank", "compression.mode_low_rank", True,
                 "truncated-SVD factorisation of linear maps with retraining"),
        ModeSpec("distillation", "compression.mode_distillation", True,
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
        if error.name != spec.module:
            raise
        raise NotImplementedError(f"mode '{name}' is registered but not implemented yet: {spec.file} does not exist") from None
    missing = [fn for fn in ("build_module", "export") if not callable(getattr(module, fn, None))]
    if missing:
        raise NotImplementedError(f"mode '{name}': {spec.file} does not define {' and '.join(missing)}() yet")
    return module


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def load_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A yaml file that must hold a mapping; errors name the file (and line for syntax errors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunnerError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise RunnerError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class RunnerSettings:
    """The checked runner yaml (``runner``, ``optimizer``, ``datarc`` sections)."""

    n_epochs: int
    total_steps: int
    gradient_clipping: float
    accumulate: int
    log_step: int
    save_step: Optional[int]
    save_every_x_epochs: Optional[int]
    valid_step: Optional[int]
    precision: str
    accelerator: str
    devices: Any
    num_nodes: int
    strategy: str
    progress_bar: bool
    train_sets: list[str]
    valid_sets: list[str]
    batch_size: int
    frames_per_batch: Optional[int]
    max_timestep: int
    num_workers: int
    sequence_length: Optional[int]


def check_runner_config(data: Mapping[str, Any], path: str | Path) -> RunnerSettings:
    """Validate the runner yaml; every error names the file and the key."""
    r = DottedConfig(data, str(path))
    r.section("runner")
    r.section("datarc")
    optimizer = r.section("optimizer")
    n_epochs = r.integer("runner.n_epochs", -1)
    total_steps = r.integer("runner.total_steps", -1)
    if n_epochs <= 0 and total_steps <= 0:
        raise RunnerError(f"{path}: set 'runner.n_epochs' or 'runner.total_steps' to a positive number")
    r.number("optimizer.lr", 1e-4, minimum=0.0)
    betas = optimizer.get("betas", [0.9, 0.999])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2 or not all(isinstance(b, (int, float)) for b in betas):
        raise RunnerError(f"{path}: key 'optimizer.betas' must be a list of two numbers, got {betas!r}")
    r.number("optimizer.eps", 1e-8, minimum=0.0)
    r.number("optimizer.weight_decay", 0.0, minimum=0.0)
    r.integer("runner.warmup_steps", 0, minimum=0)
    precision = r.get("runner.precision", None)
    if precision is None:
        precision = "16-mixed" if r.boolean("runner.fp16", False) else "32-true"
    devices = r.get("runner.devices", 1)
    if devices != "auto" and (isinstance(devices, bool) or not isinstance(devices, int) or devices < 1):
        raise RunnerError(f"{path}: key 'runner.devices' must be a positive integer or 'auto', got {devices!r}")
    train_sets = r.paths("datarc.sets", required=True)
    for item in train_sets:
        if not Path(item).is_file():
            raise RunnerError(f"{path}: 'datarc.sets' lists {item}, which does not exist "
                              f"(relative paths are read from {Path.cwd()}); run preprocess.py first")
    valid_sets = r.paths("datarc.valid_sets")
    for item in valid_sets:
        if not Path(item).is_file():
            raise RunnerError(f"{path}: 'datarc.valid_sets' lists {item}, which does not exist")
    return RunnerSettings(
        n_epochs=n_epochs,
        total_steps=total_steps,
        gradient_clipping=r.number("runner.gradient_clipping", 10.0, minimum=0.0),
        accumulate=r.integer("runner.gradient_accumulate_steps", 1, minimum=1),
        log_step=r.integer("runner.log_step", 100, minimum=1),
        save_step=r.integer("runner.save_step", None, minimum=1),
        save_every_x_epochs=r.integer("runner.save_every_x_epochs", None, minimum=1),
        valid_step=r.integer("runner.valid_step", None, minimum=1),
        precision=str(precision),
        accelerator=str(r.get("runner.accelerator", "auto")),
        devices=devices,
        num_nodes=r.integer("runner.num_nodes", 1, minimum=1),
        strategy=str(r.get("runner.strategy", "auto")),
        progress_bar=r.boolean("runner.progress_bar", True),
        train_sets=train_sets,
        valid_sets=valid_sets,
        batch_size=r.integer("datarc.train_batch_size", 4, minimum=1),
        frames_per_batch=r.integer("datarc.frames_per_batch", None, minimum=1),
        max_timestep=r.integer("datarc.max_timestep", 0),
        num_workers=r.integer("datarc.num_workers", 0, minimum=0),
        sequence_length=r.integer("datarc.sequence_length", None, minimum=1),
    )


def sequence_length(model_cfg: Mapping[str, Any], settings: RunnerSettings, path: str | Path) -> Optional[int]:
    """Crop length in model frames: ``task.sequence_length`` (compression repo) or ``datarc.sequence_length`` (MelHuBERT repo)."""
    task = model_cfg.get("task") or {}
    if not isinstance(task, Mapping):
        raise RunnerError(f"{path}: section 'task' must be a mapping")
    value = task.get("sequence_length", settings.sequence_length)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RunnerError(f"{path}: key 'task.sequence_length' must be a positive integer, got {value!r}")
    return value


def mel_datamodule(model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any]) -> L.LightningDataModule:
    """The default data: ``datarc`` manifests at the run's frame period."""
    from melhubert.data import MelDataModule

    runner = runner_cfg["runner"]
    settings = check_runner_config(runner_cfg, runner.get("runner_config_path", "runner config"))
    return MelDataModule(
        settings.train_sets, settings.valid_sets or None,
        frame_period_ms=int(runner["frame_period_ms"]),
        batch_size=settings.batch_size,
        frames_per_batch=settings.frames_per_batch,
        sequence_length=sequence_length(model_cfg, settings, runner.get("model_config_path", "model config")),
        max_timestep=settings.max_timestep,
        num_workers=settings.num_workers,
        seed=int(runner["seed"]),
        pin_memory=torch.cuda.is_available(),
    )


# --------------------------------------------------------------------------------------------
# Initial weights
# --------------------------------------------------------------------------------------------


@dataclass
class InitialModel:
    """What ``-i`` (or the resumed checkpoint) holds: the family, the model (eval mode), the raw dict."""

    path: Path
    family: str  # "melhubert" or "wav2vec2"
    model: nn.Module
    checkpoint: dict[str, Any]


def load_initial_model(path: str | Path) -> InitialModel:
    """Load a MelHuBERT checkpoint or a wav2vec2-family model file, detected by its keys."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    if is_melhubert_checkpoint(checkpoint):
        return InitialModel(path, "melhubert", model_from_checkpoint(checkpoint, str(path)), checkpoint)
    # A wav2vec2.checkpoint file keeps {"state_dict", "config"} at the top; a train.py checkpoint of a
    # waveform model nests them under "wav2vec2", because Lightning owns the top-level "state_dict".
    nested = checkpoint.get(WAV2VEC2_KEY)
    files = nested if isinstance(nested, Mapping) else checkpoint
    if "state_dict" in files and "config" in files:
        from compression.mode_common import load_waveform_files

        model = load_waveform_files(files, source=str(path))  # re-applies a low-rank structure first
        return InitialModel(path, "wav2vec2", model, checkpoint)
    raise CheckpointError(f"{path}: neither a MelHuBERT checkpoint ('model' + 'Upstream_Config') nor a wav2vec2-family "
                          f"model file ('state_dict' + 'config', or both under '{WAV2VEC2_KEY}'); found keys {sorted(checkpoint)}")


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------


class SuiteCheckpoints(L.Callback):
    """Step / epoch / last checkpoints in ``exp_dir``, each carrying the MelHuBERT keys.

    The MelHuBERT keys reuse the Lightning checkpoint's own tensors and optimizer state, so
    ``torch.save`` writes them once.
    """

    def __init__(self, exp_dir: Path, export: Callable[[Any], dict[str, Any]], runner_record: Mapping[str, Any],
                 save_step: Optional[int], save_every_x_epochs: Optional[int]) -> None:
        self.exp_dir = exp_dir
        self.export = export
        self.runner_record = plain(dict(runner_record))
        self.save_step = save_step
        self.save_every_x_epochs = save_every_x_epochs
        self._last_saved_step: Optional[int] = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        exported = self.export(pl_module)
        clashes = sorted(LIGHTNING_KEYS & set(exported))
        if clashes:
            raise RuntimeError(f"export() returned {clashes}, which Lightning needs to resume; nest a waveform model's "
                               f"files as {{'{WAV2VEC2_KEY}': {{'state_dict', 'config'}}}}")
        checkpoint.update(exported)
        optimizer_states = checkpoint.get("optimizer_states") or [{}]
        checkpoint["Optimizer"] = optimizer_states[0]
        checkpoint["Step"] = int(trainer.global_step)
        checkpoint["Runner"] = self.runner_record

    def _save(self, trainer: L.Trainer, name: str) -> None:
        path = self.exp_dir / name
        trainer.save_checkpoint(path, weights_only=False)  # full state: this file also resumes the run
        if trainer.is_global_zero and name != LAST_CHECKPOINT:
            # A copy, not a link (later saves rewrite files), written atomically: never half a file.
            atomic_copy(path, self.exp_dir / LAST_CHECKPOINT)
        self._last_saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        # With gradient accumulation several micro-batches end at the same step: save once.
        if self.save_step and step > 0 and step % self.save_step == 0 and step != self._last_saved_step:
            self._save(trainer, f"checkpoint-step-{step}.ckpt")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if self.save_every_x_epochs and epoch % self.save_every_x_epochs == 0:
            self._save(trainer, f"checkpoint-epoch-{epoch}.ckpt")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._last_saved_step != trainer.global_step or not (self.exp_dir / LAST_CHECKPOINT).is_file():
            self._save(trainer, LAST_CHECKPOINT)


def build_trainer(settings: RunnerSettings, exp_dir: Path, callbacks: Sequence[L.Callback],
                  resumed_step: Optional[int] = None, max_nonfinite_steps: int = 20) -> L.Trainer:
    """Lightning Trainer of a run: loggers, progress bar, accumulation, precision, devices.

    TensorBoard adds event files to ``tb_logs``; CSV metrics go to ``csv_logs/metrics.csv``; a
    resume keeps its rows before ``resumed_step`` and appends. Checkpoints are written atomically
    and never with NaN weights; non-finite steps are skipped; SIGTERM / SIGUSR1 save ``last-step.ckpt``.
    """
    loggers = [
        TensorBoardLogger(str(exp_dir), name="tb_logs", version=""),
        HistoryCSVLogger(str(exp_dir), name="csv_logs", version="", resume_step=resumed_step),
    ]
    callbacks = [*callbacks, NonFiniteGuard(max_nonfinite_steps), SaveOnSignal(exp_dir / LAST_CHECKPOINT)]
    limits: dict[str, Any] = (
        {"max_epochs": settings.n_epochs, "max_steps": -1} if settings.n_epochs > 0
        else {"max_epochs": -1, "max_steps": settings.total_steps}
    )
    validation: dict[str, Any] = {"limit_val_batches": 0}
    if settings.valid_sets:
        validation = ({"val_check_interval": settings.valid_step, "check_val_every_n_epoch": None}
                      if settings.valid_step else {"check_val_every_n_epoch": 1})
    return L.Trainer(
        default_root_dir=str(exp_dir),
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        precision=settings.precision,
        accumulate_grad_batches=settings.accumulate,
        gradient_clip_val=None,  # the module clips (with NaN-skip) in configure_gradient_clipping
        log_every_n_steps=settings.log_step,
        callbacks=[*callbacks, LearningRateMonitor(logging_interval="step")],
        logger=loggers,
        enable_checkpointing=False,  # SuiteCheckpoints writes the checkpoints
        use_distributed_sampler=False,  # the batch samplers shard by rank themselves
        enable_progress_bar=settings.progress_bar,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],  # atomic, NaN-checked writes; weights_only=True reads (resume too)
        **limits,
        **validation,
    )


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
    return parser


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    L.seed_everything(seed, workers=True, verbose=False)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _resolve_resume(args: argparse.Namespace) -> Optional[Path]:
    resolved = resolve_resume_path(args.resume, args.expdir, LAST_CHECKPOINT)
    return None if resolved is None else resolved[0]


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
    resume = _resolve_resume(args)
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
    settings = check_runner_config(runner_cfg, runner_path)
    if args.device is not None:
        settings = _with_accelerator(settings, args.device)
    sequence_length(model_cfg, settings, model_path)  # checked before any work

    exp_dir: Path = args.expdir
    exp_dir.mkdir(parents=True, exist_ok=True)
    _copy_config(model_path, exp_dir / MODEL_CONFIG_COPY)
    _copy_config(runner_path, exp_dir / RUNNER_CONFIG_COPY)
    seed_everything(args.seed)

    source = resume if resume is not None else args.initial_weight
    initial = load_initial_model(source) if source is not None else None
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
    resumed_step = int(initial.checkpoint.get("global_step", 0)) if resume is not None and initial is not None else None
    trainer = build_trainer(settings, exp_dir, [checkpoints], resumed_step, args.max_nonfinite_steps)
    saver = next(c for c in trainer.callbacks if isinstance(c, SaveOnSignal))
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume is not None else None)
    except SIGTERMException:
        saver.received = saver.received or 15
    status = exit_status(saver)
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


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point: errors in the input become one ``train.py: error: ...`` line and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(argv)
    except (RunnerError, CheckpointError, MelDataError, FileNotFoundError, NotImplementedError, RunLockError,
            ResumeError, NonFiniteError, NonFiniteTrainingError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
