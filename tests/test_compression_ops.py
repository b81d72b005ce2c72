"""Compression operations: weight pruning + schedule/convergence gate, head
pruning (l1 and data-driven), row pruning, low-rank factorisation, honest counting.

Everything runs on tiny HuBERT / WavLM models (tests/helpers.py); structural edits are checked
against an equivalent "zeroed" copy of the unpruned model, against a rebuild from the updated
config with a strict reload, and against closed-form parameter counts.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import wav2vec2
from wav2vec2 import low_rank as LR
from wav2vec2 import measure as M
from methods import ops_heads as HP
from methods import ops_rows as RP
from methods import ops_weight as WP
from methods import prune_schedule as S
from helpers import max_abs_diff, tiny_model, waveforms
from wav2vec2.counting import num_macs, num_params

pytestmark = pytest.mark.usefixtures("single_thread")

D, HEADS, HEAD_DIM, FFN, LAYERS = 32, 4, 8, 24, 3
X = waveforms(2, 1200, seed=3)
LENGTHS = torch.tensor([1200, 900])


def outputs(model: nn.Module, x: torch.Tensor = X, lengths: torch.Tensor = LENGTHS) -> list[torch.Tensor]:
    with torch.no_grad():
        states, _ = model.extract_features(x, lengths)
        out, _ = model(x, lengths)
    return states + [out]


def rebuild(model: wav2vec2.Wav2Vec2Model, low_rank: dict[str, int] | None = None) -> wav2vec2.Wav2Vec2Model:
    """``wav2vec2_model(**model.config)`` (+ low-rank structure) with a strict state-dict load."""
    fresh = wav2vec2.wav2vec2_model(**model.config)
    if low_rank:
        LR.apply_low_rank_structure(fresh, low_rank)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


def pool_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Effective pooled tensors in pool order (independent of ops_weight's internals)."""
    out = []
    for layer in model.encoder.transformer.layers:
        mods = []
        if layer.attention is not None:
            mods += [layer.attention.q_proj, layer.attention.k_proj, layer.attention.v_proj, layer.attention.out_proj]
        if layer.feed_forward is not None:
            mods += [layer.feed_forward.intermediate_dense, layer.feed_forward.output_dense]
        for mod in mods:
            for name in ("weight", "bias"):
                if hasattr(mod, name + "_orig"):
                    out.append((getattr(mod, name + "_orig") * getattr(mod, name + "_mask")).detach())
                else:
                    out.append(getattr(mod, name).detach())
    return out


def flat_pool(model: nn.Module) -> torch.Tensor:
    return torch.cat([t.flatten() for t in pool_tensors(model)])


# ============================================================================================
# Weight pruning
# ============================================================================================


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_pool_covers_projection_and_ffn_weights_and_biases(family):
    model = tiny_model(family)
    expected = LAYERS * (4 * (D * D + D) + (D * FFN + FFN) + (FFN * D + D))
    q = model.encoder.transformer.layers[0].attention.q_proj
    param = q.weight
    assert WP.attach_masks(model) == expected == WP.pool_size(model)
    # Same Parameter object under the new name: an optimiser built before keeps working.
    assert q.weight_orig is param and "weight" not in q._parameters
    keys = set(model.state_dict())
    assert "encoder.transformer.layers.0.attention.q_proj.weight_mask" in keys
    assert "encoder.transformer.layers.2.feed_forward.output_dense.bias_orig" in keys
    # Nothing outside the pool is masked.
    assert not any(k.endswith("_mask") for k in keys if "attention" not in k and "feed_forward" not in k)


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_prune_to_exact_cumulative_counts_with_training_between(family):
    model = tiny_model(family).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)  # built before the masks exist
    N = WP.attach_masks(model)
    previous_zero = torch.zeros(N, dtype=torch.bool)
    for sparsity in (0.2, 0.5, 0.731, 0.9):
        before = flat_pool(model)
        old_masks = {m: m.weight_mask.clone() for m in model.modules() if hasattr(m, "weight_mask")}
        info = WP.prune_to(model, sparsity)
        k = int(sparsity * N + 0.5)
        after = flat_pool(model)
        zero = after == 0
        assert info["masked"] == k and int(zero.sum()) == k == WP.pool_zeros(model)
        assert bool(zero[previous_zero].all()), "a pruned entry came back"
        # The old masks were folded into the stored weights (Adam had moved masked entries).
        for module, old in old_masks.items():
            assert float(module.weight_orig.detach()[old == 0].abs().sum()) == 0.0
        # Magnitude criterion: every newly masked entry is no larger than any kept one.
        new = zero & ~previous_zero
        assert float(before[new].abs().max()) <= float(before[~zero].abs().min())
        previous_zero = zero
        # Train a few steps: masked entries get no gradient and stay zero in the forward.
        for _ in range(2):
            optimizer.zero_grad()
            out, _ = model(X, LENGTHS)
            (out ** 2).mean().backward()
            q = model.encoder.transformer.layers[1].attention.q_proj
            assert float(q.weight_orig.grad[q.weight_mask == 0].abs().max()) == 0.0
            optimizer.step()
        assert torch.equal(flat_pool(model) == 0, previous_zero)
    assert abs(WP.global_sparsity(model) - 0.9) < 1.0 / N


