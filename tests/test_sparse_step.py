"""The sparsity-aware stage-1 forward (wav2vec2.sparse) trains exactly like the dense masked step.

Same seed, same gate samples: the distillation loss and every parameter gradient (weights,
biases, norms, log_alpha) must agree to 1e-5, and a parameter must get a gradient tensor
(possibly zeros) in the sparse step whenever it gets one in the dense step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import randomize_, tiny_model, waveforms
from lightning_modules.distill_loss import distill_loss
from wav2vec2 import sparse
from wav2vec2.hardconcrete import HardConcrete

UNITS = ("conv", "head", "interm", "attlayer", "ffnlayer")


def _set_gates(model: nn.Module, seed: int) -> None:
    """A mix of dead, partial and open gates, plus a dead FFN block, a dead attention block and
    an attention block with every head dead."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, HardConcrete):
                module.log_alpha.copy_(4.0 * torch.randn(module.n, generator=generator))
        layers = model.encoder.transformer.layers
        layers[1].feed_forward.hard_concrete_for_layer.log_alpha.fill_(-20.0)
        layers[0].attention.hard_concrete_for_layer.log_alpha.fill_(20.0)
        layers[0].attention.hard_concrete_for_heads.log_alpha.fill_(-20.0)
        layers[2].attention.hard_concrete_for_layer.log_alpha.fill_(-20.0)
        layers[2].feed_forward.hard_concrete_for_layer.log_alpha.fill_(20.0)
        layers[2].feed_forward.hard_concrete_for_intermediate.log_alpha.fill_(-20.0)


def _step(model: nn.Module, wav: torch.Tensor, lengths, targets, use_sparse: bool, min_saved_rows: float):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(123)
    if use_sparse:
        states, frames = sparse.extract_features(model, wav, lengths, num_layers=3, min_saved_rows=min_saved_rows)
    else:
        states, frames = model.extract_features(wav, lengths, num_layers=3)
    mask = None
    if frames is not None:
        mask = torch.arange(states[0].shape[1])[None, :] < frames[:, None]
    loss = distill_loss([states[i] for i in (1, 2, 3)], targets, mask).total
    loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    return loss.detach(), grads


@pytest.mark.parametrize(
    "family,extractor_mode,layer_norm_first",
    [("hubert", "group_norm", False), ("wavlm", "group_norm", False), ("hubert", "layer_norm", True)],
)
@pytest.mark.parametrize("min_saved_rows", [0.0, 64.0])
@pytest.mark.parametrize("padded", [False, True])
def test_sparse_step_matches_dense(family, extractor_mode, layer_norm_first, min_saved_rows, padded):
    model = tiny_model(family, extractor_mode=extractor_mode, layer_norm_first=layer_norm_first, prune=UNITS, num_layers=3)
    randomize_(model)
    _set_gates(model, seed=3)
    model.train()
    wav = waveforms(batch=2, num_samples=2400, seed=1)
    lengths = torch.tensor([2400, 1700]) if padded else None
    frames = model.extract_features(wav, lengths, num_layers=0)[0][0].shape[1]
    generator = torch.Generator().manual_seed(7)
    targets = [torch.randn(2, frames, 32, generator=generator) for _ in range(3)]

    # The gate pattern must exercise every branch of the sparse path.
    torch.manual_seed(123)
    samples = [m() for m in model.modules() if isinstance(m, HardConcrete)]
    assert any(bool((z == 0).any()) and bool((z > 0).any()) for z in samples)

    dense_loss, dense_grads = _step(model, wav, lengths, targets, use_sparse=False, min_saved_rows=min_saved_rows)
    sparse_loss, sparse_grads = _step(model, wav, lengths, targets, use_sparse=True, min_saved_rows=min_saved_rows)
    assert torch.isfinite(dense_loss)
    assert abs(float(dense_loss) - float(sparse_loss)) <= 1e-5 * max(1.0, abs(float(dense_loss)))
    checked_alpha = 0
    for name, dense in dense_grads.items():
        ours = sparse_grads[name]
        if dense is None:
            assert ours is None, name
            continue
        assert ours is not None, f"{name}: no gradient in the sparse step (the dense step gives one)"
        torch.testing.assert_close(ours, dense, atol=1e-5, rtol=1e-5, msg=lambda m: f"{name}: {m}")
        checked_alpha += name.endswith("log_alpha") and bool(dense.ne(0).any())
    assert checked_alpha > 0  # some gate gradients are non-zero and were compared


def test_skipped_blocks_get_zero_gradients_not_none():
    model = tiny_model("hubert", prune=UNITS, num_layers=3)
    _set_gates(model, seed=3)
    model.train()
    wav = waveforms(batch=1, num_samples=2400)
    torch.manual_seed(0)
    states, _ = sparse.extract_features(model, wav, num_layers=3)
    states[-1].pow(2).mean().backward()
    ffn = model.encoder.transformer.layers[1].feed_forward
    assert ffn.intermediate_dense.weight.grad is not None
    assert float(ffn.intermediate_dense.weight.grad.abs().max()) == 0.0
    assert float(ffn.hard_concrete_for_intermediate.log_alpha.grad.abs().max()) == 0.0


def test_eval_mode_and_ungated_models_use_the_model_forward():
    model = tiny_model("hubert", num_layers=2)
    wav = waveforms(batch=1, num_samples=2000)
    with torch.no_grad():
        ours, _ = sparse.extract_features(model, wav)
        reference, _ = model.extract_features(wav)
    for a, b in zip(ours, reference):
        assert torch.equal(a, b)
