"""What the compression modes of ``train.py`` share: config reading, both model families,
data, the retraining objective, export, and the scheduled-pruning loop.

Families
    ``-i`` is a MelHuBERT checkpoint (``wav2vec2.melhubert.MelHuBERTModel``, log-Mel input) or a
    wav2vec2-family model file (``wav2vec2.model.Wav2Vec2Model``: HuBERT / wav2vec 2.0 /
    WavLM, waveform input). Every operation works on both because both hold the same
    ``wav2vec2.components.Transformer``.

Retraining objective (what "retraining" means after a compression step)
    * MelHuBERT: its own masked-prediction cross-entropy on the K-means labels of the
      manifest (continued pre-training, as the reference does), masking / dropout / loss
      weights from the model yaml's ``melhubert:`` section.
    * wav2vec2 family: the K-means targets of its pre-training are not part of a ``.pth``
      model file, so it is retrained by **layer-to-layer distillation from a frozen copy of the
      uncompressed ``-i`` model**: L1 + cosine (``lightning_modules.distill_loss``) between
      every transformer layer output of the compressed model and the same layer of the copy,
      over unpadded frames, no masking. No labels are needed; data are waveform file lists
      (``prepare_data.py`` ``.tsv``) through ``speech_data.SpeechDataModule``. Weights from the
      model yaml's ``waveform:`` section (``l1_weight``, ``cos_weight``, ``cos_type``).
    The copy lives in the LightningModule as ``teacher`` (eval mode, ``requires_grad`` off,
    outside the optimizer, left out of checkpoints via ``frozen_prefixes``). A resumed run
    rebuilds it from the ``-i`` file recorded in the checkpoint's ``Runner`` record (or the
    ``-i`` given with ``--resume``).

Data (``build_datamodule``)
    ``datarc.sets`` of ``.csv`` manifests (``preprocess.py``) -> ``speech_data.mel_data.MelDataModule``
    (the runner's default); one ``.tsv`` file list (``prepare_data.py``) ->
    ``speech_data.SpeechDataModule`` with ``datarc.seconds_per_batch``,
    ``datarc.max_sample_size``, ``datarc.min_sample_size``, ``datarc.crop_mode``.
    ``datarc.format: mel | audio`` overrides the guess from the file suffix.

Export (``export_model``)
    MelHuBERT: ``{"model", "Upstream_Config"}`` with weight-pruning masks folded into plain
    weights and the current structure (heads / FFN per layer / ``low_rank``) in the config.
    wav2vec2 family: ``{"wav2vec2": {"state_dict", "config"[, "low_rank"]}}``; ``low_rank`` is
    the ``{module path: rank}`` dict of factorised layers, re-applied by
    ``wav2vec2.checkpoint.wav2vec2_from_files`` before the strict load.

Scheduled pruning (``ScheduledPruningModule``)
    After every optimizer update the schedule sees the update's loss (mean over accumulated
    micro-batches); when it asks for a prune, the module first writes
    ``EXP_DIR/before-prune-step-{S}-{what}.ckpt`` (a full ``train.py`` checkpoint: valid ``-i``
    and ``--resume`` source), then prunes, and for structural edits rebuilds the optimizer
    (fresh Adam state, as the reference) with the LR schedule continued at the current step.
    The prune of update ``S`` runs in the module's ``on_train_batch_end``, i.e. *after* the
    runner's step checkpoint of update ``S``; such a checkpoint therefore records the update
    as ``pending_update`` (step + loss) and a resumed run applies it before its first batch,
    so a resumed run equals the uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch import Tensor, nn

from compression.config import ConfigError, Section
from lightning_modules.distill_loss import distill_loss
from lightning_modules.melhubert_pretrain import (
    MelHuBERTPretrainModule,
    check_input_dim,
    model_section,
)
from wav2vec2.checkpoint import WAV2VEC2_KEY, open_model_file
from wav2vec2.melhubert_checkpoint import upstream_config
from wav2vec2.state_dicts import folded_state_dict, plain
from wav2vec2.melhubert import MelHuBERTModel, masked_prediction_loss
from wav2vec2.components import valid_mask
from wav2vec2.model import Wav2Vec2Model

from wav2vec2.low_rank import low_rank_structure
from .schedule import FixedSchedule, WeightPruningSchedule, structured_prune_steps

logger = logging.getLogger(__name__)

MEL, AUDIO = "mel", "audio"
MELHUBERT, WAVEFORM = "melhubert", "wav2vec2"


# --------------------------------------------------------------------------------------------
# Config reading with errors that name the file and the key
# --------------------------------------------------------------------------------------------


def runner_path(runner_cfg: Mapping[str, Any]) -> str:
    return str((runner_cfg.get("runner") or {}).get("runner_config_path", "runner config"))


def model_path(runner_cfg: Mapping[str, Any]) -> str:
    return str((runner_cfg.get("runner") or {}).get("model_config_path", "model config"))


def total_updates(runner_cfg: Mapping[str, Any], mode: str) -> int:
    """``runner.total_steps`` of a mode whose schedule counts updates (``n_epochs`` must be off)."""
    runner = Section(runner_cfg, "runner", runner_path(runner_cfg))
    if (runner.integer("n_epochs", -1) or -1) > 0:
        raise runner.fail("n_epochs", f"must be -1 for mode '{mode}': its prune schedule counts updates, set runner.total_steps")
    total = runner.integer("total_steps", -1)
    if total is None or total < 1:
        raise runner.fail("total_steps", f"must be a positive number of updates for mode '{mode}'")
    return total


# --------------------------------------------------------------------------------------------
# Families and data
# --------------------------------------------------------------------------------------------


def family_of(model: nn.Module) -> str:
    if isinstance(model, MelHuBERTModel):
        return MELHUBERT
    if isinstance(model, Wav2Vec2Model):
        return WAVEFORM
    raise TypeError(f"expected a MelHuBERT or wav2vec2-family model, got {type(model).__name__}")


def data_format(runner_cfg: Mapping[str, Any]) -> str:
    """``mel`` (``.csv`` manifests) or ``audio`` (one ``.tsv`` file list), from ``datarc``."""
    datarc = Section(runner_cfg, "datarc", runner_path(runner_cfg))
    if datarc.has("format"):
        return datarc.choice("format", (MEL, AUDIO))
    sets = datarc.get("sets", required=True)
    sets = [sets] if isinstance(sets, str) else list(sets)
    suffixes = {Path(str(s)).suffix for s in sets}
    if suffixes == {".csv"}:
        return MEL
    if suffixes == {".tsv"}:
        return AUDIO
    raise datarc.fail("sets", f"must list .csv manifests (preprocess.py, MelHuBERT) or one .tsv file list "
                              f"(prepare_data.py, waveform models), got {sets!r}; or set datarc.format: mel | audio")


def check_data_family(family: str, runner_cfg: Mapping[str, Any], mode: str) -> None:
    """A MelHuBERT -i trains on Mel manifests, a waveform -i on audio file lists."""
    fmt = data_format(runner_cfg)
    wanted = MEL if family == MELHUBERT else AUDIO
    if fmt != wanted:
        what = ("a MelHuBERT checkpoint, which trains on log-Mel manifests (.csv from preprocess.py)" if family == MELHUBERT
                else "a wav2vec2-family model, which trains on waveforms (one .tsv file list from prepare_data.py)")
        raise ConfigError(f"{runner_path(runner_cfg)}: mode '{mode}': -i is {what}, but 'datarc.sets' holds {fmt} data")


def build_datamodule(model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any]) -> Any:
    """Mel manifests -> the runner's ``MelDataModule``; a ``.tsv`` file list -> ``SpeechDataModule``."""
    from compression.runner import mel_datamodule

    if data_format(runner_cfg) == MEL:
        return mel_datamodule(model_cfg, runner_cfg)
    from speech_data.datamodule import SpeechDataModule

    path = runner_path(runner_cfg)
    datarc = Section(runner_cfg, "datarc", path)
    sets = datarc.get("sets", required=True)
    sets = [sets] if isinstance(sets, str) else list(sets)
    if len(sets) != 1:
        raise datarc.fail("sets", f"must name exactly one .tsv file list for waveform training, got {sets!r}")
    valid = datarc.get("valid_sets") or []
    valid = [valid] if isinstance(valid, str) else list(valid)
    if len(valid) > 1:
        raise datarc.fail("valid_sets", f"must name at most one .tsv file list, got {valid!r}")
    max_size = datarc.integer("max_sample_size", 250_000, minimum=1)
    return SpeechDataModule(
        sets[0], valid[0] if valid else None,
        seconds_per_batch=datarc.number("seconds_per_batch", 160.0, minimum=1e-3),
        max_sample_size=max_size,
        min_sample_size=datarc.integer("min_sample_size", 32_000, minimum=0),
        crop_mode=datarc.choice("crop_mode", ("max", "shortest"), "max"),  # type: ignore[arg-type]
        num_workers=datarc.integer("num_workers", 0, minimum=0),
        seed=int(runner_cfg["runner"].get("seed", 0)),
        pin_memory=torch.cuda.is_available(),
    )


