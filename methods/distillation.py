"""``train.py -m distillation``: distil the ``-i`` model (teacher) into a smaller student.

Teacher: the ``-i`` model, frozen: eval mode (no dropout, unlike the original code), no
gradients, outside the optimizer and left out of checkpoints (``frozen_prefixes``); a resumed
run reloads it from the ``-i`` path recorded in the checkpoint.

Student
    * MelHuBERT teacher: the model yaml's ``melhubert:`` section (the original code's default 6 layers,
      768 wide, 12 heads, FFN 3072, its own 512-way ``final_proj``), random init; with
      ``melhubert.initial_from_teacher: true`` it is instead the teacher's first
      ``encoder_layers`` layers **with their structure** (heads / FFN widths / low-rank
      factors, so a compressed teacher works too) plus the teacher's input projection,
      positional convolution and LayerNorm; the cluster head stays random as in the
      original code (which also leaves the input projection random, which discards what
      the copied layers were trained on; we copy it). Training settings (dropout, masking)
      from the yaml.
    * wav2vec2-family teacher: the model yaml's ``waveform_student:`` section,
      ``encoder_layers: N`` and ``initial_from_teacher`` (default true: CNN, projection,
      positional conv and the first N layers copied; false: the same architecture, random).

Loss (model yaml ``loss_param:``)
    * ``type: masked`` (default, the original 360 h config) / ``nomasked`` (the original code's latest default): with
      temperature ``T`` and weight ``alpha``,
      ``loss = (1 − alpha)·CE(student logits, labels) + alpha·KL(softmax(teacher/T) ‖ softmax(student/T))``,
      KL summed over classes and averaged over the scored frames ("batchmean"), no T² factor.
      ``masked``: the teacher draws span masks with its own mask settings; student and teacher
      both see the input with those frames replaced (each with its own mask embedding), and
      only masked, unpadded frames are scored. ``nomasked``: no masking, every unpadded frame.
      Needs cluster heads on both sides (MelHuBERT, equal ``num_cluster``).
    * ``type: layer2layer`` (DPHuBERT's objective; the only one for a wav2vec2-family teacher,
      which has no cluster head): L1 + cosine between ``heads_k(student layer s_k)`` and
      teacher layer ``t_k`` over unpadded frames, no masking. ``layers: [[s, t], ...]`` (indices
      into ``[h0, ..., hN]``; default: student layer i ↔ teacher layer ⌊i·N_t/N_s + ½⌋);
      ``heads_k`` are linear maps (identity-initialised when the widths match) trained with the
      student and kept in the Lightning state only; ``l1_weight``, ``cos_weight``, ``cos_type``.

Export: the student only (MelHuBERT ``model`` + ``Upstream_Config``, or the ``wav2vec2``
files), plus ``Distillation`` ``{"loss_param", "teacher"}``.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

from wav2vec2.measure import find_transformer, sync_structure
from methods.suite import (
    MELHUBERT,
    WAVEFORM,
    ConfigError,
    ModeModule,
    Section,
    WaveformLoss,
    build_datamodule,
    check_data_family,
    family_of,
    frozen_teacher_from_initial,
    is_resuming,
    model_path,
    original_initial_weight,
    layer_to_layer_loss,
    waveform_layer_loss,
)
from lightning_modules.distill_loss import posterior_loss
from methods.melhubert_pretrain import check_input_dim, model_section
from wav2vec2.melhubert import IGNORE_INDEX, MelHuBERTConfig, MelHuBERTModel

logger = logging.getLogger(__name__)

__all__ = ["DistillationModule", "DistillSettings", "truncated_copy", "build_module", "export", "build_datamodule"]

LOSS_TYPES = ("nomasked", "masked", "layer2layer")
_WAVEFORM_PER_LAYER_KEYS = ("encoder_use_attention", "encoder_use_feed_forward", "encoder_num_heads",
                            "encoder_ff_interm_features", "encoder_total_num_heads", "encoder_remaining_heads")


@dataclass
class DistillSettings:
    """The checked ``loss_param:`` section."""

    type: str = "masked"  # the original (360 h) config's value
    T: float = 1.0
    alpha: float = 1.0
    layers: Optional[list[tuple[int, int]]] = None
    weights: WaveformLoss = field(default_factory=WaveformLoss)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], path: str) -> "DistillSettings":
        section = Section(model_cfg, "loss_param", path)
        layers = section.get("layers")
        pairs = None
        if layers is not None:
            if not isinstance(layers, list) or not layers or not all(
                    isinstance(p, list) and len(p) == 2 and all(isinstance(i, int) and i >= 0 for i in p) for p in layers):
                raise section.fail("layers", f"must be a list of [student_layer, teacher_layer] index pairs, got {layers!r}")
            pairs = [(int(s), int(t)) for s, t in layers]
        return cls(
            type=section.choice("type", LOSS_TYPES, "masked"),
            T=float(section.number("T", 1.0, minimum=1e-6)),  # type: ignore[arg-type]
            alpha=float(section.number("alpha", 1.0, minimum=0.0, maximum=1.0)),  # type: ignore[arg-type]
            layers=pairs,
            weights=WaveformLoss(
                l1_weight=float(section.number("l1_weight", 1.0, minimum=0.0)),  # type: ignore[arg-type]
                cos_weight=float(section.number("cos_weight", 1.0, minimum=0.0)),  # type: ignore[arg-type]
                cos_type=section.choice("cos_type", ("raw", "log_sig"), "raw"),
            ),
        )

    def record(self) -> dict[str, Any]:
        return {"type": self.type, "T": self.T, "alpha": self.alpha,
                "layers": None if self.layers is None else [list(p) for p in self.layers],
                "l1_weight": self.weights.l1_weight, "cos_weight": self.weights.cos_weight, "cos_type": self.weights.cos_type}


# --------------------------------------------------------------------------------------------
# Students
# --------------------------------------------------------------------------------------------


def _layer_of(path: str) -> Optional[int]:
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", path)
    return int(match.group(1)) if match else None


def truncated_copy(model: nn.Module, num_layers: int) -> nn.Module:
    """A deep copy of ``model`` keeping its first ``num_layers`` transformer layers, config updated."""
    student = copy.deepcopy(model)
    transformer = find_transformer(student)
    if not 1 <= num_layers <= len(transformer.layers):
        raise ValueError(f"the student needs 1 to {len(transformer.layers)} layers (the teacher's depth), got {num_layers}")
    transformer.layers = nn.ModuleList(list(transformer.layers)[:num_layers])
    if isinstance(student, MelHuBERTModel):
        config = dict(student.config)
        config["encoder_layers"] = num_layers
        for key in ("encoder_attention_heads", "encoder_ffn_embed_dim"):
            if isinstance(config[key], list):
                config[key] = config[key][:num_layers]
        if config.get("low_rank"):
            config["low_rank"] = {p: r for p, r in config["low_rank"].items() if (_layer_of(p) or 0) < num_layers} or None
        student.config = MelHuBERTConfig(config)
        student.config = student.current_config()
    else:
        config = dict(student.config)
        config["encoder_num_layers"] = num_layers
        for key in _WAVEFORM_PER_LAYER_KEYS:
            if isinstance(config.get(key), list):
                config[key] = config[key][:num_layers]
        student.config = config
        sync_structure(student)
    return student


def melhubert_student(teacher: MelHuBERTModel, model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any]) -> MelHuBERTModel:
    source = model_path(runner_cfg)
    section = model_section(model_cfg, source)
    initial = section.pop("initial_from_teacher", False)
    if not isinstance(initial, bool):
        raise ConfigError(f"{source}: key 'melhubert.initial_from_teacher' must be true or false, got {initial!r}")
    if initial:
        layers = int(section.get("encoder_layers", teacher.num_layers))
        try:
            copied = truncated_copy(teacher, layers)
        except ValueError as error:
            raise ConfigError(f"{source}: key 'melhubert.encoder_layers': {error}") from None
        differences = copied.config.architecture_differences({**copied.config, **section})  # type: ignore[attr-defined]
        if differences:
            logger.warning("initial_from_teacher: the student keeps the teacher's layer structure, not %s: %s",
                           source, "; ".join(differences))
        student = MelHuBERTModel(copied.config.with_training_settings(section))  # type: ignore[attr-defined]
        student.load_state_dict(copied.state_dict())
        student.final_proj.reset_parameters()  # the original MelHuBERT code's student head starts random
    else:
        try:
            student = MelHuBERTModel(MelHuBERTConfig(section))
        except ValueError as error:
            raise ConfigError(f"{source}: melhubert section: {error}") from None
    check_input_dim(student.config, int(runner_cfg["runner"].get("frame_period_ms", 20)), source)
    if student.config.feat_emb_dim != teacher.config.feat_emb_dim:
        raise ConfigError(f"{source}: melhubert.feat_emb_dim {student.config.feat_emb_dim} differs from the teacher's "
                          f"{teacher.config.feat_emb_dim}: both read the same input")
    return student


def waveform_student(teacher: nn.Module, model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any]) -> nn.Module:
    from wav2vec2.model import wav2vec2_model

    section = Section(model_cfg, "waveform_student", model_path(runner_cfg))
    layers = int(section.integer("encoder_layers", required=True, minimum=1))  # type: ignore[arg-type]
    try:
        student = truncated_copy(teacher, layers)
    except ValueError as error:
        raise section.fail("encoder_layers", str(error)) from None
    if not section.boolean("initial_from_teacher", True):
        student = wav2vec2_model(**student.config)  # same architecture (dense), random weights
    return student


def default_pairs(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i ↔ teacher layer ⌊i·N_t/N_s + ½⌋, i = 1..N_s (identity for equal depths)."""
    return [(i, max(1, int(i * teacher_layers / student_layers + 0.5))) for i in range(1, student_layers + 1)]


