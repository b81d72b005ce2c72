"""Profiler: MACs by hand, formula == hooks, ratios of a pruned model, the table, every model family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evaluation.profiler import (
    count_macs,
    format_table,
    macs_method,
    profile_upstream,
    read_json,
    table_rows,
    write_json,
)
from evaluation.upstream import Upstream, UpstreamError, UpstreamInfo, load_upstream
from helpers import set_gate, tiny_config, tiny_model
from wav2vec2.checkpoint import save_model
from wav2vec2.counting import num_macs
from wav2vec2.model import wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")


def wrap(model: torch.nn.Module, name: str = "m") -> Upstream:
    return Upstream(model.eval(), UpstreamInfo(name, "test", "wav2vec2"), frame_period_ms=20)


def counts_only(upstream: Upstream, seconds: float = 0.5, **kwargs):
    return profile_upstream(upstream, seconds=seconds, cpu=False, gpu=False, **kwargs)


# ------------------------------------------------------------------------------------------
# MACs
# ------------------------------------------------------------------------------------------


def test_macs_of_a_small_config_equal_a_hand_count() -> None:
    config = tiny_config(conv=[[4, 10, 5], [8, 3, 2]], num_layers=1, embed_dim=16, num_heads=2, ff_interm=32,
                         pos_conv_kernel=4, pos_conv_groups=2)
    upstream = wrap(wav2vec2_model(**config))
    n = 400
    # CNN: block 1 has (400 - 10) // 5 + 1 = 79 frames of 1 x 4 x 10 MACs,
    #      block 2 has (79 - 3) // 2 + 1 = 39 frames of 4 x 8 x 3 MACs.
    T = 39
    conv = 79 * 1 * 4 * 10 + T * 4 * 8 * 3  # 3160 + 3744
    projection = T * 8 * 16  # 4992
    # Positional conv: D x (D / groups) x kernel per output frame; even kernel, T frames kept.
    pos_conv = T * 16 * (16 // 2) * 4  # 19968
    # Attention: q, k, v, out are D x (H d) maps; scores q k^T and context p v are T x T x (H d) each.
    attention = 4 * T * 16 * (2 * 8) + 2 * T * T * (2 * 8)  # 39936 + 48672
    ffn = 2 * T * 16 * 32  # 39936
    hand = conv + projection + pos_conv + attention + ffn
    assert hand == 160_408
    assert int(num_macs(upstream.model, n, "exact")) == hand
    assert count_macs(upstream, n, method="formula") == hand
    assert count_macs(upstream, n, method="hooks") == hand


@pytest.mark.parametrize("kwargs", [
    dict(family="hubert"),
    dict(family="wavlm"),
    dict(family="hubert", extractor_mode="layer_norm", layer_norm_first=True),
    dict(family="hubert", prune=("conv", "head", "interm", "attlayer", "ffnlayer")),
])
def test_formula_and_hook_counter_agree(kwargs) -> None:
    model = tiny_model(**kwargs)
    if "prune" in kwargs:  # close some units, then remove them for real
        blocks = model.feature_extractor.conv_layers
        set_gate(blocks[1].hard_concrete, closed=[0, 3, 5])
        layers = model.encoder.transformer.layers
        set_gate(layers[0].attention.hard_concrete_for_heads, closed=[1])
        set_gate(layers[1].feed_forward.hard_concrete_for_intermediate, closed=range(10))
        set_gate(layers[2].attention.hard_concrete_for_layer, closed=[0])
        model.prune()
    upstream = wrap(model)
    assert macs_method(upstream) == "formula"
    for n in (1000, 2345, 4000):
        assert count_macs(upstream, n, method="formula") == count_macs(upstream, n, method="hooks"), n


def pruned_pair():
    """A tiny gated model, and a copy with gates closed and prune() applied."""
    config = tiny_config(prune=("conv", "head", "interm", "attlayer"), num_layers=3, num_heads=4, ff_interm=24)
    torch.manual_seed(0)
    dense = wav2vec2_model(**config).eval()
    pruned = wav2vec2_model(**config).eval()
    pruned.load_state_dict(dense.state_dict())
    blocks, layers = pruned.feature_extractor.conv_layers, pruned.encoder.transformer.layers
    set_gate(blocks[0].hard_concrete, closed=[0, 1, 2, 3])
    set_gate(blocks[2].hard_concrete, closed=[5, 6])
    set_gate(layers[0].attention.hard_concrete_for_heads, closed=[0, 2])
    set_gate(layers[1].attention.hard_concrete_for_layer, closed=[0])
    set_gate(layers[2].feed_forward.hard_concrete_for_intermediate, closed=range(20))
    for model in (dense, pruned):
        for gate in [m for m in model.modules() if type(m).__name__ == "HardConcrete"]:
            if float(gate.log_alpha.detach().min()) > -1:  # untouched gates: fully open
                set_gate(gate)
    dense.prune()
    pruned.prune()
    return dense, pruned


def macs_from_config(config: dict, num_samples: int) -> int:
    """MACs of a (pruned) config computed from its keys alone, independently of the model code."""
    length, in_channels, total = num_samples, 1, 0
    for out_channels, kernel, stride in config["extractor_conv_layer_config"]:
        length = (length - kernel) // stride + 1
        total += length * in_channels * out_channels * kernel
        in_channels = out_channels
    T, D = length, config["encoder_embed_dim"]
    total += T * in_channels * D + T * D * (D // config["encoder_pos_conv_groups"]) * config["encoder_pos_conv_kernel"]
    for heads, use_attention, units, use_ffn in zip(config["encoder_num_heads"], config["encoder_use_attention"],
                                                    config["encoder_ff_interm_features"], config["encoder_use_feed_forward"]):
        inner = heads * config["encoder_head_dim"]
        if use_attention and heads:
            total += 4 * T * D * inner + 2 * T * T * inner
        if use_ffn and units:
            total += 2 * T * D * units
    return total


def test_macs_ratio_of_a_pruned_model_equals_the_ratio_from_its_config() -> None:
    dense, pruned = pruned_pair()
    assert pruned.config["encoder_num_heads"][0] == 2 and not pruned.config["encoder_use_attention"][1]
    seconds = 0.5
    n = int(seconds * 16_000)
    profiles = [counts_only(wrap(dense, "dense"), seconds), counts_only(wrap(pruned, "pruned"), seconds)]
    expected_ratio = macs_from_config(pruned.config, n) / macs_from_config(dense.config, n)
    assert profiles[1].macs == macs_from_config(pruned.config, n)
    header, rows = table_rows(profiles)
    column = header.index("MACs ratio")
    assert float(rows[1][column]) == pytest.approx(expected_ratio, abs=5e-4)
    assert profiles[1].macs_per_second / profiles[0].macs_per_second == pytest.approx(expected_ratio, rel=1e-12)
    assert rows[0][column] == "1.000"


# ------------------------------------------------------------------------------------------
# The table and the JSON
# ------------------------------------------------------------------------------------------


def test_table_of_two_models_has_ratio_columns(tmp_path: Path) -> None:
    dense, pruned = pruned_pair()
    profiles = [profile_upstream(wrap(m, name), seconds=0.5, cpu=True, gpu=False, threads=1, warmup=1, repeats=3)
                for m, name in ((dense, "dense"), (pruned, "pruned"))]
    text = format_table(profiles)
    for column in ("params ratio", "MACs ratio", "cpu speed-up", "cpu RTF", "cpu peak MB"):
        assert column in text
    header, rows = table_rows(profiles)
    assert rows[0][header.index("params ratio")] == "1.000" and rows[0][header.index("cpu speed-up")] == "1.00"
    assert float(rows[1][header.index("params ratio")]) < 1.0
    timing = profiles[1].timing("cpu")
    assert timing is not None and timing.median_s > 0 and timing.rtf == pytest.approx(timing.median_s / 0.5)
    assert timing.peak_memory_mb is not None and timing.peak_memory_mb > 0
    path = write_json(tmp_path / "profile.json", profiles, {"threads": 1})
    assert json.loads(path.read_text())["kind"] == "profile"
    reread = read_json(path)
    assert [p.macs for p in reread] == [p.macs for p in profiles]
    assert format_table(reread) == text
    assert "| model |" in format_table(profiles, markdown=True)


# ------------------------------------------------------------------------------------------
# Every family and compression mode through load_upstream
# ------------------------------------------------------------------------------------------


def test_weight_pruned_model_shows_nonzero_params_but_dense_macs(tmp_path: Path) -> None:
    from methods.ops_weight import fold_masks, prune_to

    dense = tiny_model()
    sparse = tiny_model()
    prune_to(sparse, 0.6)
    masked = counts_only(wrap(sparse, "masked"))
    assert masked.macs_method == "hooks"  # masks: the formula would not see them
    reference = counts_only(wrap(dense, "dense"))
    assert masked.params == reference.params and masked.macs == reference.macs
    assert masked.nonzero_params < 0.75 * masked.params
    assert masked.sparse_macs_per_second is not None and masked.sparse_macs_per_second < masked.macs_per_second
    assert any("MACs and latency do not drop" in note for note in masked.notes)
    # Written with masks (X_orig / X_mask) and reloaded: folded, same nonzeros.
    path = save_model(tmp_path / "masked.pth", sparse)
    loaded = load_upstream(path)
    assert any("folded" in note for note in loaded.info.notes)
    reloaded = counts_only(loaded)
    assert reloaded.nonzero_params == masked.nonzero_params and reloaded.macs == reference.macs
    fold_masks(sparse)
    assert counts_only(wrap(sparse)).nonzero_params == masked.nonzero_params


def test_low_rank_model_counts_its_factors(tmp_path: Path) -> None:
    from wav2vec2.low_rank import factorize

    model = tiny_model()
    reference = counts_only(wrap(model, "dense"))
    ranks = factorize(model, rank=4)
    assert ranks
    low = counts_only(wrap(model, "low-rank"))
    assert low.macs_method == "hooks" and low.macs < reference.macs and low.params < reference.params
    config = dict(model.config, low_rank=ranks)
    torch.save({"state_dict": model.state_dict(), "config": config}, tmp_path / "low_rank.pth")
    loaded = counts_only(load_upstream(tmp_path / "low_rank.pth"))
    assert loaded.macs == low.macs and loaded.params == low.params


def tiny_melhubert(feat_dim: int = 80):
    from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel

    torch.manual_seed(0)
    config = MelHuBERTConfig(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=48, encoder_attention_heads=4,
                             feat_emb_dim=feat_dim, conv_pos=8, conv_pos_groups=4, num_cluster=10)
    return MelHuBERTModel(config).eval()


@pytest.mark.parametrize("feat_dim,period", [(80, 20), (40, 10)])
def test_melhubert_upstream_features_and_profile(tmp_path: Path, feat_dim: int, period: int) -> None:
    from wav2vec2.melhubert_checkpoint import save_checkpoint
    from speech_data.normalize import save_mean_std

    model = tiny_melhubert(feat_dim)
    path = save_checkpoint(tmp_path / "run" / "mel.ckpt", model)
    save_mean_std(tmp_path / "mean-std.npy", torch.stack([torch.full((40,), -3.0), torch.full((40,), 2.0)]).double().numpy())
    upstream = load_upstream(path)
    assert upstream.family == "melhubert" and upstream.frame_period_ms == period
    assert upstream.mel_mean is not None  # found one folder above the checkpoint
    waves = 0.1 * torch.randn(2, 8000, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        states, frames = upstream.layers(waves, lengths)
        alone, _ = upstream.layers(waves[1:, :5000], lengths[1:])
    assert len(states) == 3 and int(frames[1]) == int(upstream.frame_lengths(lengths)[1])
    assert torch.allclose(states[-1][1, : int(frames[1])], alone[-1][0], atol=1e-5), "padding changed the features"
    profile = counts_only(upstream)
    assert profile.macs_method == "hooks" and profile.macs > 0
    assert profile.params == sum(p.numel() for n, p in model.named_parameters() if not n.startswith("final_proj"))


def test_loader_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_upstream(tmp_path / "nothing.pth")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "odd.pth")
    with pytest.raises(UpstreamError, match="odd.pth.*weights"):
        load_upstream(tmp_path / "odd.pth")


def test_bf16_autocast_path_and_fbank_pseudo_model() -> None:
    from evaluation.profiler import time_upstream

    # The GPU path times fp32 and bf16 autocast; the autocast branch itself also runs on CPU.
    timing = time_upstream(wrap(tiny_model()), "cpu", "bf16", seconds=0.25, threads=1, warmup=1, repeats=2)
    assert timing.precision == "bf16" and timing.median_s > 0 and timing.peak_memory_mb is not None
    fbank = load_upstream("fbank")
    with torch.no_grad():
        states, frames = fbank.layers(torch.randn(1, 16_000), torch.tensor([16_000]))
    assert len(states) == 1 and states[0].shape == (1, 49, 80) and int(frames[0]) == 49  # 98 Kaldi frames of 10 ms, stacked
    profile = counts_only(fbank)
    assert profile.params == 0 and profile.macs == 0
