"""The one place that constructs a Lightning ``Trainer``.

Every training script (the DPHuBERT stages, the DistilHuBERT-style baseline, ``train.py``'s
modes, the demo teacher) describes its run with ``TrainerSettings`` and calls
``build_trainer``. What is common is decided here once: the run folder as
``default_root_dir``, TensorBoard events in ``tb_logs`` (when tensorboard is installed) and CSV
metrics in ``csv_logs[/VERSION]/metrics.csv`` (a resume keeps the rows before its step and
appends: ``HistoryCSVLogger``), an LR monitor when a logger is on, no sanity validation, and
``use_distributed_sampler=False`` (our batch samplers shard by rank themselves).
``progress_bar`` installs ``StepProgressBar`` (optimizer steps of the whole run with an ETA, also
through a pipe) instead of Lightning's per-epoch bar.

Reliability, the same for every run: checkpoints are written atomically and never with NaN /
inf weights, and read with ``weights_only=True`` (``AtomicCheckpointIO``); a step with a
non-finite loss or gradient is skipped and too many in a row stop the run (``NonFiniteGuard``);
SIGTERM / SIGUSR1 save and stop: ``settings.preemption_checkpoint`` installs
``slurm.PreemptionCheckpoint`` (step-boundary save agreed across ranks, SLURM requeue, exit 75;
the DPHuBERT stages), otherwise ``settings.signal_checkpoint`` installs ``SaveOnSignal``
(``train.py``); never both, so one handler owns the signals.

Gradient clipping: ``clip_norm`` hands the norm to Lightning; modules that clip themselves
(``MelHuBERTPretrainModule.configure_gradient_clipping``, which also skips non-finite updates) get
``clip_norm=None``, so a gradient is never clipped twice.
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor

from .atomic_checkpoint import AtomicCheckpointIO, resolve_resume_path
from .finite_guard import NonFiniteGuard
from .history_logger import HistoryCSVLogger
from .loggers import tensorboard_loggers
from .progress import StepProgressBar
from .slurm import cluster_trainer_kwargs
from .preemption import SaveOnSignal


def resume_point(value: Optional[str | Path], last: Path) -> Optional[tuple[Path, int]]:
    """The one resume rule, with the step resumed from: None -> start fresh; ``"last"`` -> the
    newest checkpoint of ``last``'s folder that loads, ``last`` preferred on a tie (the run's own
    latest checkpoint: ``ckpts/last.ckpt`` for the DPHuBERT stages, ``last-step.ckpt`` for
    ``train.py``); a damaged ``last`` is skipped with a warning naming it. Anything else is a
    checkpoint path that must load and be a training checkpoint. A missing file is a
    FileNotFoundError naming it; an unusable one a ``ResumeError`` (a ``CheckpointError``)."""
    if value is None:
        return None
    return resolve_resume_path(str(value), last.parent, last.name)


def resume_checkpoint(value: Optional[str | Path], last: Path) -> Optional[Path]:
    """``resume_point`` without the step."""
    point = resume_point(value, last)
    return None if point is None else point[0]


@dataclass
class TrainerSettings:
    """What differs between the training scripts' Trainers (Lightning's own argument names in brackets)."""

    exp_dir: Path  # logs and checkpoints [default_root_dir]
    max_steps: int = -1
    max_epochs: int = -1
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    accumulate: int = 1  # [accumulate_grad_batches]
    clip_norm: Optional[float] = None  # [gradient_clip_val]; None: the module clips (or nothing does)
    log_every: int = 50  # [log_every_n_steps]
    progress_bar: bool = True  # StepProgressBar (never Lightning's own bar)
    progress_description: Optional[str] = None  # the bar's label; None: the run folder's name
    loggers: Sequence[str] = ("tensorboard", "csv")
    csv_version: str = ""  # sub-folder of csv_logs
    resume_step: Optional[int] = None  # step of the checkpoint resumed: metrics.csv keeps the rows before it
    max_nonfinite_steps: int = 20  # consecutive skipped non-finite steps that stop the run (0: never)
    signal_checkpoint: Optional[Path] = None  # written on SIGTERM / SIGUSR1 before stopping; None: no handler
    lr_monitor: bool = True
    checkpointing: bool = False  # [enable_checkpointing]: True when a ModelCheckpoint callback is given
    validation: dict[str, Any] = field(default_factory=dict)  # val_check_interval / check_val_every_n_epoch / limit_val_batches
    deterministic: Optional[bool] = None
    # Where SIGUSR1 / SIGTERM save before the run exits (and SLURM requeues it); None: no handler.
    # Under srun the allocation also decides devices / nodes (see lightning_modules/slurm.py).
    preemption_checkpoint: Optional[Path] = None


# Lightning warnings that every run would repeat and that say nothing about this toolkit's runs:
# run.sh starts srun itself where SLURM is wanted, so a local run on a machine with SLURM installed
# is deliberate; the frozen teacher is in eval mode by design.
_EXPECTED_WARNINGS = (
    r"The `srun` command is available on your system but is not used",
    r"Found \d+ module\(s\) in eval mode at the start of training",
)


def build_trainer(settings: TrainerSettings, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """The ``L.Trainer`` of ``settings`` with ``callbacks`` (and an LR monitor when logging)."""
    for message in _EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    exp_dir = str(settings.exp_dir)
    loggers: list[Any] = []
    if "tensorboard" in settings.loggers:
        loggers += tensorboard_loggers(exp_dir)
    if "csv" in settings.loggers:
        loggers.append(HistoryCSVLogger(exp_dir, name="csv_logs", version=settings.csv_version,
                                        resume_step=settings.resume_step))
    unknown = sorted(set(settings.loggers) - {"tensorboard", "csv"})
    if unknown:
        raise ValueError(f"unknown logger(s) {unknown}; choose from tensorboard, csv")
    all_callbacks = list(callbacks)
    if settings.progress_bar:
        all_callbacks.append(StepProgressBar(settings.progress_description or Path(exp_dir).name))
    launch: dict[str, Any] = {"devices": settings.devices, "num_nodes": settings.num_nodes, "strategy": settings.strategy}
    if settings.preemption_checkpoint is not None:
        launch, cluster_callbacks = cluster_trainer_kwargs(settings.devices, settings.num_nodes, settings.strategy,
                                                           Path(settings.preemption_checkpoint))
        all_callbacks += cluster_callbacks
    cluster_plugins = launch.pop("plugins", [])
    if settings.lr_monitor and loggers:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    all_callbacks.append(NonFiniteGuard(settings.max_nonfinite_steps))
    if settings.signal_checkpoint is not None and settings.preemption_checkpoint is None:
        all_callbacks.append(SaveOnSignal(settings.signal_checkpoint))
    return L.Trainer(
        default_root_dir=exp_dir,
        accelerator=settings.accelerator,
        **launch,
        precision=settings.precision,
        max_steps=settings.max_steps,
        max_epochs=settings.max_epochs,
        accumulate_grad_batches=settings.accumulate,
        gradient_clip_val=settings.clip_norm,
        log_every_n_steps=settings.log_every,
        callbacks=all_callbacks,
        logger=loggers if len(loggers) != 1 else loggers[0],
        enable_checkpointing=settings.checkpointing,
        use_distributed_sampler=False,
        enable_progress_bar=False,  # StepProgressBar above when settings.progress_bar
        num_sanity_val_steps=0,
        deterministic=settings.deterministic,
        # atomic, NaN-checked writes; weights_only=True reads (resume too); the SLURM environment under srun
        plugins=[AtomicCheckpointIO(), *cluster_plugins],
        **settings.validation,
    )
