"""Model forward behaviour: factories, extract_features, padding, layer drop, skipped blocks,
pre-/post-norm, config validation, and numerical parity with transformers."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import wav2vec2
from helpers import TINY_CONV, max_abs_diff, tiny_config, tiny_model, waveforms

pytestmark = pytest.mark.usefixtures("single_thread")

# Parameter counts of the unpruned factories, including the 512-element dummy_weight (spec
# §8.1). Each was checked against transformers' HubertModel / Wav2Vec2Model / WavLMModel with
# the same architecture: HF count - masked_spec_embed (D) + 512 equals ours (see
# test_counting.py::test_param_count_matches_transformers for Base models).
FACTORY_PARAMS = {
    "hubert_base": (94_371_456, 12, 768),
    "wav2vec2_base": (94_371_456, 12, 768),
    "wavlm_base_plus": (94_381_680, 12, 768),
    "hubert_large": (315_434_624, 24, 1024),
    "wav2vec2_large": (315_428_480, 24, 1024),
    "wav2vec2_large_lv60k": (315_438_208, 24, 1024),
    "wavlm_large": (315_452_608, 24, 1024),
}


@pytest.mark.parametrize("name", list(FACTORY_PARAMS))
def test_factory_builds_and_runs(name, full_model):
    params, layers, width = FACTORY_PARAMS[name]
    model = full_model(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.num_layers == layers
    assert model.is_wavlm == name.startswith("wavlm")
    # The factory's own config rebuilds the same architecture, also after a JSON round trip.
    rebuilt_config = json.loads(json.dumps(model.config))
    assert rebuilt_config["extractor_conv_layer_config"] == [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    num_samples = 16000  # 1 s
    x = waveforms(1, num_samples, seed=1)
    with torch.inference_mode():
        y, lengths = model(x, torch.tensor([num_samples]))
        states, state_lengths = model.extract_features(x, num_layers=2)
    frames = 49  # floor((16000 - 400) / 320) + 1
    assert y.shape == (1, frames, width)
    assert lengths.tolist() == [frames] and state_lengths is None
    assert len(states) == 3 and all(s.shape == (1, frames, width) for s in states)
    assert torch.isfinite(y).all()


def test_factory_architecture_details(full_model):
    base = full_model("hubert_base")
    fe = base.feature_extractor.conv_layers
    assert [(b.conv.in_channels, b.conv.out_channels, b.kernel_size, b.stride) for b in fe] == (
        [(1, 512, 10, 5)] + [(512, 512, 3, 2)] * 4 + [(512, 512, 2, 2)] * 2
    )
    assert isinstance(fe[0].layer_norm, nn.GroupNorm) and fe[0].layer_norm.num_groups == 512
    assert all(b.layer_norm is None for b in fe[1:]) and all(b.conv.bias is None for b in fe)
    t = base.encoder.transformer
    assert t.layer_norm_first is False and t.layer_drop == 0.05
    pos = t.pos_conv_embed
    assert pos.conv.weight_v.shape == (768, 48, 128) and pos.conv.weight_g.shape == (1, 1, 128) and pos.num_remove == 1
    layer = t.layers[0]
    assert layer.attention.num_heads == 12 and layer.attention.head_dim == 64
    assert layer.feed_forward.interm_features == 3072
    wavlm = full_model("wavlm_base_plus").encoder.transformer
    assert wavlm.layers[0].attention.rel_attn_embed.weight.shape == (320, 12)
    assert all(layer.attention.rel_attn_embed is None for layer in wavlm.layers[1:])
    assert wavlm.layers[5].attention.gru_rel_pos_linear.weight.shape == (8, 64)


def test_large_config_is_prenorm_layer_norm_extractor():
    from wav2vec2.model import hubert_large_config, wav2vec2_large_config, wav2vec2_large_lv60k_config, wavlm_large_config

    for cfg in (hubert_large_config(), wav2vec2_large_lv60k_config(), wavlm_large_config()):
        assert cfg["extractor_mode"] == "layer_norm" and cfg["encoder_layer_norm_first"] is True
        assert cfg["normalize_waveform"] is True
    assert wav2vec2_large_lv60k_config()["extractor_conv_bias"] is True
    ls960 = wav2vec2_large_config()
    assert ls960["extractor_mode"] == "group_norm" and ls960["encoder_layer_norm_first"] is False


# ------------------------------------------------------------------------------------------
# extract_features
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_extract_features_shapes_and_lengths(family):
    model = tiny_model(family)
    x = waveforms(3, 2000)
    lengths = torch.tensor([2000, 1500, 59])
    with torch.no_grad():
        states, out_lengths = model.extract_features(x, lengths)
        partial, _ = model.extract_features(x, lengths, num_layers=1)
    # Conv lengths: 2000 -> 399 -> 199 -> 99 -> 49; 1500 -> 299 -> 149 -> 74 -> 37; 59 -> 10 -> 4 -> 1 -> 0.
    assert out_lengths.tolist() == [49, 37, 0]
    assert len(states) == model.num_layers + 1 == 4
    assert all(s.shape == (3, 49, 32) for s in states)
    # h0 is the projection output with padded frames zeroed.
    assert float(states[0][1, 37:].abs().max()) == 0.0
    # An utterance shorter than the receptive field has no frame; it must not poison the batch.
    assert all(bool(torch.isfinite(s).all()) for s in states)
    assert len(partial) == 2
    torch.testing.assert_close(partial[1], states[1], rtol=0, atol=0)
    with pytest.raises(ValueError):
        model.extract_features(x, lengths, num_layers=5)
    with pytest.raises(ValueError):
        model.extract_features(x, torch.tensor([2000, 1500]))
    with pytest.raises(ValueError):
        model.extract_features(x[0])


@pytest.mark.parametrize(
    "family, extractor_mode, layer_norm_first, normalize_waveform",
    [
        ("hubert", "group_norm", False, False),  # HuBERT / wav2vec2 Base style
        ("hubert", "layer_norm", True, True),  # Large style
        ("hubert", "group_norm", False, True),
        ("wavlm", "group_norm", False, False),  # WavLM Base+
        ("wavlm", "layer_norm", True, True),  # WavLM Large
    ],
)
def test_padding_invariance(family, extractor_mode, layer_norm_first, normalize_waveform):
    model = tiny_model(family, extractor_mode=extractor_mode, layer_norm_first=layer_norm_first, normalize_waveform=normalize_waveform)
    long, short = 2000, 1370
    x = waveforms(2, long, seed=5)
    x[1, short:] = 0.5 * torch.randn(long - short)  # non-zero garbage in the padding
    with torch.no_grad():
        batch_states, batch_lengths = model.extract_features(x, torch.tensor([long, short]))
        batch_out, _ = model(x, torch.tensor([long, short]))
        for lengths in (None, torch.tensor([short])):
            alone_states, _ = model.extract_features(x[1:2, :short], lengths)
            alone_out, _ = model(x[1:2, :short], lengths)
            T = alone_states[0].shape[1]
            assert T == int(batch_lengths[1]) == 33
            diff = max_abs_diff([s[0] for s in alone_states], [s[1, :T] for s in batch_states])
            assert diff <= 1e-5, diff
            assert float((alone_out[0] - batch_out[1, :T]).abs().max()) <= 1e-5
        # The long utterance is unaffected by its padded neighbour too.
        alone_states, _ = model.extract_features(x[0:1], None)
        assert max_abs_diff([s[0] for s in alone_states], [s[0] for s in batch_states]) <= 1e-5
    # The padding is actually seen by the model: without lengths the short one changes.
    with torch.no_grad():
        unmasked, _ = model.extract_features(x, None)
    assert float((unmasked[-1][1, :33] - batch_states[-1][1, :33]).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------
# Layer drop, dropout, determinism
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_layer_drop_only_in_training_forward(layer_norm_first):
    model = tiny_model("hubert", layer_norm_first=layer_norm_first, extractor_mode="layer_norm" if layer_norm_first else "group_norm", encoder_layer_drop=1.0)
    x = waveforms(2, 2000)
    t = model.encoder.transformer
    with torch.no_grad():
        model.train()
        train_out, _ = model(x)
        train_states, _ = model.extract_features(x)
        h0 = train_states[0]
        # Every layer skipped: only the positional conv and the transformer LayerNorm remain.
        expected = t.layer_norm(h0 + t.pos_conv_embed(h0))
        torch.testing.assert_close(train_out, expected, rtol=0, atol=1e-6)
        model.eval()
        eval_out, _ = model(x)
        eval_states, _ = model.extract_features(x)
    # extract_features never drops layers (same in train and eval: dropouts are 0 here).
    assert len(train_states) == 4
    assert max_abs_diff(train_states, eval_states) == 0.0
    assert float((train_states[3] - train_states[2]).abs().max()) > 1e-2
    # Eval forward runs every layer.
    last = t.layer_norm(eval_states[-1]) if layer_norm_first else eval_states[-1]
    torch.testing.assert_close(eval_out, last, rtol=0, atol=1e-6)
    assert float((eval_out - train_out).abs().max()) > 1e-2


def test_eval_deterministic_train_stochastic():
    model = tiny_model(
        "hubert", encoder_layer_drop=0.5, encoder_dropout=0.1, encoder_attention_dropout=0.1,
        encoder_ff_interm_dropout=0.1, encoder_projection_dropout=0.1,
    )
    x = waveforms(1, 2000)
    torch.manual_seed(0)
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x)
        fa, _ = model.extract_features(x)
        fb, _ = model.extract_features(x)
        model.train()
        c, _ = model(x)
        d, _ = model(x)
    assert torch.equal(a, b)
    assert max_abs_diff(fa, fb) == 0.0
    assert not torch.equal(c, d)


def test_layer_drop_rate_is_per_layer():
    """With p = 0.5 about half the layers run in a training forward."""
    model = tiny_model("hubert", num_layers=8, encoder_layer_drop=0.5).train()
    calls = []
    for layer in model.encoder.transformer.layers:
        layer.register_forward_hook(lambda *args: calls.append(1))
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(50):
            model(waveforms(1, 400))
    ran = len(calls) / (50 * 8)
    assert 0.4 < ran < 0.6, ran


# ------------------------------------------------------------------------------------------
# Skipped blocks, pre-/post-norm
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer_norm_first", [False, True])
@pytest.mark.parametrize("block", ["attention", "feed_forward"])
def test_skipped_block_equals_zeroed_block(block, layer_norm_first):
    """A layer built without attention / FFN computes what the full layer computes when that
    block outputs exactly zero (its output projection zeroed): in post-norm layers the block's
    LayerNorm is still applied; in pre-norm layers the residual branch simply vanishes."""
    kwargs = dict(layer_norm_first=layer_norm_first, extractor_mode="layer_norm" if layer_norm_first else "group_norm")
    full = tiny_model("hubert", **kwargs)
    key = "encoder_use_attention" if block == "attention" else "encoder_use_feed_forward"
    skipped = tiny_model("hubert", seed=1, **kwargs, **{key: [True, False, True]})
    layer = skipped.encoder.transformer.layers[1]
    assert getattr(layer, block) is None
    result = skipped.load_state_dict(full.state_dict(), strict=False)
    assert result.missing_keys == []
    prefix = f"encoder.transformer.layers.1.{block}."
    assert result.unexpected_keys and all(k.startswith(prefix) for k in result.unexpected_keys)
    out_proj = full.encoder.transformer.layers[1].attention.out_proj if block == "attention" else full.encoder.transformer.layers[1].feed_forward.output_dense
    x = waveforms(2, 2000)
    with torch.no_grad():
        before, _ = full.extract_features(x)
        out_proj.weight.zero_()
        out_proj.bias.zero_()
        zeroed, _ = full.extract_features(x)
        zeroed_out, _ = full(x)
        got, _ = skipped.extract_features(x)
        got_out, _ = skipped(x)
    assert max_abs_diff(got, zeroed) <= 1e-6
    torch.testing.assert_close(got_out, zeroed_out, rtol=0, atol=1e-6)
    assert float((before[2] - got[2]).abs().max()) > 1e-2  # the block did matter
    if not layer_norm_first:
        # Post-norm: the output of layer 1 is still a LayerNorm output (the LN ran).
        ln = skipped.encoder.transformer.layers[1].final_layer_norm
        h = (got[2] - ln.bias) / ln.weight
        torch.testing.assert_close(h.mean(-1), torch.zeros_like(h.mean(-1)), rtol=0, atol=1e-5)


def test_layer_without_both_blocks():
    model = tiny_model("hubert", encoder_use_attention=[True, False, True], encoder_use_feed_forward=[True, False, True])
    layer = model.encoder.transformer.layers[1]
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = layer.final_layer_norm(layer.layer_norm(x))
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
    pre = tiny_model("hubert", layer_norm_first=True, encoder_use_attention=[True, False, True], encoder_use_feed_forward=[True, False, True])
    with torch.no_grad():
        torch.testing.assert_close(pre.encoder.transformer.layers[1](x), x, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_prenorm_final_layer_norm_only_in_forward(family):
    model = tiny_model(family, extractor_mode="layer_norm", layer_norm_first=True)
    x = waveforms(2, 2000)
    with torch.no_grad():
        out, _ = model(x)
        states, _ = model.extract_features(x)
    final = model.encoder.transformer.layer_norm
    torch.testing.assert_close(out, final(states[-1]), rtol=0, atol=1e-6)
    assert float((out - states[-1]).abs().max()) > 1e-1
    # No LN before the layers either: layer 0 sees h0 + pos_conv(h0), unnormalised.
    t = model.encoder.transformer
    with torch.no_grad():
        h0 = states[0]
        pos_bias = t.position_bias(h0.shape[1], h0.device)
        manual = t.layers[0](h0 + t.pos_conv_embed(h0), None, pos_bias)
    torch.testing.assert_close(states[1], manual, rtol=0, atol=1e-6)


def test_postnorm_layer_norm_before_layers():
    model = tiny_model("hubert")
    x = waveforms(1, 2000)
    t = model.encoder.transformer
    with torch.no_grad():
        states, _ = model.extract_features(x)
        out, _ = model(x)
        h0 = states[0]
        manual = t.layers[0](t.layer_norm(h0 + t.pos_conv_embed(h0)))
    torch.testing.assert_close(states[1], manual, rtol=0, atol=1e-6)
    torch.testing.assert_close(out, states[-1], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------
# Config handling
# ------------------------------------------------------------------------------------------


def test_conv_config_tuples_or_json_lists():
    cfg_lists = tiny_config("hubert")
    cfg_tuples = copy.deepcopy(cfg_lists)
    cfg_tuples["extractor_conv_layer_config"] = tuple(tuple(layer) for layer in TINY_CONV)
    cfg_json = json.loads(json.dumps(cfg_lists))
    models = []
    for cfg in (cfg_lists, cfg_tuples, cfg_json):
        torch.manual_seed(0)
        models.append(wav2vec2.wav2vec2_model(**cfg).eval())
    for model in models:
        assert model.config["extractor_conv_layer_config"] == [list(layer) for layer in TINY_CONV]
        assert [b.conv.out_channels for b in model.feature_extractor.conv_layers] == [16, 12, 16, 8]
        json.dumps(model.config)  # stored config is JSON-serialisable
    x = waveforms(1, 1000)
    with torch.no_grad():
        outs = [m(x)[0] for m in models]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    # None means the default 7-block extractor.
    cfg_none = dict(cfg_lists, extractor_conv_layer_config=None)
    model = wav2vec2.wav2vec2_model(**cfg_none)
    assert len(model.feature_extractor.conv_layers) == 7


def test_per_layer_scalars_broadcast():
    cfg = tiny_config("hubert", encoder_num_heads=2, encoder_ff_interm_features=10, encoder_use_attention=True)
    model = wav2vec2.wav2vec2_model(**cfg)
    assert [layer.attention.num_heads for layer in model.encoder.transformer.layers] == [2, 2, 2]
    assert [layer.feed_forward.interm_features for layer in model.encoder.transformer.layers] == [10, 10, 10]
    assert model.encoder.transformer.layers[0].attention.q_proj.weight.shape == (2 * 8, 32)


def test_heterogeneous_layers():
    cfg = tiny_config("hubert", encoder_num_heads=[4, 1, 3], encoder_ff_interm_features=[5, 24, 1])
    model = wav2vec2.wav2vec2_model(**cfg).eval()
    layers = model.encoder.transformer.layers
    assert [layer.attention.q_proj.out_features for layer in layers] == [32, 8, 24]
    assert [layer.attention.out_proj.in_features for layer in layers] == [32, 8, 24]
    assert [layer.feed_forward.interm_features for layer in layers] == [5, 24, 1]
    with torch.no_grad():
        assert model(waveforms(2, 1000))[0].shape == (2, 24, 32)


@pytest.mark.parametrize(
    "family, change, key",
    [
        ("hubert", {"encoder_num_heads": [4, 4]}, "encoder_num_heads"),
        ("hubert", {"encoder_ff_interm_features": [24] * 4}, "encoder_ff_interm_features"),
        ("hubert", {"encoder_use_attention": [True, False]}, "encoder_use_attention"),
        ("hubert", {"encoder_use_feed_forward": [True] * 5}, "encoder_use_feed_forward"),
        ("hubert", {"extractor_mode": "batch_norm"}, "extractor_mode"),
        ("hubert", {"extractor_conv_layer_config": [[16, 10, 5], [12, 3]]}, "extractor_conv_layer_config"),
        ("hubert", {"encoder_total_num_heads": 4}, "encoder_total_num_heads"),  # WavLM key without remaining heads
        ("hubert", {"encoder_num_heads": None}, "encoder_num_heads"),  # missing heads
        ("hubert", {"encoder_head_dim": None}, "encoder_head_dim"),
        ("wavlm", {"encoder_total_num_heads": None}, "encoder_total_num_heads"),
        ("wavlm", {"encoder_remaining_heads": [[0, 1, 2, 3]] * 2}, "encoder_remaining_heads"),
    ],
)
def test_bad_config_raises_value_error_naming_key(family, change, key):
    cfg = tiny_config(family, **change)
    with pytest.raises(ValueError, match=key):
        wav2vec2.wav2vec2_model(**cfg)


@pytest.mark.parametrize("remaining", [[0, 1, 7], [0, 1, 1], [-1, 2]])
def test_wavlm_remaining_heads_are_validated(remaining):
    """Kept head indices must be distinct and < encoder_total_num_heads; a bad list must fail
    at build time with the key named, not deep inside the first forward (index_select)."""
    cfg = tiny_config("wavlm")
    cfg["encoder_remaining_heads"][1] = remaining
    with pytest.raises(ValueError, match="encoder_remaining_heads"):
        wav2vec2.wav2vec2_model(**cfg)


def test_missing_required_key_is_type_error():
    cfg = tiny_config("hubert")
    del cfg["encoder_embed_dim"]
    with pytest.raises(TypeError, match="encoder_embed_dim"):
        wav2vec2.wav2vec2_model(**cfg)


# ------------------------------------------------------------------------------------------
# Numerical parity with transformers (independent implementation of the same architectures)
# ------------------------------------------------------------------------------------------


def _ours_to_hf(state_dict: dict) -> dict:
    out = {}
    for key, value in state_dict.items():
        if key == "feature_extractor.dummy_weight":
            continue
        if key.startswith("encoder.feature_projection."):
            key = key[len("encoder."):]
        elif key.startswith("encoder.transformer."):
            key = "encoder." + key[len("encoder.transformer."):]
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        out[key] = value
    return out


@pytest.mark.parametrize(
    "family, extractor_mode, layer_norm_first",
    [("hubert", "group_norm", False), ("hubert", "layer_norm", True), ("wavlm", "group_norm", False), ("wavlm", "layer_norm", True)],
)
def test_matches_transformers(family, extractor_mode, layer_norm_first):
    transformers = pytest.importorskip("transformers")
    model = tiny_model(family, extractor_mode=extractor_mode, layer_norm_first=layer_norm_first)
    kwargs = dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=24,
        conv_dim=[layer[0] for layer in TINY_CONV], conv_kernel=[layer[1] for layer in TINY_CONV],
        conv_stride=[layer[2] for layer in TINY_CONV], num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        feat_extract_norm="group" if extractor_mode == "group_norm" else "layer", do_stable_layer_norm=layer_norm_first,
        conv_bias=extractor_mode == "layer_norm", hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0,
    )
    if family == "hubert":
        hf = transformers.HubertModel(transformers.HubertConfig(**kwargs))
    else:
        hf = transformers.WavLMModel(transformers.WavLMConfig(num_buckets=32, max_bucket_distance=100, **kwargs))
    hf.eval()
    missing, unexpected = hf.load_state_dict(_ours_to_hf(model.state_dict()), strict=False)
    assert unexpected == [] and set(missing) <= {"masked_spec_embed"}
    x = waveforms(2, 2000, seed=3)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        states, _ = model.extract_features(x)
        out, _ = model(x)
    torch.testing.assert_close(out, ref.last_hidden_state, rtol=0, atol=1e-5)
    # HF hidden_states[0] is taken after the positional conv (and LN for post-norm); ours is the
    # projection output, so compare the layer outputs h1..h(L-1) and, for post-norm, hL.
    last = len(states) if not layer_norm_first else len(states) - 1
    for i in range(1, last):
        torch.testing.assert_close(states[i], ref.hidden_states[i], rtol=0, atol=1e-5)