def retrain_copy(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any]) -> nn.Module:
    """The ``-i`` model ready for retraining (train mode).

    MelHuBERT: rebuilt with the yaml's training settings (dropout, masking, loss weights; the
    architecture stays the checkpoint's) and the ``-f`` input width checked. wav2vec2 family:
    the model as loaded (its own dropout settings).
    """
    if model is None:
        raise ConfigError(f"mode '{mode}' needs -i CKPT")
    family = family_of(model)
    check_data_family(family, runner_cfg, mode)
    if family == WAVEFORM:
        return model.train()
    source = model_path(runner_cfg)
    section = model_section(model_cfg, source)
    settings = {k: v for k, v in section.items() if k != "initial_from_teacher"}
    fresh = MelHuBERTModel(model.config.with_training_settings(settings))
    fresh.load_state_dict(model.state_dict())
    check_input_dim(fresh.config, int(runner_cfg["runner"].get("frame_period_ms", 20)), source)
    return fresh.train()


def is_resuming(runner_cfg: Mapping[str, Any]) -> bool:
    return (runner_cfg.get("runner") or {}).get("resume_from") is not None


def original_initial_weight(runner_cfg: Mapping[str, Any], init_checkpoint: Optional[Mapping[str, Any]]) -> Optional[str]:
    """The ``-i`` of this run: given now, or (on ``--resume``) recorded in the checkpoint's ``Runner``."""
    given = (runner_cfg.get("runner") or {}).get("initial_weight")
    if given:
        return str(given)
    record = (init_checkpoint or {}).get("Runner") or {}
    recorded = (record.get("runner") or {}).get("initial_weight") if isinstance(record, Mapping) else None
    return str(recorded) if recorded else None