def test_prune_to_ties_are_exact_and_broken_by_pool_position():
    model = tiny_model("hubert")
    WP.attach_masks(model)
    with torch.no_grad():
        for t in model.modules():
            if hasattr(t, "weight_orig"):
                t.weight_orig.copy_(torch.sign(torch.randn_like(t.weight_orig)) * 0.5)  # all |w| tie
                t.bias_orig.fill_(0.5)
    N = WP.pool_size(model)
    WP.prune_to(model, 0.37)
    k = int(0.37 * N + 0.5)
    zero = flat_pool(model) == 0
    assert int(zero.sum()) == k
    assert bool(zero[:k].all()) and not bool(zero[k:].any())  # the first k pool positions


def masks_flat(model):
    return torch.cat([m._buffers[n + "_mask"].flatten() for m in WP.pruning_targets(model) for n in ("weight", "bias")])


def test_previously_masked_entries_are_selected_before_natural_zeros():
    model = tiny_model("hubert")
    WP.prune_to(model, 0.3)
    before = masks_flat(model) == 0
    with torch.no_grad():  # natural zeros early in the pool (layer 0 q_proj), still unmasked
        q = model.encoder.transformer.layers[0].attention.q_proj
        q.weight_orig.masked_fill_((q.weight_mask == 1) & (torch.arange(q.weight_orig.numel()).view_as(q.weight_orig) < 600), 0.0)
    WP.prune_to(model, 0.31)
    after = masks_flat(model) == 0
    assert int(after.sum()) == int(0.31 * after.numel() + 0.5)
    assert bool(after[before].all()), "a masked entry was released in favour of a natural zero"


def test_prune_to_refuses_lower_target():
    model = tiny_model("hubert")
    WP.prune_to(model, 0.5)  # attaches masks itself
    with pytest.raises(ValueError, match="below the current"):
        WP.prune_to(model, 0.4)


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_masks_act_in_forward_fold_and_reload(family):
    model = tiny_model(family)
    plain = copy.deepcopy(model)
    WP.prune_to(model, 0.6)
    masked_outputs = outputs(model)
    # Same result as zeroing the entries in a plain copy: the masks are applied in forward.
    with torch.no_grad():
        for (name, module), (_, plain_module) in zip(model.named_modules(), plain.named_modules()):
            for tensor in ("weight", "bias"):
                if hasattr(module, tensor + "_mask"):
                    getattr(plain_module, tensor).mul_(getattr(module, tensor + "_mask"))
    assert max_abs_diff(outputs(plain), masked_outputs) == 0.0
    nonzero = WP.count_nonzero_params(model)
    assert nonzero == WP.count_nonzero_params(plain)
    # A masked state dict reloads strictly into a fresh model with identity masks.
    fresh = wav2vec2.wav2vec2_model(**model.config).eval()
    WP.attach_masks(fresh)
    fresh.load_state_dict(model.state_dict(), strict=True)
    q = fresh.encoder.transformer.layers[0].attention.q_proj
    assert torch.equal(q.weight, q.weight_orig * q.weight_mask)  # refreshed on load, before any forward
    assert max_abs_diff(outputs(fresh), masked_outputs) == 0.0
    assert max_abs_diff(outputs(copy.deepcopy(model)), masked_outputs) == 0.0
    # Export: plain parameters, original keys, identical outputs, strict rebuild.
    WP.fold_masks(model)
    assert not WP.has_masks(model)
    assert set(model.state_dict()) == set(plain.state_dict())
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert max_abs_diff(outputs(model), masked_outputs) == 0.0
    assert max_abs_diff(outputs(rebuild(model)), masked_outputs) == 0.0
    assert WP.count_nonzero_params(model) == nonzero


def test_nonzero_counts_and_sparse_macs():
    model = tiny_model("hubert")
    total_nonzero = WP.count_nonzero_params(model)
    assert total_nonzero == M.count_params(model) - int(sum((p == 0).sum() for p in model.parameters()))
    dense_macs = M.count_linear_macs(model, 1200)
    WP.prune_to(model, 0.7)
    k = int(0.7 * WP.pool_size(model) + 0.5)
    assert WP.count_nonzero_params(model) == total_nonzero - k
    assert M.count_params(model) == num_params(model, "exact")  # dense storage is unchanged
    frames = int(model.num_frames(torch.tensor([1200])))
    weight_zeros = 0
    for module in model.modules():
        if hasattr(module, "weight_mask"):
            weight_zeros += int((module.weight_mask == 0).sum())
    assert M.count_linear_macs(model, 1200) == dense_macs
    assert M.count_linear_macs(model, 1200, sparse=True) == dense_macs - frames * weight_zeros


