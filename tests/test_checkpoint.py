"""Model files: DPHuBERT-style {"state_dict", "config"} files load strictly,
newer weight-norm names are accepted, and every mismatch is a CheckpointError naming the key
and the file."""

from __future__ import annotations

import collections
import re

import pytest
import torch

import wav2vec2
from helpers import max_abs_diff, tiny_config, tiny_model, waveforms
from wav2vec2 import CheckpointError, load_model, save_model, summary
from wav2vec2.checkpoint import build_model, load_weights

pytestmark = pytest.mark.usefixtures("single_thread")

X = waveforms(2, 2000, seed=21)
LENGTHS = torch.tensor([2000, 1600])

# The config of a pruned DPHuBERT-style student, written out the way the release files hold
# it (prune.py copies the converter's config and rewrites the per-layer keys; JSON-like lists,
# conv config as a list of lists, pruned-away blocks with 0 heads / 0 units).
RELEASE_STYLE_CONFIG = {
    "extractor_mode": "group_norm",
    "extractor_conv_layer_config": [[13, 10, 5], [9, 3, 2], [16, 3, 2], [7, 2, 2]],
    "extractor_conv_bias": False,
    "encoder_embed_dim": 32,
    "encoder_projection_dropout": 0.1,
    "encoder_pos_conv_kernel": 8,
    "encoder_pos_conv_groups": 4,
    "encoder_num_layers": 4,
    "encoder_use_attention": [True, True, False, True],
    "encoder_use_feed_forward": [True, False, True, True],
    "encoder_num_heads": [3, 1, 0, 4],
    "encoder_head_dim": 8,
    "encoder_attention_dropout": 0.1,
    "encoder_ff_interm_features": [17, 0, 3, 24],
    "encoder_ff_interm_dropout": 0.0,
    "encoder_dropout": 0.1,
    "encoder_layer_norm_first": False,
    "encoder_layer_drop": 0.05,
    "aux_num_out": None,
    "normalize_waveform": False,
    "extractor_prune_conv_channels": False,
    "encoder_prune_attention_heads": False,
    "encoder_prune_attention_layer": False,
    "encoder_prune_feed_forward_intermediate": False,
    "encoder_prune_feed_forward_layer": False,
}

RELEASE_STYLE_WAVLM_CONFIG = {
    **{k: v for k, v in RELEASE_STYLE_CONFIG.items() if k not in ("encoder_num_heads", "encoder_head_dim")},
    "encoder_total_num_heads": [4, 4, 4, 4],
    "encoder_remaining_heads": [[0, 2, 3], [1], [], [0, 1, 2, 3]],
    "encoder_num_buckets": 32,
    "encoder_max_distance": 100,
}


def outputs(model):
    with torch.no_grad():
        states, _ = model.extract_features(X, LENGTHS)
    return states


def _source_model(config):
    """Random weights (norms and biases too) for the release-style structure."""
    from helpers import randomize_

    torch.manual_seed(7)
    model = wav2vec2.wav2vec2_model(**config)
    randomize_(model, seed=7)
    return model.eval()


def _write_release_file(path, config, state_dict, tuples=False):
    """torch.save of a plain dict, as DPHuBERT's prune.py / save_final_ckpt.py do."""
    config = dict(config)
    if tuples:
        config["extractor_conv_layer_config"] = [tuple(layer) for layer in config["extractor_conv_layer_config"]]
    payload = {
        "state_dict": collections.OrderedDict((k, v.clone()) for k, v in state_dict.items()),
        "config": config,
        "distill_linear_projs": {"0.weight": torch.randn(32, 32), "0.bias": torch.zeros(32)},
    }
    torch.save(payload, path)
    return path


@pytest.fixture(params=["hubert", "wavlm"])
def release_file(request, tmp_path):
    config = RELEASE_STYLE_CONFIG if request.param == "hubert" else RELEASE_STYLE_WAVLM_CONFIG
    source = _source_model(config)
    path = _write_release_file(tmp_path / "DPHuBERT-like.pth", config, source.state_dict())
    return request.param, path, source, config


def test_release_style_file_loads(release_file, capsys):
    family, path, source, config = release_file
    expected = outputs(source)
    model = load_model(path)
    printed = capsys.readouterr().out
    assert str(path) in printed and "filled in" not in printed
    assert not model.training
    assert max_abs_diff(outputs(model), expected) == 0.0
    layers = model.encoder.transformer.layers
    assert layers[2].attention is None and layers[1].feed_forward is None
    assert [b.conv.out_channels for b in model.feature_extractor.conv_layers] == [13, 9, 16, 7]
    if family == "hubert":
        assert [layer.attention.num_heads if layer.attention else 0 for layer in layers] == [3, 1, 0, 4]
    else:
        assert [layer.attention.remaining_heads if layer.attention else [] for layer in layers] == [[0, 2, 3], [1], [], [0, 1, 2, 3]]
        assert layers[0].attention.rel_attn_embed is not None
    assert [layer.feed_forward.interm_features if layer.feed_forward else 0 for layer in layers] == [17, 0, 3, 24]

    # The README recipe, with weights_only=True and strict=True.
    checkpoint = torch.load(path, weights_only=True)
    assert set(checkpoint) == {"state_dict", "config", "distill_linear_projs"}
    assert checkpoint["config"] == config
    rebuilt = wav2vec2.wav2vec2_model(**checkpoint["config"])
    rebuilt.load_state_dict(checkpoint["state_dict"], strict=True)
    rebuilt.eval()
    assert max_abs_diff(outputs(rebuilt), expected) == 0.0
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in source.parameters())


