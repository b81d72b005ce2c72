"""MelHuBERT masked-prediction training (``train.py -m melhubert``), the base of the compression modes.

Every MelHuBERT compression mode retrains with this same objective (continued pre-training),
so pruning / low-rank modules subclass :class:`MelHuBERTPretrainModule` and add their steps.

On top of ``CompressionModule`` (AdamW param groups, per-step LR schedule, loss-term logging,
RNG state in checkpoints for exact resume) this adds what the MelHuBERT runner does:

* Adam(W) with the runner yaml's ``optimizer`` kwargs (lr, betas, eps, weight_decay) and a
  constant LR after an optional linear warm-up (the original has no schedule: warm-up 0);
* gradient clipping at ``runner.gradient_clipping`` with **NaN-skip**: when the total grad
  norm is not finite the update is skipped (gradients dropped, so Adam leaves every parameter
  and its moments alone) and counted in ``train/skipped_updates``; ``train/grad_norm`` logged;
* masked-prediction loss, accuracy and masked fraction in the logs (the original logs none);
* optional warm start of the optimizer moments from the ``-i`` checkpoint
  (``--init_optimizer_from_initial_weight``).

Plug-in functions for ``cli.train``: :func:`build_module` and :func:`export`.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterable, Mapping, Optional

import torch
from torch import Tensor, nn

from wav2vec2.melhubert_checkpoint import CONFIG_SECTIONS, upstream_config
from speech_data.mel_data import MEL_BINS, MelBatch
from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel, masked_prediction_loss

from lightning_modules.base import CompressionModule
from lightning_modules.schedules import constant_with_warmup

logger = logging.getLogger(__name__)


class MelHuBERTPretrainModule(CompressionModule):
    """Masked prediction of cluster ids from log-Mel input with the MelHuBERT runner's habits.

    Args:
        model: the MelHuBERT model to train (its config holds mask / loss settings).
        learning_rate, betas, eps, weight_decay: AdamW settings (weight_decay 0 = Adam).
        warmup_updates: linear LR warm-up, then constant.
        max_updates: total updates (informational; the schedule is constant).
        gradient_clipping: max total grad norm; 0 or less: no clipping (NaN-skip still applies).
        frame_period_ms: 10 or 20, for the throughput log.
        task: the model yaml's ``task`` section, stored in checkpoints.
        seed: seeds the fixed validation masks.
        initial_optimizer_state: an optimizer state dict whose moments start the run.
    """

    frozen_prefixes = ()

    def __init__(
        self,
        model: MelHuBERTModel,
        *,
        learning_rate: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        warmup_updates: int = 0,
        max_updates: int = 0,
        gradient_clipping: float = 10.0,
        frame_period_ms: int = 20,
        task: Optional[Mapping[str, Any]] = None,
        seed: int = 0,
        initial_optimizer_state: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(learning_rate, weight_decay, warmup_updates, max_updates)
        self.model = model
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.gradient_clipping = float(gradient_clipping)
        self.frame_period_ms = frame_period_ms
        self.task = dict(task or {})
        self.seed = seed
        self.skipped_updates = 0
        self._initial_optimizer_state = initial_optimizer_state

    @classmethod
    def from_configs(
        cls,
        model: MelHuBERTModel,
        model_cfg: Mapping[str, Any],
        runner_cfg: Mapping[str, Any],
        init_checkpoint: Optional[Mapping[str, Any]] = None,
        **overrides: Any,
    ) -> "MelHuBERTPretrainModule":
        """Keyword arguments from the two yaml dicts (the runner adds ``runner.seed`` etc., see cli.train)."""
        runner = runner_cfg.get("runner", {})
        optimizer = runner_cfg.get("optimizer", {})
        kwargs: dict[str, Any] = dict(
            learning_rate=float(optimizer.get("lr", 1e-4)),
            betas=tuple(optimizer.get("betas", (0.9, 0.999))),
            eps=float(optimizer.get("eps", 1e-8)),
            weight_decay=float(optimizer.get("weight_decay", 0.0)),
            warmup_updates=int(runner.get("warmup_steps", 0) or 0),
            max_updates=max(int(runner.get("total_steps", 0) or 0), 0),
            gradient_clipping=float(runner.get("gradient_clipping", 10.0)),
            frame_period_ms=int(runner.get("frame_period_ms", 20)),
            task=model_cfg.get("task", {}),
            seed=int(runner.get("seed", 0)),
        )
        if runner.get("init_optimizer_from_initial_weight") and init_checkpoint is not None:
            state = init_checkpoint.get("Optimizer")
            if not state:
                raise ValueError("--init_optimizer_from_initial_weight: the -i checkpoint has no 'Optimizer' state")
            kwargs["initial_optimizer_state"] = state
        kwargs.update(overrides)
        return cls(model, **kwargs)

    # ----- optimisation --------------------------------------------------------------------
    def trainable_modules(self) -> Iterable[nn.Module]:
        return [self.model]

    def parameter_groups(self) -> list[dict[str, Any]]:
        groups = super().parameter_groups()
        for group in groups:
            group.setdefault("betas", self.betas)
            group.setdefault("eps", self.eps)
        return groups

    def lr_multiplier(self, step: int) -> float:
        return constant_with_warmup(step, self.warmup_updates)

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        """Clip the total norm; drop the update when the norm is not finite (NaN / inf)."""
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not params:
            return
        max_norm = self.gradient_clipping if self.gradient_clipping > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        if not math.isfinite(norm):
            # AdamW skips parameters without gradients: no moment update, no decay, no step.
            # With 16-bit AMP the grad scaler has already decided to skip this step too.
            for p in params:
                p.grad = None
            self.skipped_updates += 1
            logger.warning("step %d: gradient norm %s, update skipped (%d so far)", self.global_step, norm, self.skipped_updates)
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        self.log("train/skipped_updates", float(self.skipped_updates), on_step=True, on_epoch=False)

    def on_fit_start(self) -> None:
        if self._initial_optimizer_state is not None and self.trainer.ckpt_path is None:
            optimizer = self.trainer.optimizers[0]
            load_optimizer_moments(optimizer, self._initial_optimizer_state)
            logger.info("optimizer moments initialised from the -i checkpoint")
        self._initial_optimizer_state = None

    # ----- objective -----------------------------------------------------------------------
    def _loss(self, batch: MelBatch, mask_indices: Optional[Tensor]) -> tuple[Tensor, dict[str, Tensor | float]]:
        outputs = self.model(batch.features, batch.pad_mask, batch.labels, mask=mask_indices is None,
                             teacher_mask_indices=mask_indices)
        loss, logs = masked_prediction_loss(outputs, self.model.config)
        result: dict[str, Tensor | float] = dict(logs)
        result["masked_fraction"] = outputs[7].sum() / batch.pad_mask.sum().clamp(min=1)
        return loss, result

    def training_loss(self, batch: MelBatch) -> tuple[Tensor, dict[str, Tensor | float]]:
        return self._loss(batch, None)

    def validation_loss(self, batch: MelBatch) -> tuple[Tensor, dict[str, Tensor | float]]:
        # Fixed masks per validation batch, so evaluations compare across steps.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(batch.indices[0]))
        return self._loss(batch, self.model.draw_mask(batch.pad_mask, generator))

    def audio_seconds(self, batch: MelBatch) -> float:
        # Mel batches carry frame lengths, not sample counts.
        return float(batch.lengths.sum()) * self.frame_period_ms / 1000.0

    # ----- checkpoints ---------------------------------------------------------------------
    def export_checkpoint(self) -> dict[str, Any]:
        """``{"model", "Upstream_Config"}`` of the current model (tensors shared, not copied)."""
        return {"model": self.model.state_dict(), "Upstream_Config": upstream_config(self.model, self.task)}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["skipped_updates"] = self.skipped_updates

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.skipped_updates = int(checkpoint.get("skipped_updates", 0))


def load_optimizer_moments(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load the per-parameter state (Adam moments, step) of ``state``; keep this run's hyper-parameters."""
    saved_groups = state.get("param_groups", [])
    current = optimizer.state_dict()
    if len(saved_groups) != len(current["param_groups"]) or any(
        len(s["params"]) != len(c["params"]) for s, c in zip(saved_groups, current["param_groups"])
    ):
        shape = [len(g["params"]) for g in saved_groups]
        raise ValueError(f"the -i optimizer state has parameter groups of sizes {shape}, this model "
                         f"{[len(g['params']) for g in current['param_groups']]}: it was saved for another architecture")
    groups = [{**c, "params": s["params"]} for s, c in zip(saved_groups, current["param_groups"])]
    optimizer.load_state_dict({"state": state["state"], "param_groups": groups})


