"""What the compression modes of ``train.py`` share: config reading, both model families,
data, the retraining objective, export, and the scheduled-pruning loop.

Families
    ``-i`` is a MelHuBERT checkpoint (``wav2vec2.melhubert.MelHuBERTModel``, log-Mel input) or a
    wav2vec2-family model file (``wav2vec2.model.Wav2Vec2Model``: HuBERT / wav2vec 2.0 /
    WavLM, waveform input). Every operation works on both because both hold the same
    ``wav2vec2.components.Transformer``.

Retraining objective (what "retraining" means after a compression step)
    * MelHuBERT: its own masked-prediction cross-entropy on the K-means labels of the
      manifest (continued pre-training, as the original code does), masking / dropout / loss
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

Scheduled pruning lives in ``methods.scheduled_pruning``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

from lightning_modules.config import ConfigError, Section
from lightning_modules.distill_loss import distill_loss
from methods.melhubert_pretrain import (
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
    from methods.suite_config import mel_datamodule

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


def layer_to_layer_loss(student: nn.Module, teacher: nn.Module, inputs: Tensor, lengths: Optional[Tensor],
                        weights: WaveformLoss, pairs: Sequence[tuple[int, int]], heads: Optional[nn.ModuleList] = None,
                        valid: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor | float]]:
    """L1 + cos (``lightning_modules.distill_loss``) between student and teacher layer outputs,
    for either family (both have ``extract_features(inputs, lengths, num_layers)``).

    ``pairs``: ``(student layer, teacher layer)`` indices into ``[h0, ..., hN]``; ``heads``: one
    map per pair applied to the student state (default: identity); ``valid``: ``(B, T)`` frames
    that count (default: from the student's frame lengths).
    """
    with torch.no_grad():
        teacher_states, _ = teacher.extract_features(inputs, lengths, num_layers=max(t for _, t in pairs))
    student_states, frame_lengths = student.extract_features(inputs, lengths, num_layers=max(s for s, _ in pairs))
    if valid is None:
        T = student_states[0].shape[1]
        valid = valid_mask(frame_lengths, T) if frame_lengths is not None else None
    predicted = [student_states[s] if heads is None else heads[k](student_states[s]) for k, (s, _) in enumerate(pairs)]
    terms = distill_loss(predicted, [teacher_states[t] for _, t in pairs], valid,
                         weights.l1_weight, 0.0, weights.cos_weight, weights.cos_type)  # type: ignore[arg-type]
    return terms.total, {"distill_l1": terms.l1.detach(), "distill_cos": terms.cos.detach()}


def waveform_layer_loss(student: Wav2Vec2Model, teacher: Wav2Vec2Model, batch: Any, weights: WaveformLoss,
                        pairs: Optional[Sequence[tuple[int, int]]] = None,
                        heads: Optional[nn.ModuleList] = None) -> tuple[Tensor, dict[str, Tensor | float]]:
    """``layer_to_layer_loss`` on a waveform batch ``(waveforms (B, L), lengths (B,), ...)``;
    ``pairs`` default: layer i to layer i for i = 1..N (same depth)."""
    pairs = list(pairs) if pairs is not None else [(i, i) for i in range(1, student.num_layers + 1)]
    return layer_to_layer_loss(student, teacher, batch[0], batch[1], weights, pairs, heads)


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
            self.teacher.eval()  # always: with dropout on, the targets would be noisy and differ between runs
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