def test_conv_config_as_tuples_in_file(tmp_path):
    source = _source_model(RELEASE_STYLE_CONFIG)
    path = _write_release_file(tmp_path / "tuples.pth", RELEASE_STYLE_CONFIG, source.state_dict(), tuples=True)
    model = load_model(path, verbose=False)
    assert model.config["extractor_conv_layer_config"] == RELEASE_STYLE_CONFIG["extractor_conv_layer_config"]
    assert max_abs_diff(outputs(model), outputs(source)) == 0.0


def _parametrization_names(state_dict):
    renamed = collections.OrderedDict()
    for key, value in state_dict.items():
        key = key.replace("pos_conv_embed.conv.weight_g", "pos_conv_embed.conv.parametrizations.weight.original0")
        key = key.replace("pos_conv_embed.conv.weight_v", "pos_conv_embed.conv.parametrizations.weight.original1")
        renamed[key] = value
    return renamed


def test_new_weight_norm_names_load(tmp_path):
    source = _source_model(RELEASE_STYLE_CONFIG)
    renamed = _parametrization_names(source.state_dict())
    assert "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0" in renamed
    assert renamed["encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original0"].shape == (1, 1, 8)
    expected = outputs(source)
    # 1. the file path
    path = _write_release_file(tmp_path / "new_names.pth", RELEASE_STYLE_CONFIG, renamed)
    assert max_abs_diff(outputs(load_model(path, verbose=False)), expected) == 0.0
    # 2. plain load_state_dict(strict=True)
    model = wav2vec2.wav2vec2_model(**RELEASE_STYLE_CONFIG).eval()
    model.load_state_dict(renamed, strict=True)
    assert max_abs_diff(outputs(model), expected) == 0.0
    # the caller's dict is not modified
    assert "encoder.transformer.pos_conv_embed.conv.parametrizations.weight.original1" in renamed