def _width(model: nn.Module) -> int:
    return find_transformer(model).layer_norm.normalized_shape[0]


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


class DistillationModule(ModeModule):
    """Student (``self.model``) trained towards the frozen ``self.teacher``."""

    needs_waveform_teacher = False  # the teacher is always given

    def __init__(self, model: nn.Module, *, settings: DistillSettings, teacher_path: Optional[str] = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if self.teacher is None:
            raise ValueError("distillation needs a teacher")
        self.settings = settings
        self.teacher_path = teacher_path
        self.pairs: list[tuple[int, int]] = []
        self.heads = nn.ModuleList()
        if settings.type == "layer2layer":
            n_s, n_t = len(find_transformer(model).layers), len(find_transformer(self.teacher).layers)
            self.pairs = settings.layers or default_pairs(n_s, n_t)
            for s, t in self.pairs:
                if not (0 <= s <= n_s and 0 <= t <= n_t):
                    raise ConfigError(f"loss_param.layers: pair [{s}, {t}] is out of range (student 0..{n_s}, teacher 0..{n_t})")
            d_s, d_t = _width(model), _width(self.teacher)
            for _ in self.pairs:
                head = nn.Linear(d_s, d_t)
                if d_s == d_t:
                    with torch.no_grad():
                        head.weight.copy_(torch.eye(d_s))
                        head.bias.zero_()
                self.heads.append(head)
        elif family_of(self.teacher) != MELHUBERT or family_of(model) != MELHUBERT:
            raise ConfigError(f"loss_param.type '{settings.type}' distils cluster posteriors, which only MelHuBERT models "
                              "have (final_proj); use type: layer2layer for a wav2vec2-family teacher")
        elif model.config.num_cluster != self.teacher.config.num_cluster:  # type: ignore[union-attr]
            raise ConfigError(f"melhubert.num_cluster {model.config.num_cluster} differs from the teacher's "  # type: ignore[union-attr]
                              f"{self.teacher.config.num_cluster}: KL needs the same clusters")  # type: ignore[union-attr]

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.model, self.heads]

    # ----- losses ----------------------------------------------------------------------------
    def _posterior_loss(self, batch: Any, generator: Optional[torch.Generator]) -> tuple[Tensor, dict[str, Tensor | float]]:
        """KL to the teacher's cluster posteriors (+ CE on labels), see the module docstring."""
        teacher, student = self.teacher, self.model
        valid = batch.pad_mask.bool()
        mask = teacher.draw_mask(batch.pad_mask, generator) if self.settings.type == "masked" else None  # type: ignore[union-attr]
        with torch.no_grad():
            teacher_hidden = teacher(batch.features, batch.pad_mask, no_pred=True, teacher_mask_indices=mask)[0]  # type: ignore[misc]
        student_hidden = student(batch.features, batch.pad_mask, no_pred=True, teacher_mask_indices=mask)[0]
        scored = valid & mask if mask is not None else valid  # (B, T) frames that count
        if not bool(scored.any()):
            return student_hidden.sum() * 0.0, {}
        logits = student.final_proj(student_hidden[scored]).float()  # (M, C)
        with torch.no_grad():
            teacher_logits = teacher.final_proj(teacher_hidden[scored]).float()  # type: ignore[union-attr]
        loss, kl, ce = posterior_loss(logits, teacher_logits, batch.labels[scored], self.settings.T,
                                      self.settings.alpha, IGNORE_INDEX)
        agreement = (logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        return loss, {"kl": kl.detach(), "ce": ce.detach(), "teacher_agreement": agreement.detach(),
                      "scored_fraction": scored.sum() / valid.sum().clamp(min=1)}

    def _layer_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        if self.family == WAVEFORM:
            return waveform_layer_loss(self.model, self.teacher, batch,  # type: ignore[arg-type]
                                       self.settings.weights, self.pairs, self.heads)
        return layer_to_layer_loss(self.model, self.teacher, batch.features, batch.lengths,  # type: ignore[arg-type]
                                   self.settings.weights, self.pairs, self.heads, valid=batch.pad_mask.bool())

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        if self.settings.type == "layer2layer":
            return self._layer_loss(batch)
        return self._posterior_loss(batch, None)

    def validation_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        if self.settings.type == "layer2layer":
            return self._layer_loss(batch)
        # Fixed masks per validation batch, so evaluations compare across steps.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(batch.indices[0]))
        return self._posterior_loss(batch, generator)

    # ----- export ----------------------------------------------------------------------------
    def export_checkpoint(self) -> dict[str, Any]:
        exported = super().export_checkpoint()
        exported["Distillation"] = {"loss_param": self.settings.record(), "teacher": self.teacher_path,
                                    "pairs": [list(p) for p in self.pairs]}
        return exported


def check_teacher_section(section: Any, teacher: nn.Module, source: str) -> None:
    """The original's ``teacher:`` section built the teacher; here ``-i`` does, so the section must agree with it.

    A MelHuBERT teacher whose architecture differs from the section is an error naming the keys;
    a wav2vec2-family teacher has no such section.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"{source}: section 'teacher' must be a mapping, got {type(section).__name__}")
    if family_of(teacher) != MELHUBERT:
        raise ConfigError(f"{source}: section 'teacher' describes a MelHuBERT teacher, but -i is a wav2vec2-family model; "
                          "remove the section (the teacher is the -i model)")
    try:
        differences = teacher.config.architecture_differences(section)  # type: ignore[union-attr]
    except ValueError as error:
        raise ConfigError(f"{source}: section 'teacher': {error}") from None
    differences = [d for d in differences if d.split(":", 1)[0] in section]  # keys the section leaves out take -i's
    if differences:
        raise ConfigError(f"{source}: section 'teacher' does not describe the -i model ({'; '.join(differences)}); the teacher "
                          "is built from -i's own config: fix or remove the section")
    logger.info("%s: section 'teacher' matches the -i model's architecture", source)


def build_module(mode: str, model: Optional[nn.Module], model_cfg: Mapping[str, Any], runner_cfg: Mapping[str, Any],
                 init_checkpoint: Optional[Mapping[str, Any]]) -> DistillationModule:
    """Teacher from ``-i`` (frozen), student from the yaml (or, on ``--resume``, from the checkpoint)."""
    if model is None:
        raise ConfigError(f"mode '{mode}' needs -i CKPT (the teacher)")
    source = model_path(runner_cfg)
    settings = DistillSettings.from_config(model_cfg, source)
    if "teacher" in model_cfg:
        check_teacher_section(model_cfg["teacher"], model, source)
    if is_resuming(runner_cfg):
        student, teacher = model, frozen_teacher_from_initial(mode, runner_cfg, init_checkpoint)
        if family_of(student) == MELHUBERT:
            section = {k: v for k, v in model_section(model_cfg, source).items() if k != "initial_from_teacher"}
            fresh = MelHuBERTModel(student.config.with_training_settings(section))  # type: ignore[attr-defined]
            fresh.load_state_dict(student.state_dict())
            student = fresh
    else:
        teacher = model
        family = family_of(teacher)
        check_data_family(family, runner_cfg, mode)
        if family == MELHUBERT:
            student = melhubert_student(teacher, model_cfg, runner_cfg)  # type: ignore[arg-type]
        else:
            if settings.type != "layer2layer":
                raise ConfigError(f"{source}: key 'loss_param.type' is '{settings.type}', but a wav2vec2-family teacher has no "
                                  "cluster posteriors: use layer2layer")
            student = waveform_student(teacher, model_cfg, runner_cfg)
    return DistillationModule.from_mode_configs(  # type: ignore[return-value]
        mode, student.train(), model_cfg, runner_cfg, init_checkpoint, teacher=teacher, settings=settings,
        teacher_path=original_initial_weight(runner_cfg, init_checkpoint),
    )


def export(module: DistillationModule) -> dict[str, Any]:
    """The student only; the teacher is referenced by path."""
    return module.export_checkpoint()