def test_weight_pruning_presets():
    s = S.WEIGHT_PRUNING_SPARSITIES
    assert len(s) == 38 and s[0] == 0.2 and s[-1] == 0.95
    assert all(b > a for a, b in zip(s, s[1:]))
    assert {0.55, 0.675, 0.7, 0.71, 0.8, 0.9, 0.91, 0.915, 0.945} <= set(s)
    assert s[8:30] == (0.7, 0.71, 0.72, 0.73, 0.74, 0.75, 0.76, 0.77, 0.78, 0.79, 0.8, 0.81, 0.82,
                       0.83, 0.84, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9, 0.91)
    assert S.sparsity_targets(0.9, 3) == pytest.approx([0.3, 0.6, 0.9])
    assert S.prune_steps(25_000, 25_000, 38)[-1] == 950_000
    sched = S.WeightPruningSchedule(**S.WEIGHT_PRUNING_PRESET)
    assert sched.events[:2] == [25_000, 50_000] and sched.events[-1] == 950_000


# ============================================================================================
# Schedule and convergence gate
# ============================================================================================

# warmup = period = 10, average_length 4 (target at event - 4), smooth 0.5, tolerance 0.01.
GATE = dict(sparsities=[0.1, 0.2, 0.3], warmup=10, period=10, total_steps=40, smooth_factor=0.5,
            average_length=4, tolerance=0.01)
# Steps 1-10 flat -> prune 0.1 at 10. 11-16 at 2.0 (target 2.0 at step 16), 17-20 at 1.0 -> EMA
# 1.0625 < 1.99 -> postpone at 20 (event 40 appended, total 50). 21-30 at 1.0625 -> prune 0.2 at 30.
# 31-33: 3, 4, 5 (EMA 4 after the restart), 34-36 at 4 (target 4), 37-40 at 3.99 -> EMA 3.990625,
# not below 4 - 0.01 -> prune 0.3 at 40 (it would postpone without the tolerance).
LOSSES = [1.0] * 10 + [2.0] * 6 + [1.0] * 4 + [1.0625] * 10 + [3.0, 4.0, 5.0, 4.0, 4.0, 4.0] + [3.99] * 4 + [3.99] * 10
EXPECTED = {10: 0.1, 30: 0.2, 40: 0.3}


def run(sched: S.WeightPruningSchedule, losses, start: int = 0) -> dict[int, float]:
    decisions = {}
    for i, loss in enumerate(losses, start=start + 1):
        result = sched.update(loss, step=i)
        if result is not None:
            decisions[i] = result
    return decisions


def test_convergence_gate_postpones_and_extends_exactly():
    sched = S.WeightPruningSchedule(**GATE)
    seen = {}
    for step, loss in enumerate(LOSSES, start=1):
        result = sched.update(loss)
        if result is not None:
            seen[step] = result
        if step == 2:
            assert sched.ema is None  # first 3 updates only initialise
        if step == 3:
            assert sched.ema == 1.0
        if step == 10:
            assert sched.ema is None and sched.init_losses == []  # restarted by the prune
        if step == 13:
            assert sched.ema == 2.0
        if step == 15:
            assert sched.target is None
        if step == 16:
            assert sched.target == 2.0  # snapshot average_length = 4 updates before event 20
        if step == 19:
            assert sched.ema == 1.125
        if step == 20:
            assert sched.ema == 1.0625 and sched.target is None
            assert sched.events == [10, 20, 30, 40] and sched.total_steps == 50
        if step == 33:
            assert sched.ema == 4.0
    assert seen == EXPECTED
    assert sched.history == [(10, "prune", 0.1), (20, "postpone", 0.2), (30, "prune", 0.2), (40, "prune", 0.3)]
    assert sched.done and sched.total_steps == 50 and sched.current_sparsity == 0.3


def test_gate_normal_condition_and_missing_target():
    normal = S.WeightPruningSchedule(**{**GATE, "condition": "normal"})
    assert run(normal, LOSSES) == {10: 0.1, 20: 0.2, 30: 0.3}
    assert normal.total_steps == 40
    # average_length >= period: the snapshot step is not after the previous event -> no target,
    # so the gate cannot postpone even while the loss falls.
    no_target = S.WeightPruningSchedule(**{**GATE, "average_length": 10})
    assert run(no_target, LOSSES) == {10: 0.1, 20: 0.2, 30: 0.3}
    # warmup != period: the target is taken average_length before each event (steps 6 and 26),
    # not a fixed distance after the previous prune.
    sched = S.WeightPruningSchedule(**{**GATE, "warmup": 10, "period": 20, "total_steps": 60})
    targets = {}
    for step, loss in enumerate([1.0] * 30, start=1):
        sched.update(loss)
        targets[step] = sched.target
    assert [s for s in targets if targets[s] is not None] == [6, 7, 8, 9, 26, 27, 28, 29]