def test_weights_from_torch_weight_norm_parametrization(tmp_path):
    """A state dict written by torch.nn.utils.parametrizations.weight_norm (dim=2) itself, as
    transformers >= 4.3x saves it, gives the same positional-conv output."""
    model = tiny_model("hubert")
    ours = model.encoder.transformer.pos_conv_embed.conv
    conv = torch.nn.Conv1d(32, 32, 8, padding=4, groups=4)
    conv = torch.nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_()
    sd = {f"encoder.transformer.pos_conv_embed.conv.{k}": v for k, v in conv.state_dict().items()}
    full = {**model.state_dict(), **sd}
    for k in ("weight_g", "weight_v"):
        del full[f"encoder.transformer.pos_conv_embed.conv.{k}"]
    model.load_state_dict(full, strict=True)
    x = torch.randn(1, 32, 20)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), conv(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Errors name the key and the file
# ------------------------------------------------------------------------------------------


def _good_state_dict():
    return _source_model(RELEASE_STYLE_CONFIG).state_dict()


@pytest.mark.parametrize("problem", ["missing", "unexpected", "shape"])
def test_mismatch_raises_checkpoint_error(problem, tmp_path):
    sd = collections.OrderedDict(_good_state_dict())
    if problem == "missing":
        key = "encoder.transformer.layers.3.feed_forward.output_dense.bias"
        del sd[key]
    elif problem == "unexpected":
        key = "encoder.transformer.layers.2.attention.q_proj.weight"  # layer 2 has no attention
        sd[key] = torch.zeros(24, 32)
    else:
        key = "encoder.transformer.layers.0.attention.q_proj.weight"
        sd[key] = torch.zeros(32, 32)  # 4 heads' worth; the config keeps 3
    path = _write_release_file(tmp_path / f"{problem}.pth", RELEASE_STYLE_CONFIG, sd)
    with pytest.raises(CheckpointError) as info:
        load_model(path, verbose=False)
    message = str(info.value)
    assert key in message and str(path) in message
    assert {"missing": "missing", "unexpected": "unexpected", "shape": "shape"}[problem] in message
    if problem == "shape":
        assert "(32, 32)" in message and "(24, 32)" in message
    assert isinstance(info.value, ValueError)


def test_missing_dummy_weight_is_filled_and_reported(tmp_path, capsys):
    """Teacher files converted by DPHuBERT's scripts have no dummy_weight (it is all ones)."""
    source = _source_model(RELEASE_STYLE_CONFIG)
    sd = dict(source.state_dict())
    del sd["feature_extractor.dummy_weight"]
    path = _write_release_file(tmp_path / "teacher.pth", RELEASE_STYLE_CONFIG, sd)
    model = load_model(path)
    printed = capsys.readouterr().out
    assert re.search(r"filled in: feature_extractor\.dummy_weight", printed)
    assert torch.equal(model.feature_extractor.dummy_weight, torch.ones(7))
    assert max_abs_diff(outputs(model), outputs(source)) == 0.0
    fresh = wav2vec2.wav2vec2_model(**RELEASE_STYLE_CONFIG)
    assert load_weights(fresh, sd) == ["feature_extractor.dummy_weight"]


def test_gates_may_be_missing_only_when_asked():
    """A teacher state dict into a masked student: only with allow_missing_gates=True."""
    teacher = tiny_model("hubert")
    student = wav2vec2.wav2vec2_model(**tiny_config("hubert", prune=("conv", "head", "interm")))
    with pytest.raises(CheckpointError, match=r"hard_concrete.*log_alpha"):
        load_weights(student, teacher.state_dict(), source="teacher.pth")
    filled = load_weights(student, teacher.state_dict(), source="teacher.pth", allow_missing_gates=True)
    assert len(filled) == 4 + 3 + 3 and all(k.endswith(".log_alpha") for k in filled)


def test_bad_config_in_file_names_key_and_file(tmp_path):
    config = dict(RELEASE_STYLE_CONFIG, encoder_num_heads=[3, 1, 0])
    path = _write_release_file(tmp_path / "badcfg.pth", config, _good_state_dict())
    with pytest.raises(CheckpointError, match="encoder_num_heads") as info:
        load_model(path, verbose=False)
    assert str(path) in str(info.value)
    config = dict(RELEASE_STYLE_CONFIG, encoder_typo=1)
    with pytest.raises(CheckpointError, match="encoder_typo"):
        build_model(config, source="x.pth")


def test_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope.pth")
    path = tmp_path / "not_a_dict.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="state_dict") as info:
        load_model(path)
    assert str(path) in str(info.value)
    path = tmp_path / "no_config.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="config"):
        load_model(path)
    path = tmp_path / "pickled_object.pth"
    torch.save({"state_dict": {}, "config": {}, "obj": collections.Counter("ab")}, path)
    with pytest.raises(CheckpointError, match="pickled_object"):
        load_model(path)


# ------------------------------------------------------------------------------------------
# save_model and summary
# ------------------------------------------------------------------------------------------


def test_save_model_writes_plain_values(tmp_path):
    config = tiny_config("wavlm")
    config["extractor_conv_layer_config"] = tuple(tuple(layer) for layer in config["extractor_conv_layer_config"])
    model = wav2vec2.wav2vec2_model(**config).eval()
    path = save_model(tmp_path / "sub" / "m.pth", model, distill_linear_projs={"0.weight": torch.ones(2, 2)})
    payload = torch.load(path, weights_only=True)
    assert isinstance(payload["config"]["extractor_conv_layer_config"][0], list)
    assert payload["config"]["encoder_remaining_heads"] == [[0, 1, 2, 3]] * 3
    assert torch.equal(payload["distill_linear_projs"]["0.weight"], torch.ones(2, 2))
    loaded = load_model(path, verbose=False)
    assert max_abs_diff(outputs(loaded), outputs(model)) == 0.0


def test_masked_student_round_trip(tmp_path):
    """A model with gates (a stage-1 student) saves and reloads with its log_alpha values."""
    model = tiny_model("wavlm", prune=("conv", "head", "attlayer", "interm", "ffnlayer"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("log_alpha"):
                param.normal_(1.0, 2.0)
    path = save_model(tmp_path / "student.pth", model)
    loaded = load_model(path, verbose=False)
    gates = {k: v for k, v in loaded.state_dict().items() if k.endswith("log_alpha")}
    assert len(gates) == 4 + 3 * 4
    for key, value in gates.items():
        assert torch.equal(value, model.state_dict()[key])
    assert max_abs_diff(outputs(loaded), outputs(model)) == 0.0


def test_summary_line(full_model):
    model = full_model("hubert_base")
    line = summary(model, "hubert_base.pth")
    assert "\n" not in line
    assert line.startswith("hubert_base.pth: wav2vec2/HuBERT")
    assert "12 layers" in line and "post-norm" in line and "width 768" in line
    assert "94,371,456 params" in line
    pruned = _source_model(RELEASE_STYLE_WAVLM_CONFIG)
    line = summary(pruned)
    n = sum(p.numel() for p in pruned.parameters())
    assert "WavLM" in line and "4 layers (3 attention, 3 FFN blocks kept)" in line and f"{n:,} params" in line
