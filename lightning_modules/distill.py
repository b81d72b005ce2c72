"""DPHuBERT stage 1 (distillation + structured pruning) and stage 3 (final distillation)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Literal, Optional

import torch
from torch import Tensor, nn

from wav2vec2 import counting, sparse
from wav2vec2.components import valid_mask
from wav2vec2.model import Wav2Vec2Model

from .base import CompressionModule
from .distill_heads import DistillHeads
from .distill_loss import distill_loss
from .schedules import ramped_target
from .sparsity import MACS_REFERENCE_SAMPLES, Budget, SparsityConstraint


class DistillModule(CompressionModule):
    """Distil a student from a frozen teacher; with a target, prune it under a Lagrangian.

    Args:
        teacher, student: ``Wav2Vec2Model``s; the student carries hard-concrete gates when it
            is to be pruned (its prune switches are on).
        distill_layers / distill_mode: see ``DistillHeads``.
        target_sparsity: parameter sparsity target (stage 1), or None for plain distillation.
        target_macs_ratio: alternatively, the target MACs per second relative to the teacher.
        projections_state: heads' weights to start from (stage 3 continues stage 1's heads).
        teacher_dtype: ``"bf16"`` runs the frozen teacher under bf16 autocast (CPU and GPU);
            its targets are handed to the loss in fp32 either way.
        sparse_step: stage 1 computes only the live (non-zero gate) units of the student
            (``wav2vec2.sparse``; the same training as the dense masked step).
    """

    def __init__(
        self,
        teacher: Wav2Vec2Model,
        student: Wav2Vec2Model,
        distill_layers: str = "0.4,8,12",
        distill_mode: Literal["layer2layer", "predlayer"] = "layer2layer",
        l1_weight: float = 1.0,
        l2_weight: float = 0.0,
        cos_weight: float = 1.0,
        cos_type: Literal["raw", "log_sig"] = "raw",
        learning_rate: float = 2e-4,
        weight_decay: float = 0.0,
        warmup_updates: int = 15_000,
        max_updates: int = 50_000,
        reg_learning_rate: float = 0.02,
        target_sparsity: Optional[float] = None,
        target_macs_ratio: Optional[float] = None,
        sparsity_warmup_updates: int = 5_000,
        projections_state: Optional[dict[str, Tensor]] = None,
        provenance: Optional[dict[str, Any]] = None,
        teacher_dtype: Literal["fp32", "bf16"] = "fp32",
        sparse_step: bool = False,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_updates, max_updates)
        if teacher_dtype not in ("fp32", "bf16"):
            raise ValueError(f"teacher_dtype must be 'fp32' or 'bf16', got {teacher_dtype!r}")
        self.teacher_dtype = teacher_dtype
        self.sparse_step = sparse_step
        if target_sparsity is not None and target_macs_ratio is not None:
            raise ValueError("give either target_sparsity or target_macs_ratio, not both")
        self.teacher = teacher
        self.student = student
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.eval()
        # Lightning 2.x keeps each module's mode at fit start, and loaded models come in eval mode.
        self.student.train()
        width = lambda m: m.encoder.feature_projection.projection.out_features  # noqa: E731
        self.heads = DistillHeads(distill_layers, distill_mode, width(student), width(teacher), student.num_layers)
        if projections_state is not None:
            self.heads.projs.load_state_dict(projections_state, strict=True)
        self.loss_weights = dict(l1_weight=l1_weight, l2_weight=l2_weight, cos_weight=cos_weight, cos_type=cos_type)
        self.reg_learning_rate = reg_learning_rate
        self.sparsity_warmup_updates = sparsity_warmup_updates
        self.constraint: Optional[SparsityConstraint] = None
        self.target: Optional[float] = None
        if target_sparsity is not None or target_macs_ratio is not None:
            budget: Budget = "params" if target_sparsity is not None else "macs"
            self.target = target_sparsity if target_sparsity is not None else 1.0 - float(target_macs_ratio)  # type: ignore[arg-type]
            if not 0.0 <= self.target < 1.0:
                raise ValueError(f"sparsity target must be in [0, 1), got {self.target}")
            self.constraint = SparsityConstraint(budget, teacher)
        self.teacher_depth = max(self.heads.teacher_layers)
        self.teacher_num_params = sum(p.numel() for p in teacher.parameters())
        self.teacher_macs = float(counting.num_macs(teacher, MACS_REFERENCE_SAMPLES, "exact"))
        self.provenance = dict(provenance or {})
        if self.constraint is not None:
            self.provenance.update(target_sparsity=target_sparsity, target_macs_ratio=target_macs_ratio)
        self.save_hyperparameters(ignore=["teacher", "student", "projections_state", "provenance"])

    # The teacher never leaves eval mode, whoever calls .train() on the whole module.
    def train(self, mode: bool = True) -> "DistillModule":
        super().train(mode)
        self.teacher.eval()
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["student_config"] = self.student.config
        checkpoint["teacher_num_params"] = self.teacher_num_params
        checkpoint["provenance"] = self.provenance

    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.student, self.heads]

    def parameter_groups(self) -> list[dict[str, Any]]:
        gates = [p for n, p in self.student.named_parameters() if n.endswith("log_alpha")]
        main = [p for n, p in self.student.named_parameters() if not n.endswith("log_alpha") and p.requires_grad]
        main += list(self.heads.parameters())
        groups = [{"name": "main", "params": main, "lr": self.learning_rate, "weight_decay": self.weight_decay}]
        if self.constraint is not None:
            groups.append({"name": "log_alpha", "params": gates, "lr": self.reg_learning_rate, "weight_decay": 0.0})
            groups.append({"name": "lambda", "params": [self.constraint.lambda1, self.constraint.lambda2],
                           "lr": self.reg_learning_rate, "weight_decay": 0.0, "maximize": True})
        return groups

    def _distill_terms(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        waveforms, lengths = batch[0], batch[1]
        targets = self.teacher_targets(waveforms, lengths)
        if self.sparse_step and self.student.training:
            student_states, frame_lengths = sparse.extract_features(self.student, waveforms, lengths, self.heads.student_depth)
        else:
            student_states, frame_lengths = self.student.extract_features(waveforms, lengths, num_layers=self.heads.student_depth)
        predictions = self.heads(student_states)
        mask = valid_mask(frame_lengths, predictions[0].shape[1]) if frame_lengths is not None else None
        terms = distill_loss(predictions, targets, mask, **self.loss_weights)
        return terms.total, {"loss_distill": terms.total, "loss_l1": terms.l1, "loss_l2": terms.l2, "loss_cos": terms.cos}

    def teacher_targets(self, waveforms: Tensor, lengths: Optional[Tensor]) -> list[Tensor]:
        """The teacher's distilled layers, fp32 ``(B, T, D_teacher)`` each, as ordinary tensors.

        The teacher runs under ``inference_mode`` (no autograd bookkeeping at all) and stops
        at its deepest distilled layer; inference tensors cannot be saved for the student's
        backward, so the few target layers are copied out of inference mode.
        """
        autocast = (torch.autocast(waveforms.device.type, dtype=torch.bfloat16) if self.teacher_dtype == "bf16"
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            states, _ = self.teacher.extract_features(waveforms, lengths, num_layers=self.teacher_depth)
        return [states[layer].to(dtype=torch.float32, copy=True) for layer in self.heads.teacher_layers]

    def _with_constraint(self, loss: Tensor, logs: dict[str, Tensor | float]) -> Tensor:
        if self.constraint is None or self.target is None:
            return loss
        expected = self.constraint.expected_sparsity(self.student)
        target = ramped_target(self.global_step, self.target, self.sparsity_warmup_updates)
        penalty = self.constraint.penalty(expected, target)
        logs.update({
            "loss_reg": penalty, "sparsity_expected": expected, "sparsity_target": target,
            "lambda1": self.constraint.lambda1, "lambda2": self.constraint.lambda2,
        })
        return loss + penalty.to(loss.dtype)

    def training_loss(self, batch: Any) -> tuple[Tensor, dict[str, Tensor | float]]:
        loss, logs = self._distill_terms(batch)
        return self._with_constraint(loss, logs), logs

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        interval = self.trainer.log_every_n_steps if self.trainer is not None else 50
        if self.constraint is None or self.global_step % max(1, interval):
            return
        with torch.no_grad():
            per_layer = counting.per_layer_summary(self.student, "expected")
            macs = counting.num_macs(self.student, MACS_REFERENCE_SAMPLES, "expected")
        for kind, values in per_layer.items():
            for i, value in enumerate(values):
                self.log(f"layers/{kind}_{i}", value, on_step=True)
        self.log("sparsity/expected_params", float(counting.num_params(self.student, "expected").detach()), on_step=True)
        self.log("sparsity/expected_macs_ratio", float(macs) / self.teacher_macs, on_step=True)