@pytest.mark.parametrize("cut", [5, 16, 20, 25, 33])
def test_gate_resumes_exactly(cut):
    sched = S.WeightPruningSchedule(**GATE)
    first = run(sched, LOSSES[:cut])
    state = json.loads(json.dumps(sched.state_dict()))  # plain values only
    resumed = S.WeightPruningSchedule(sparsities=[0.5], warmup=1, period=1, total_steps=1)
    resumed.load_state_dict(state)
    second = run(resumed, LOSSES[cut:], start=cut)
    assert {**first, **second} == EXPECTED
    assert resumed.history == [(10, "prune", 0.1), (20, "postpone", 0.2), (30, "prune", 0.2), (40, "prune", 0.3)]
    assert resumed.total_steps == 50


def test_fixed_schedule_presets_and_resume():
    head = S.HEAD_PRUNING_PRESET
    steps = S.structured_prune_steps(head["warm_up"], head["interval"], head["num_steps"])
    assert steps == [1_000, 26_000, 51_000, 76_000, 101_000, 126_000, 166_000, 206_000, 246_000, 286_000, 326_000]
    row = S.ROW_PRUNING_PRESET
    steps = S.structured_prune_steps(row["warm_up"], row["interval"], row["num_steps"])
    assert steps[0] == 1_000 and steps[-1] == 476_000 and len(steps) == 20
    sched = S.FixedSchedule.from_interval(2, [0, 3, 7], 3, total_steps=12)
    fired = [step for step in range(1, 6) if sched.update(step)]
    resumed = S.FixedSchedule([1], 1)
    resumed.load_state_dict(json.loads(json.dumps(sched.state_dict())))
    fired += [step for step in range(6, 13) if resumed.update(step)]
    assert fired == [2, 5, 9] and resumed.done


# ============================================================================================
# Head pruning
# ============================================================================================


def test_head_scores_l1_match_hand_computation():
    model = tiny_model("hubert")
    scores = HP.head_scores_l1(model)
    for l, layer in enumerate(model.encoder.transformer.layers):
        att = layer.attention
        for h in range(HEADS):
            rows = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
            expected = 0.0
            for proj in (att.q_proj, att.k_proj, att.v_proj):
                expected += float(proj.weight.detach()[rows].double().abs().sum()) + float(proj.bias.detach()[rows].double().abs().sum())
            assert float(scores[l][h]) == pytest.approx(expected, rel=1e-12)
    # out_proj is not part of the score.
    with torch.no_grad():
        model.encoder.transformer.layers[0].attention.out_proj.weight.mul_(10.0)
    assert torch.equal(HP.head_scores_l1(model)[0], scores[0])


def _loss_fn(model, batch):
    x, lengths, target = batch
    out, frames = model(x, lengths)
    valid = (torch.arange(out.shape[1])[None, :] < frames[:, None]).to(out.dtype)
    return (((out * target[: out.shape[1]]).sum(-1) ** 2) * valid).sum() / valid.sum()


def _batches(dtype):
    g = torch.Generator().manual_seed(5)
    target = torch.randn(64, D, generator=g, dtype=torch.float64).to(dtype)
    return [
        (torch.randn(2, 600, generator=g, dtype=torch.float64).to(dtype), torch.tensor([600, 460]), target),
        (torch.randn(1, 520, generator=g, dtype=torch.float64).to(dtype), torch.tensor([520]), target),  # last batch of 1
    ]