# --------------------------------------------------------------------------------------------
# cli.train plug-in
# --------------------------------------------------------------------------------------------


def model_section(model_cfg: Mapping[str, Any], source: str = "model config") -> dict[str, Any]:
    """The ``melhubert:`` (or old ``hubert:``) section of a model yaml."""
    for name in CONFIG_SECTIONS:
        if name in model_cfg:
            section = model_cfg[name]
            if not isinstance(section, Mapping):
                raise ValueError(f"{source}: section '{name}' must be a mapping, got {type(section).__name__}")
            return dict(section)
    raise ValueError(f"{source}: no 'melhubert' section (found {sorted(model_cfg)})")


def check_input_dim(config: MelHuBERTConfig, frame_period_ms: int, source: str = "model config") -> None:
    """The original's assertion: 80 input dims for 20 ms frames, 40 for 10 ms."""
    expected = MEL_BINS * frame_period_ms // 10
    if config.feat_emb_dim != expected:
        raise ValueError(f"{source}: melhubert.feat_emb_dim is {config.feat_emb_dim}, but -f {frame_period_ms} gives "
                         f"{expected}-dim frames; use the {'10' if config.feat_emb_dim == MEL_BINS else '20'} ms setting "
                         f"or a matching config")


def build_module(
    mode: str,
    model: Optional[nn.Module],
    model_cfg: Mapping[str, Any],
    runner_cfg: Mapping[str, Any],
    init_checkpoint: Optional[Mapping[str, Any]],
) -> MelHuBERTPretrainModule:
    """``-m melhubert``: a fresh model from the yaml, or the ``-i`` model retrained with the yaml's settings.

    With ``-i`` the architecture is the checkpoint's (its weights must fit); masking, dropout
    and loss weights come from the yaml. Differences in architecture keys are logged.
    """
    runner = runner_cfg.get("runner", {})
    source = str(runner.get("model_config_path", "model config"))
    section = model_section(model_cfg, source)
    if model is None:
        try:
            config = MelHuBERTConfig(section)
        except ValueError as error:
            raise ValueError(f"{source}: melhubert section: {error}") from None
        model = MelHuBERTModel(config)
    elif not isinstance(model, MelHuBERTModel):
        raise ValueError(f"mode '{mode}' trains on log-Mel features: -i must be a MelHuBERT checkpoint, "
                         f"got a {type(model).__name__} (a waveform model)")
    else:
        differences = model.config.architecture_differences(section)
        if differences:
            logger.warning("architecture from -i, not from %s: %s", source, "; ".join(differences))
        trained = model
        # Dropout rates live in the modules, so rebuild with the yaml's training settings.
        model = MelHuBERTModel(trained.config.with_training_settings(section))
        model.load_state_dict(trained.state_dict())
    check_input_dim(model.config, int(runner.get("frame_period_ms", 20)), source)
    return MelHuBERTPretrainModule.from_configs(model.train(), model_cfg, runner_cfg, init_checkpoint)


def export(module: MelHuBERTPretrainModule) -> dict[str, Any]:
    """Checkpoint keys of the trained model (``model``, ``Upstream_Config``)."""
    return module.export_checkpoint()
