"""Exact budgets after pruning (wav2vec2/budget.py), params and MACs, on runs stopped early."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_modules.distill import DistillModule
from methods.dphubert import build_gated_student, prune_stage
from wav2vec2 import counting
from wav2vec2.budget import MACS_REFERENCE_SAMPLES, gate_slots, meet_budget, size_of
from wav2vec2.checkpoint import load_model, save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_config() -> dict:
    return hubert_base_config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 3, 2], [16, 2, 2], [16, 2, 2]],
        encoder_embed_dim=32, encoder_num_layers=2, encoder_use_attention=[True] * 2, encoder_use_feed_forward=[True] * 2,
        encoder_num_heads=[4] * 2, encoder_head_dim=8, encoder_ff_interm_features=[128] * 2, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4,
    )


@pytest.fixture()
def gated(tmp_path: Path):
    torch.manual_seed(0)
    teacher = wav2vec2_model(**tiny_config())
    path = save_model(tmp_path / "teacher.pth", teacher)
    return teacher, path, build_gated_student(path, "conv,head,interm,attlayer,ffnlayer")


def _scramble(student: torch.nn.Module, seed: int) -> None:
    """Gates as a short run leaves them: spread log_alpha, some block gates undecided near P = 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for slot in gate_slots(student):
            gate = slot.gate
            gate.log_alpha.copy_(torch.randn(gate.n, generator=generator) * 2.0 + 0.5)


@pytest.mark.parametrize("kind, target", [("params", 0.75), ("params", 0.3), ("macs", 0.6)])
def test_selection_meets_the_budget_exactly_after_prune(gated, kind: str, target: float) -> None:
    teacher, _, student = gated
    _scramble(student, seed=1)
    student.eval()
    reference = size_of(teacher, kind)  # type: ignore[arg-type]
    before = 1 - size_of(student, kind) / reference  # type: ignore[arg-type]
    assert abs(before - target) > 0.01, "the scrambled gates must start off-budget, or the test proves nothing"
    selection = meet_budget(student, kind, target, reference)  # type: ignore[arg-type]
    assert abs(selection.sparsity() - target) <= 0.0005 and selection.changed_units > 0
    student.prune()
    pruned = sum(p.numel() for p in student.parameters()) if kind == "params" else \
        float(counting.num_macs(student, MACS_REFERENCE_SAMPLES, "exact"))
    assert pruned == pytest.approx(selection.size)
    assert abs((1 - pruned / reference) - target) <= 0.001
    assert "gap" in selection.describe()


def test_selection_prefers_high_scores(gated) -> None:
    teacher, _, student = gated
    with torch.no_grad():
        for slot in gate_slots(student):
            slot.gate.log_alpha.fill_(5.0)  # every gate wide open: the masks keep everything
        ffn = student.encoder.transformer.layers[1].feed_forward.hard_concrete_for_intermediate
        ffn.log_alpha[:10] = torch.linspace(-1.0, 0.0, 10) + 4.0  # the ten weakest units of the model
    student.eval()
    reference = size_of(teacher, "params")
    unit = 2 * 32 + 1  # params of one FFN unit (in + out weights, its bias)
    selection = meet_budget(student, "params", 10 * unit / reference, reference, tolerance=0.5 * unit / reference)
    assert selection.keep["layer1.interm"][:10].sum() == 0 and selection.keep["layer1.interm"][10:].all()
    assert reference - selection.size == 10 * unit


def test_impossible_budget_is_an_error(gated) -> None:
    teacher, _, student = gated
    student.eval()
    with pytest.raises(ValueError, match="no selection of units reaches"):
        meet_budget(student, "params", 0.999, size_of(teacher, "params"))


class RandomAudio(Dataset):
    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.randn(4000, generator=torch.Generator().manual_seed(index % 16))


@pytest.mark.parametrize("budget", ["params", "macs"])
def test_prune_stage_meets_target_on_an_unsettled_run(gated, tmp_path: Path, budget: str) -> None:
    teacher, path, student = gated
    L.seed_everything(0)
    target = 0.7
    kwargs = {"target_sparsity": target} if budget == "params" else {"target_macs_ratio": 1 - target}
    module = DistillModule(teacher, student, distill_layers="0.1,2", learning_rate=1e-3, warmup_updates=2, max_updates=100,
                           reg_learning_rate=0.1, sparsity_warmup_updates=8, **kwargs)
    loader = DataLoader(RandomAudio(), batch_size=2, collate_fn=lambda xs: (torch.stack(xs), torch.full((len(xs),), 4000)))
    trainer = L.Trainer(max_steps=12, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    expected = float(module.constraint.expected_sparsity(student).detach())
    assert abs(expected - target) > 0.05, f"12 steps must leave the multipliers unsettled (expected sparsity {expected:.3f})"
    trainer.save_checkpoint(tmp_path / "stage1.ckpt")
    result = prune_stage(tmp_path / "stage1.ckpt", tmp_path / "pruned.pth")
    pruned = load_model(tmp_path / "pruned.pth", verbose=False)
    if budget == "params":
        achieved = result["sparsity"]
    else:
        achieved = 1 - float(counting.num_macs(pruned, MACS_REFERENCE_SAMPLES, "exact")) / size_of(teacher, "macs")
    assert abs(achieved - target) <= 0.001, f"achieved {achieved:.4f} vs target {target}"
    assert torch.load(tmp_path / "pruned.pth", weights_only=True)["provenance"]["budget"]["kind"] == budget