def _per_frame_contributions(model, batch):
    """dL/dm[b, t, h] for an explicit multiplier m = 1 on each head's context, by autograd."""
    handles, gates = [], {}
    for l, layer in enumerate(model.encoder.transformer.layers):
        if layer.attention is None:
            continue

        def hook(module, args, l=l, H=layer.attention.num_heads):
            ctx = args[0]
            B, T, _ = ctx.shape
            gate = torch.ones(B, T, H, 1, dtype=ctx.dtype, requires_grad=True)
            gates[l] = gate
            return ((ctx.view(B, T, H, -1) * gate).view(B, T, -1),)

        handles.append(layer.attention.out_proj.register_forward_pre_hook(hook))
    loss = _loss_fn(model, batch)
    grads = torch.autograd.grad(loss, list(gates.values()))
    for h in handles:
        h.remove()
    return {l: g.squeeze(-1) for l, g in zip(gates, grads)}  # (B, T, H)


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_data_driven_importance_matches_slow_brute_force(family):
    model = tiny_model(family).double()
    batches = _batches(torch.float64)
    contributions = [_per_frame_contributions(model, batch) for batch in batches]
    # Finite-difference spot checks of the per-frame contributions themselves.
    att = model.encoder.transformer.layers[1].attention
    for (b, t, h) in [(0, 3, 2), (1, 10, 0)]:
        def scaled(module, args, eps):
            ctx = args[0].clone()
            ctx[b, t, h * HEAD_DIM:(h + 1) * HEAD_DIM] *= 1.0 + eps
            return (ctx,)

        values = []
        for eps in (1e-6, -1e-6):
            handle = att.out_proj.register_forward_pre_hook(lambda m, a, e=eps: scaled(m, a, e))
            with torch.no_grad():
                values.append(float(_loss_fn(model, batches[0])))
            handle.remove()
        fd = (values[0] - values[1]) / 2e-6
        assert fd == pytest.approx(float(contributions[0][1][b, t, h]), rel=1e-5, abs=1e-9)
    # Slow loop: |.| per (utterance, frame), summed, averaged over batches.
    raw = {}
    after_sum = {}
    for l in range(LAYERS):
        scores, summed = [], []
        for h in range(HEADS):
            total, total_after_sum = 0.0, 0.0
            for contrib in contributions:
                B, T, _ = contrib[l].shape
                for b in range(B):
                    total_after_sum += abs(sum(float(contrib[l][b, t, h]) for t in range(T)))
                    for t in range(T):
                        total += abs(float(contrib[l][b, t, h]))
            scores.append(total / len(batches))
            summed.append(total_after_sum / len(batches))
        raw[l] = torch.tensor(scores, dtype=torch.float64)
        after_sum[l] = torch.tensor(summed, dtype=torch.float64)
    for p in model.parameters():
        p.grad = None
    unnormalised = HP.accumulate_head_importance(model, _loss_fn, batches, normalize_exponent=None)
    normalised = HP.accumulate_head_importance(model, _loss_fn, batches)
    l1_normalised = HP.accumulate_head_importance(model, _loss_fn, batches, normalize_exponent=1.0)
    assert all(p.grad is None for p in model.parameters())  # training gradients untouched
    for l in range(LAYERS):
        torch.testing.assert_close(unnormalised[l], raw[l], rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(normalised[l], raw[l] / raw[l].norm(), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(l1_normalised[l], raw[l] / raw[l].sum(), rtol=1e-10, atol=1e-14)
        # The rule matters: |sum over time| would give clearly different scores.
        assert float(((after_sum[l] - raw[l]) / raw[l]).abs().max()) > 1e-2


def test_select_heads_strategies():
    scores = {0: torch.tensor([0.1, 0.2, 0.3, 0.4]), 1: torch.tensor([5.0, 6.0, 7.0, 8.0]), 2: torch.tensor([1.0, 9.0, 2.0, 3.0])}
    # by_whole protects each layer's best head: layer 0's 0.4 survives although 1.0 is larger.
    assert HP.select_heads(scores, 4, "by_whole") == {0: [0, 1, 2], 2: [0]}
    assert HP.select_heads(scores, 3, "by_layer") == {0: [0], 1: [0], 2: [0]}
    assert HP.select_heads(scores, 6, "by_layer") == {0: [0, 1], 1: [0, 1], 2: [0, 2]}
    ties = {0: torch.tensor([1.0, 1.0, 1.0]), 1: torch.tensor([2.0, 1.0, 1.0])}
    assert HP.select_heads(ties, 2, "by_layer") == {0: [0], 1: [1]}
    assert HP.select_heads(ties, 3, "by_whole") == {0: [1, 2], 1: [1]}
    with pytest.raises(ValueError):
        HP.select_heads(scores, 4, "by_layer")
    with pytest.raises(ValueError):
        HP.select_heads(scores, 10, "by_whole")


def _zero_heads(model, heads):
    """Copy whose out_proj columns of ``heads`` are zero (whole block zeroed if all heads go)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for l, hs in heads.items():
            att = ref.encoder.transformer.layers[l].attention
            for h in hs:
                target = att.out_proj.down.weight if isinstance(att.out_proj, LR.LowRankLinear) else att.out_proj.weight
                target[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0.0
            if len(hs) == att.num_heads:
                LR.linear_bias(att.out_proj).zero_()
    return ref


@pytest.mark.parametrize("family,heads", [
    ("hubert", {0: [1], 1: [0, 3], 2: [0, 1, 2, 3]}),
    ("wavlm", {0: [0, 1, 2, 3], 1: [2], 2: [0, 3]}),  # layer 0 owns WavLM's bucket embedding
])
def test_remove_heads_equals_zeroed_heads_and_rebuilds(family, heads):
    model = tiny_model(family)
    reference = outputs(_zero_heads(model, heads))
    before = M.count_params(model)
    structure = HP.remove_heads(model, heads)
    kept = [HEADS - len(heads.get(l, [])) for l in range(LAYERS)]
    assert structure["num_heads"] == kept
    assert structure["use_attention"] == [k > 0 for k in kept]
    assert max_abs_diff(outputs(model), reference) < 1e-5
    removed = sum(len(v) for v in heads.values())
    # A block left without heads also drops out_proj's bias (and WavLM's gate parameters).
    block_rest = D + ((HEAD_DIM * 8 + 8) + HEADS if family == "wavlm" else 0)
    assert M.count_params(model) == before - removed * HP.head_params(D, HEAD_DIM) - block_rest
    assert M.count_params(model) == int(num_params(model, "exact"))
    if family == "wavlm":
        assert structure["remaining_heads"] == [[], [0, 1, 3], [1, 2]]
        assert model.config["encoder_remaining_heads"] == [[], [0, 1, 3], [1, 2]]
        assert model.encoder.transformer.rel_attn_embed is not None
    else:
        assert structure["remaining_heads"] is None
        assert model.config["encoder_num_heads"] == kept
    assert model.config["encoder_use_attention"] == [k > 0 for k in kept]
    assert max_abs_diff(outputs(rebuild(model)), outputs(model)) == 0.0


@pytest.mark.parametrize("metric,strategy,per_step", [("l1", "by_layer", 3), ("data-driven", "by_whole", 2)])
def test_head_pruning_steps_follow_the_parameter_schedule(metric, strategy, per_step):
    model = tiny_model("hubert")
    start = M.count_params(model)
    batches = _batches(torch.float32)
    for k in range(1, 4):
        removed, _, structure = HP.prune_heads(model, per_step, metric, strategy, _loss_fn, batches)
        assert sum(len(v) for v in removed.values()) == per_step
        assert sum(structure["num_heads"]) == LAYERS * HEADS - k * per_step
        assert M.count_params(model) == start - k * per_step * HP.head_params(D, HEAD_DIM)
        assert M.count_params(model) == int(num_params(model, "exact"))
    if strategy == "by_layer":
        assert structure["num_heads"] == [1, 1, 1]
    assert max_abs_diff(outputs(rebuild(model)), outputs(model)) == 0.0


def test_structural_ops_refuse_masked_layers():
    model = tiny_model("hubert")
    WP.attach_masks(model)
    with pytest.raises(ValueError, match="fold"):
        HP.remove_heads(model, {0: [0]})
    with pytest.raises(ValueError, match="fold"):
        RP.remove_rows(model, {0: [0]})


# ============================================================================================
# Row pruning
# ============================================================================================


def test_ffn_unit_scores_match_hand_computation():
    model = tiny_model("wavlm").requires_grad_(False)
    scores = RP.ffn_unit_scores(model)
    for l, layer in enumerate(model.encoder.transformer.layers):
        ffn = layer.feed_forward
        for i in range(FFN):
            expected = (float(ffn.intermediate_dense.weight[i].double().abs().sum()) + abs(float(ffn.intermediate_dense.bias[i]))
                        + float(ffn.output_dense.weight[:, i].double().abs().sum()))
            assert float(scores[l][i]) == pytest.approx(expected, rel=1e-12)
    lowest = RP.select_rows(scores, 5)
    for l in range(LAYERS):
        chosen = scores[l][lowest[l]]
        others = scores[l][[i for i in range(FFN) if i not in lowest[l]]]
        assert float(chosen.max()) <= float(others.min())


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_remove_rows_equals_zeroed_units_and_rebuilds(family):
    model = tiny_model(family)
    rows = {0: [0, 5, 23], 1: list(range(FFN)), 2: [7]}
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for l, units in rows.items():
            ffn = ref.encoder.transformer.layers[l].feed_forward
            ffn.output_dense.weight[:, units] = 0.0
            if len(units) == FFN:
                ffn.output_dense.bias.zero_()
    before = M.count_params(model)
    structure = RP.remove_rows(model, rows)
    assert structure["ff_interm_features"] == [21, 0, 23] and structure["use_feed_forward"] == [True, False, True]
    assert model.config["encoder_ff_interm_features"] == [21, 0, 23]
    assert model.config["encoder_use_feed_forward"] == [True, False, True]
    assert max_abs_diff(outputs(model), outputs(ref)) < 1e-5
    assert M.count_params(model) == before - 28 * RP.unit_params(D) - D  # + the dropped block's output bias
    assert M.count_params(model) == int(num_params(model, "exact"))
    assert max_abs_diff(outputs(rebuild(model)), outputs(model)) == 0.0


def test_row_pruning_steps_follow_the_parameter_schedule():
    model = tiny_model("hubert")
    start = M.count_params(model)
    for k in range(1, 4):
        removed, scores, structure = RP.prune_rows(model, 5)
        assert structure["ff_interm_features"] == [FFN - 5 * k] * LAYERS
        assert M.count_params(model) == start - k * LAYERS * 5 * RP.unit_params(D) == int(num_params(model, "exact"))
    assert max_abs_diff(outputs(rebuild(model)), outputs(model)) == 0.0


# ============================================================================================
# Low rank
# ============================================================================================


def test_low_rank_linear_full_rank_exact_and_truncation_optimal():
    torch.manual_seed(0)
    linear = nn.Linear(20, 12).requires_grad_(False)
    x = torch.randn(7, 20)
    full = LR.LowRankLinear.from_linear(linear, 12)
    with torch.no_grad():
        assert float((full(x) - linear(x)).abs().max()) <= 1e-5
    assert [n for n, _ in full.named_parameters()] == ["down.weight", "up.weight", "up.bias"]
    S_ = torch.linalg.svdvals(linear.weight.detach().double())
    for r in (1, 5):
        approx = LR.LowRankLinear.from_linear(linear, r).requires_grad_(False)
        error = float(((approx.dense_weight().double() - linear.weight.double()) ** 2).sum())
        assert error == pytest.approx(float((S_[r:] ** 2).sum()), rel=1e-5)  # Eckart-Young
        # Balanced factors: both carry sqrt(sigma).
        torch.testing.assert_close(approx.up.weight.double().norm(dim=0) ** 2, S_[:r], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(approx.down.weight.double().norm(dim=1) ** 2, S_[:r], rtol=1e-5, atol=1e-6)


def test_factorize_fixed_rank_only_where_it_saves():
    model = tiny_model("hubert")
    before_params, before_macs = M.count_params(model), M.count_linear_macs(model, 1200)
    assert before_macs == int(num_macs(model, 1200, "exact"))
    # Attention 32x32 saves only for r <= 15; FFN 32x24 for r <= 13.
    ranks = LR.factorize(model, LR.FFN_PATTERNS + LR.ATTENTION_PATTERNS, rank=14)
    assert set(ranks) == {f"encoder.transformer.layers.{l}.attention.{p}" for l in range(LAYERS) for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    saved = len(ranks) * (D * D - 14 * 2 * D)
    assert M.count_params(model) == before_params - saved
    frames = int(model.num_frames(torch.tensor([1200])))
    assert M.count_linear_macs(model, 1200) == before_macs - frames * saved
    assert LR.low_rank_structure(model) == ranks


def test_factorize_energy_rule():
    model = tiny_model("wavlm")
    linears = {p: m.weight.detach().double().clone() for p, m in model.named_modules() if p.endswith("intermediate_dense")}
    ranks = LR.factorize(model, ["*intermediate_dense"], energy=0.6)
    for path, weight in linears.items():
        power = torch.linalg.svdvals(weight) ** 2
        expected = next(r for r in range(1, power.numel() + 1) if float(power[:r].sum() / power.sum()) >= 0.6)
        assert ranks[path] == expected and expected < power.numel()


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_factorize_budget_is_respected_maximal_and_round_trips(family):
    model = tiny_model(family)
    patterns = LR.FFN_PATTERNS + LR.ATTENTION_PATTERNS
    dense = {p: m for p, m in model.named_modules() if type(m) is nn.Linear and LR._matches(p, patterns)}
    budget = M.count_params(model) - 6000
    # Independent slow search: every candidate energy level, sizes from scratch.
    spectra = {p: torch.linalg.svdvals(m.weight.detach().double()) ** 2 for p, m in dense.items()}
    # Full rank holds all the energy (last value exactly 1).
    cumulative = {p: (s.cumsum(0) / s.sum()).tolist()[:-1] + [1.0] for p, s in spectra.items()}
    fixed = M.count_params(model) - sum(m.in_features * m.out_features for m in dense.values())
    best = None
    for level in sorted({v for c in cumulative.values() for v in c}):
        ranks = {p: next(i + 1 for i, v in enumerate(c) if v >= level) for p, c in cumulative.items()}
        size = fixed
        for p, r in ranks.items():
            i, o = dense[p].in_features, dense[p].out_features
            size += r * (i + o) if r * (i + o) < i * o else i * o
        if size <= budget:
            best = ({p: r for p, r in ranks.items() if r * (dense[p].in_features + dense[p].out_features) < dense[p].in_features * dense[p].out_features}, size)
    reference = outputs(model)
    ranks = LR.factorize(model, patterns, param_budget=budget)
    assert (ranks, M.count_params(model)) == best
    assert M.count_params(model) <= budget
    assert max_abs_diff(outputs(model), reference) > 1e-4  # it is an approximation
    rebuilt = rebuild(model, ranks)
    assert max_abs_diff(outputs(rebuilt), outputs(model)) == 0.0
    with pytest.raises(ValueError, match="rank-1"):
        LR.factorize(tiny_model(family), patterns, param_budget=1000)


def test_structured_pruning_on_factorised_projections():
    model = tiny_model("hubert")
    ranks = LR.factorize(model, LR.ATTENTION_PATTERNS + LR.FFN_PATTERNS, rank=6)
    heads = {0: [2], 2: [0, 1]}
    reference = outputs(_zero_heads(model, heads))
    HP.remove_heads(model, heads)
    assert max_abs_diff(outputs(model), reference) < 1e-5
    RP.prune_rows(model, 4)
    assert max_abs_diff(outputs(rebuild(model, ranks)), outputs(model)) == 0.0
    WP.prune_to(model, 0.5)  # factor matrices join the weight-pruning pool
    assert WP.pool_zeros(model) == int(0.5 * WP.pool_size(model) + 0.5)


# ============================================================================================
# Locating the transformer, structure hooks, counting
# ============================================================================================


class MelLike(nn.Module):
    """A MelHuBERT-shaped owner of a Transformer that keeps its own config."""

    def __init__(self, transformer):
        super().__init__()
        self.encoder = transformer
        self.seen = []

    def update_layer_structure(self, structure):
        self.seen.append(structure)


def test_find_transformer_wrappers_and_structure_hooks():
    model = tiny_model("hubert")
    wrapper = nn.ModuleDict({"student": model})
    RP.remove_rows(wrapper, {1: [0, 1]})
    assert model.config["encoder_ff_interm_features"] == [FFN, FFN - 2, FFN]
    with pytest.raises(ValueError, match="several transformers"):
        M.find_transformer(nn.ModuleDict({"a": tiny_model("hubert"), "b": tiny_model("hubert")}))
    mel = MelLike(tiny_model("wavlm").encoder.transformer)
    structure = HP.remove_heads(mel, {2: [1]})
    assert mel.seen == [structure] and structure["num_heads"] == [4, 4, 3]
    assert M.find_transformer_path(model)[0] == "encoder.transformer"


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_hook_macs_equal_structural_formula(family):
    model = tiny_model(family)
    HP.remove_heads(model, {1: [0, 2]})
    RP.remove_rows(model, {0: [3]})
    assert M.count_linear_macs(model, 1200) == int(num_macs(model, 1200, "exact"))
    assert M.count_params(model) == int(num_params(model, "exact"))


# ============================================================================================
# MelHuBERT (the colleague's model on the same Transformer): the ops work unchanged
# ============================================================================================


def test_ops_on_melhubert_rebuild_from_its_config():
    mel_model = pytest.importorskip("wav2vec2.melhubert")
    torch.manual_seed(0)
    config = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=24,
                  encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, num_cluster=10, mask_prob=0.7,
                  mask_length=5, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    model = mel_model.MelHuBERTModel(config).eval()
    g = torch.Generator().manual_seed(2)
    mel = torch.randn(2, 30, 80, generator=g)
    pad = (torch.arange(30)[None, :] < torch.tensor([30, 22])[:, None]).float()
    labels = torch.randint(0, 10, (2, 30), generator=g).masked_fill(pad == 0, -100)
    frame_mask = torch.rand(2, 30, generator=g) < 0.5

    def loss_fn(m, batch):
        feat, pad_mask, label = batch
        _, logit_m, _, label_m, *_ = m(feat, pad_mask, label, teacher_mask_indices=frame_mask[: feat.shape[0], : feat.shape[1]])
        return torch.nn.functional.cross_entropy(logit_m, label_m)

    batches = [(mel, pad, labels), (mel[:1, :25], pad[:1, :25], labels[:1, :25])]
    start = M.count_params(model)
    scores = HP.accumulate_head_importance(model, loss_fn, batches)
    assert sorted(scores) == [0, 1] and all(s.shape == (HEADS,) for s in scores.values())
    HP.remove_heads(model, HP.select_heads(scores, 2, "by_whole"))
    RP.prune_rows(model, 4)
    assert M.count_params(model) == start - 2 * HP.head_params(D, HEAD_DIM) - 2 * 4 * RP.unit_params(D)
    ranks = LR.factorize(model, LR.FFN_PATTERNS, rank=3)
    assert len(ranks) == 4
    with torch.no_grad():
        reference = model(mel, pad, no_pred=True)[0]
    rebuilt = mel_model.MelHuBERTModel(model.current_config()).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert float((rebuilt(mel, pad, no_pred=True)[0] - reference).abs().max()) == 0.0
    WP.prune_to(model, 0.5)
    assert WP.pool_zeros(model) == int(0.5 * WP.pool_size(model) + 0.5)