def frozen_teacher_from_initial(mode: str, runner_cfg: Mapping[str, Any], init_checkpoint: Optional[Mapping[str, Any]]) -> nn.Module:
    """On ``--resume``: the original ``-i`` model (the resumed checkpoint holds the compressed one)."""
    path = original_initial_weight(runner_cfg, init_checkpoint)
    if path is None:
        raise ConfigError(f"mode '{mode}': resuming needs the original -i model as teacher, but the checkpoint records "
                          "none; pass -i PATH together with --resume")
    if not Path(path).is_file():
        raise FileNotFoundError(f"mode '{mode}': the teacher of this run, {path} (its -i), is gone; pass -i PATH with --resume")
    return open_model_file(path).model


def freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Export and reload
# --------------------------------------------------------------------------------------------


def export_model(model: nn.Module, task: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Checkpoint keys of a compressed model of either family (see the module docstring)."""
    state = folded_state_dict(model)
    if family_of(model) == MELHUBERT:
        return {"model": state, "Upstream_Config": upstream_config(model, task)}  # type: ignore[arg-type]
    files: dict[str, Any] = {"state_dict": state, "config": plain(model.config)}
    ranks = low_rank_structure(model)
    if ranks:
        files["low_rank"] = dict(ranks)
    return {WAV2VEC2_KEY: files}


# --------------------------------------------------------------------------------------------
# Retraining objective of the waveform family
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaveformLoss:
    """Weights of the layer-to-layer objective (model yaml ``waveform:`` section)."""

    l1_weight: float = 1.0
    cos_weight: float = 1.0
    cos_type: str = "raw"

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], path: str) -> "WaveformLoss":
        section = Section(model_cfg, "waveform", path, required=False)
        return cls(
            l1_weight=float(section.number("l1_weight", 1.0, minimum=0.0)),  # type: ignore[arg-type]
            cos_weight=float(section.number("cos_weight", 1.0, minimum=0.0)),  # type: ignore[arg-type]
            cos_type=section.choice("cos_type", ("raw", "log_sig"), "raw"),
        )


def waveform_layer_loss(student: Wav2Vec2Model, teacher: Wav2Vec2Model, batch: Any, weights: WaveformLoss,
                        pairs: Optional[Sequence[tuple[int, int]]] = None,
                        heads: Optional[nn.ModuleList] = None) -> tuple[Tensor, dict[str, Tensor | float]]:
    """L1 + cos between student and teacher layer outputs over unpadded frames.

    ``batch``: ``(waveforms (B, L), lengths (B,), ...)``. ``pairs``: ``(student layer, teacher
    layer)`` indices into ``[h0, ..., hN]`` (default: layer i to layer i for i = 1..N, same
    depth); ``heads``: one map per pair applied to the student state (default: identity).
    """
    waveforms, lengths = batch[0], batch[1]
    pairs = list(pairs) if pairs is not None else [(i, i) for i in range(1, student.num_layers + 1)]
    with torch.no_grad():
        teacher_states, _ = teacher.extract_features(waveforms, lengths, num_layers=max(t for _, t in pairs))
    student_states, frame_lengths = student.extract_features(waveforms, lengths, num_layers=max(s for s, _ in pairs))
    T = student_states[0].shape[1]
    valid = valid_mask(frame_lengths, T) if frame_lengths is not None else None
    predicted = [student_states[s] if heads is None else heads[k](student_states[s]) for k, (s, _) in enumerate(pairs)]
    terms = distill_loss(predicted, [teacher_states[t] for _, t in pairs], valid,
                         weights.l1_weight, 0.0, weights.cos_weight, weights.cos_type)  # type: ignore[arg-type]
    return terms.total, {"distill_l1": terms.l1.detach(), "distill_cos": terms.cos.detach()}


# --------------------------------------------------------------------------------------------
# The LightningModule of every mode
# --------------------------------------------------------------------------------------------


class ModeModule(MelHuBERTPretrainModule):
    """Retraining of a compressed model of either family on the shared loop.

    Inherits Adam(W) with the runner's kwargs, the constant LR after warm-up, clipping with
    NaN-skip, skipped-update counting and ``--init_optimizer_from_initial_weight`` from
    ``MelHuBERTPretrainModule``; adds the waveform family's objective and export.

    Args:
        model: the model being compressed / retrained (train mode).
        family: ``"melhubert"`` or ``"wav2vec2"``.
        teacher: the frozen reference of the waveform objective (None for MelHuBERT retraining).
        waveform_loss: its weights.
        **kwargs: ``MelHuBERTPretrainModule`` arguments.
    """

    frozen_prefixes = ("teacher.",)
    needs_waveform_teacher = True  # False where the subclass always passes its own teacher (distillation)

    def __init__(self, model: nn.Module, *, family: str, teacher: Optional[nn.Module] = None,
                 waveform_loss: Optional[WaveformLoss] = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)  # type: ignore[arg-type]
        self.family = family
        if family == WAVEFORM and teacher is None and type(self).needs_waveform_teacher:
            raise ValueError("the waveform objective needs a teacher")
        self.teacher = freeze(teacher) if teacher is not None else None
        self.waveform_loss = waveform_loss or WaveformLoss()

    def train(self, mode: bool = True) -> "ModeModule":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # always: dropout off, deterministic targets (the reference's bug 8)
        return self

    # ----- objective -----------------------------------------------------------------------
    def objective(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The retraining loss of ``model`` (``self.model`` or, while scoring heads, the same)."""
        if self.family == MELHUBERT:
            outputs = model(batch.features, batch.pad_mask, batch.labels, mask=True)
            loss, logs = masked_prediction_loss(outputs, model.config)
            return loss, dict(logs)
        assert self.teacher is not None
        return waveform_layer_loss(model, self.teacher, batch, self.waveform_loss)  # type: ignore[arg-type]

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        if self.family == MELHUBERT:
            return super().training_loss(batch)
        return self.objective(self.model, batch)

    def validation_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        if self.family == MELHUBERT:
            return super().validation_loss(batch)
        return self.objective(self.model, batch)

    def audio_seconds(self, batch: Any) -> float:
        if self.family == MELHUBERT:
            return super().audio_seconds(batch)
        return float(batch[1].sum()) / 16_000

    # ----- export ----------------------------------------------------------------------------
    def export_checkpoint(self) -> dict[str, Any]:
        return export_model(self.model, self.task)

    @classmethod
    def from_mode_configs(cls, mode: str, model: nn.Module, model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                          init_checkpoint: Optional[Mapping[str, Any]], teacher: Optional[nn.Module] = None,
                          **overrides: Any) -> "ModeModule":
        """Build from the two yamls (``MelHuBERTPretrainModule.from_configs``) plus the family."""
        family = family_of(model)
        if family == WAVEFORM and teacher is None and cls.needs_waveform_teacher:
            # The frozen reference is the model as it is before this run compresses it.
            teacher = frozen_teacher_from_initial(mode, runner_cfg, init_checkpoint) if is_resuming(runner_cfg) else copy.deepcopy(model)
        return cls.from_configs(  # type: ignore[return-value]
            model, model_cfg, runner_cfg, init_checkpoint, family=family, teacher=teacher,
            waveform_loss=WaveformLoss.from_config(model_cfg, model_path(runner_cfg)), **overrides,
        )


def rebuild_optimizer(module: ModeModule) -> None:
    """Fresh optimizer (and LR scheduler) over the module's current parameters, mid-fit.

    Structured edits replace ``nn.Parameter`` objects, so the old optimizer would update
    tensors that are no longer in the model. The new LambdaLR is moved to the current step so
    the LR schedule continues instead of restarting its warm-up.
    """
    trainer = module.trainer
    trainer.strategy.setup_optimizers(trainer)
    step = int(trainer.global_step)
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.last_epoch = step
            for group, base, fn in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * fn(step)
            scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]  # noqa: SLF001


