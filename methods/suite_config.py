"""The runner YAML of ``train.py`` (``runner``, ``optimizer``, ``datarc`` sections) checked once,
and the Mel data it describes; shared by the command line and the suite's methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import lightning as L
import torch
import yaml

from lightning_modules.config import ConfigError, DottedConfig, reject_unknown_keys

# A command line or config problem; the message names the file / key / option. One class with the
# modes' YAML errors, so callers catch every configuration problem the same way.
RunnerError = ConfigError


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


# Every key the runner yaml's sections may hold (read here, by the modules or by the runner).
RUNNER_KEYS = {
    "runner": ("n_epochs", "total_steps", "gradient_clipping", "gradient_accumulate_steps", "log_step", "save_step",
               "save_every_x_epochs", "valid_step", "precision", "fp16", "accelerator", "devices", "num_nodes",
               "strategy", "progress_bar", "warmup_steps"),
    "optimizer": ("lr", "betas", "eps", "weight_decay"),
    "datarc": ("sets", "valid_sets", "train_batch_size", "frames_per_batch", "max_timestep", "num_workers",
               "sequence_length", "format", "seconds_per_batch", "max_sample_size", "min_sample_size", "crop_mode"),
}


def check_runner_keys(data: Mapping[str, Any], path: str | Path) -> None:
    """Reject a misspelt key of the ``runner`` / ``optimizer`` / ``datarc`` sections of a runner
    yaml as written by the user, naming the nearest valid key (a typo would otherwise be a silent
    default)."""
    for section, known in RUNNER_KEYS.items():
        values = data.get(section)
        if isinstance(values, Mapping):
            reject_unknown_keys(values, known, str(path), section)


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
    from speech_data.mel_data import MelDataModule

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