class ScheduledPruningModule(ModeModule):
    """``ModeModule`` + prune steps driven by a schedule (see the module docstring).

    ``schedule`` is a ``FixedSchedule`` or ``WeightPruningSchedule`` (both expose ``step``,
    ``total_steps``, ``state_dict()``, ``load_state_dict()``). Subclasses set ``mode_name`` and
    ``structural`` and implement ``schedule_update``, ``prune(decision, step) -> record`` and
    ``before_prune_name(step, decision)``.
    """

    mode_name = "pruning"
    structural = True  # new Parameters after a prune: rebuild the optimizer

    def __init__(self, model: nn.Module, *, schedule: FixedSchedule | WeightPruningSchedule, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.schedule = schedule
        self.history: list[dict[str, Any]] = []  # one plain record per prune
        self._micro_losses: list[float] = []
        self._update_loss: float = float("nan")
        self._last_finite_loss: float = float("nan")
        self._resume_pending: Optional[dict[str, Any]] = None
        self.exp_dir: Optional[Path] = None

    @property
    def schedule_step(self) -> int:
        return self.schedule.step

    @property
    def schedule_total_steps(self) -> int:
        return self.schedule.total_steps

    def schedule_state(self) -> dict[str, Any]:
        return self.schedule.state_dict()

    def load_schedule_state(self, state: Mapping[str, Any]) -> None:
        self.schedule.load_state_dict(dict(state))

    # ----- to implement ----------------------------------------------------------------------
    def schedule_update(self, step: int, loss: float) -> Any:
        raise NotImplementedError

    def prune(self, decision: Any, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def before_prune_name(self, step: int, decision: Any) -> str:
        raise NotImplementedError

    # ----- the loop --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        self._micro_losses.append(float(loss.detach()))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)  # runs the last micro-batch (closure) and the update
        losses, self._micro_losses = self._micro_losses, []
        loss = sum(losses) / len(losses) if losses else float("nan")
        # A NaN / inf loss (its update was skipped) must not poison the convergence EMA.
        if math.isfinite(loss):
            self._last_finite_loss = loss
        self._update_loss = loss if math.isfinite(loss) else self._last_finite_loss

    def on_train_start(self) -> None:
        trainer = self.trainer
        if self.structural and trainer.world_size > 1:
            raise RuntimeError(f"mode '{self.mode_name}' edits the architecture mid-run and needs one device "
                               "(runner.devices: 1): DDP would keep the old parameters")
        pending = 1 if self._resume_pending is not None else 0
        if self.schedule_step + pending != trainer.global_step:
            raise RuntimeError(f"the prune schedule is at update {self.schedule_step} but the trainer at {trainer.global_step}: "
                               "the checkpoint does not belong to this run")
        self._raise_max_steps()
        self.exp_dir = Path(str(trainer.default_root_dir))

    def _raise_max_steps(self) -> None:
        # The convergence gate can postpone prunes, each time adding updates to the run.
        loop = self.trainer.fit_loop.epoch_loop
        if loop.max_steps != -1 and loop.max_steps < self.schedule_total_steps:
            loop.max_steps = self.schedule_total_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)  # restores the RNG of a resumed run first
        if self._resume_pending is not None:
            pending, self._resume_pending = self._resume_pending, None
            self._process_update(int(pending["step"]), float(pending["loss"]))

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(self.trainer.global_step)
        if step > self.schedule_step:  # an update completed (once per accumulation window)
            self._process_update(step, self._update_loss)

    def _process_update(self, step: int, loss: float) -> None:
        self._update_loss = loss
        before = copy.deepcopy(self.schedule_state())
        decision = self.schedule_update(step, loss)
        if decision is not None:
            # Save with the schedule as it was before this update: the file is then exactly the
            # runner's checkpoint of step S (resumable; the prune is its pending update).
            self.load_schedule_state(before)
            self._save_before_prune(step, decision)
            replay = self.schedule_update(step, loss)
            assert replay == decision, "prune schedules must be deterministic"
            record = self.prune(decision, step)
            self.history.append(plain({"step": step, **record}))
            if self.structural:
                rebuild_optimizer(self)
            logger.info("step %d: %s", step, record)
        self._raise_max_steps()

    def _save_before_prune(self, step: int, decision: Any) -> None:
        trainer = self.trainer
        directory = self.exp_dir or Path(str(trainer.default_root_dir))
        trainer.save_checkpoint(directory / self.before_prune_name(step, decision), weights_only=False)

    # ----- checkpoints -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        pending = None
        trainer = self._trainer
        if trainer is not None and int(trainer.global_step) > self.schedule_step:
            pending = {"step": int(trainer.global_step), "loss": float(self._update_loss)}
        checkpoint["Pruning"] = {
            "mode": self.mode_name,
            "schedule": plain(self.schedule_state()),
            "history": plain(self.history),
            "pending_update": pending,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("Pruning")
        if not isinstance(state, Mapping) or state.get("mode") != self.mode_name:
            found = state.get("mode") if isinstance(state, Mapping) else None
            raise ValueError(f"--resume: the checkpoint has no '{self.mode_name}' schedule state (found {found!r}); "
                             f"resume a run of the same mode")
        self.load_schedule_state(state["schedule"])
        self.history = [dict(h) for h in state.get("history", [])]
        self._resume_pending = state.get("pending_update")
        if self._resume_pending is not None:
            self._update_loss = float(self._resume_pending["loss"])


# --------------------------------------------------------------------------------------------
# Batches for data-driven scores
# --------------------------------------------------------------------------------------------


def scoring_batches(module: ModeModule, ratio: float, epoch: int) -> Iterator[Any]:
    """``ceil(ratio · batches per epoch)`` training batches (at least 1), on the module's device.

    Drawn from a copy of the training batch sampler set to ``epoch`` (a shuffled order and
    crops of their own), so the training loader's position and resume state are untouched.
    Includes the last, possibly smaller bucket when the order puts it among the first.
    """
    loader = module.trainer.train_dataloader
    if loader is None:
        raise RuntimeError("no training dataloader to score heads on")
    sampler = copy.deepcopy(loader.batch_sampler)
    if hasattr(sampler, "epoch_source"):
        sampler.epoch_source = None
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    count = max(1, math.ceil(ratio * len(sampler)))
    for index, items in enumerate(sampler):
        if index == count:
            break
        batch = loader.collate_fn([loader.dataset[item] for item in items])
        yield move_data_to_device(batch, module.device)


# --------------------------------------------------------------------------------------------
# Fixed prune steps (head and row pruning)
# --------------------------------------------------------------------------------------------


def fixed_schedule_from_config(section: Section, total_steps: int) -> FixedSchedule:
    """``warm_up`` + ``interval`` (list of offsets or equal spacing) for ``total_steps`` prune steps.

    Reference key names: ``prune.total_steps`` is the number of prune **steps**; the update
    budget is ``runner.total_steps``. Every prune must come before the end of the run.
    """
    count = int(section.integer("total_steps", required=True, minimum=1))  # type: ignore[arg-type]
    warm_up = int(section.integer("warm_up", 0, minimum=0))  # type: ignore[arg-type]
    interval = section.int_or_list("interval")
    try:
        steps = structured_prune_steps(warm_up, interval, count)
    except ValueError as error:
        raise section.fail("interval", f"is invalid: {error}") from None
    if steps[0] < 1:
        raise section.fail("warm_up", "+ interval[0] must be at least 1 (prunes happen after an update)")
    if steps[-1] >= total_steps:
        raise section.fail("interval", f"puts the last prune at update {steps[-1]}, not before runner.total_steps={total_steps}")
    return FixedSchedule(steps, total_steps)


class FixedSchedulePruningModule(ScheduledPruningModule):
    """Prune at the fixed steps of a ``FixedSchedule`` (decision ``True``)."""

    schedule: FixedSchedule

    def schedule_update(self, step: int, loss: float) -> Optional[bool]:
        return True if self.schedule.update(step=step) else None


def attention_heads(model: nn.Module) -> list[int]:
    """Heads per layer of the model's transformer (0 where the block is gone)."""
    from .measure import find_transformer

    return [layer.attention.num_heads if layer.attention is not None else 0 for layer in find_transformer(model).layers]


def ffn_units(model: nn.Module) -> list[int]:
    """FFN units per layer of the model's transformer (0 where the block is gone)."""
    from .measure import find_transformer

    return [layer.feed_forward.interm_features if layer.feed_forward is not None else 0 for layer in find_transformer(model).layers]
