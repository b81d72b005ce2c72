"""MelHuBERT model: sizes, masking, the 7/8-tuple contract, padding, released-checkpoint compatibility."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from wav2vec2.melhubert_checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_melhubert,
    load_state_strictly,
    model_from_checkpoint,
    released_layout,
    save_checkpoint,
    to_internal_key,
    to_released_key,
)
from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel, masked_prediction_loss, param_count

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "melhubert"

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
            encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, num_cluster=10, mask_prob=0.7, mask_length=5)


def tiny_model(seed: int = 0, **overrides: Any) -> MelHuBERTModel:
    torch.manual_seed(seed)
    return MelHuBERTModel(MelHuBERTConfig({**TINY, **overrides})).eval()


def batch(lengths: list[int], dim: int = 80, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    T = max(lengths)
    mel = torch.randn(len(lengths), T, dim, generator=generator)
    pad_mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()
    return mel * pad_mask[..., None], pad_mask


def yaml_section(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())["melhubert"]


# ----------------------------------------------------------------------------------------------
# Sizes and config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, expected", [("config_model.yaml", 90_231_424), ("config_model_10ms.yaml", 90_200_704)])
def test_parameter_counts_of_the_shipped_configs(name: str, expected: int) -> None:
    with torch.device("meta"):
        model = MelHuBERTModel(yaml_section(name))
    assert param_count(model) == expected
    assert param_count(model.encoder.layers[0]) == 7_087_872
    assert param_count(model.encoder.pos_conv_embed) == 4_719_488
    assert param_count(model.final_proj) == 393_728


def test_config_defaults_and_errors() -> None:
    config = MelHuBERTConfig({})
    assert config.encoder_layers == 1 and config.mask_prob == 0.8 and config.head_dim == 64
    for bad, key in [({"activation_fn": "relu"}, "activation_fn"), ({"attention_type": "causal"}, "attention_type"),
                     ({"encoder_attention_heads": [12, 12]}, "encoder_attention_heads"),
                     ({"encoder_layers": 2, "encoder_attention_heads": [12, 11]}, "encoder_attention_head_dim"),
                     ({"mask_length": "5"}, "mask_length"), ({"pos_conv_depth": 2}, "pos_conv_depth")]:
        with pytest.raises(ValueError, match=key):
            MelHuBERTConfig(bad)
    with pytest.warns(UserWarning, match="logit_temp"):
        MelHuBERTConfig({"logit_temp": 0.1})


def test_span_mask_ratio_matches_the_reference_simulation() -> None:
    model = tiny_model()
    pad_mask = torch.ones(200, 750)
    ratio = model.draw_mask(pad_mask, torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(ratio - 0.53) < 0.015, ratio
    ten_ms = tiny_model(mask_length=10)
    ratio = ten_ms.draw_mask(torch.ones(100, 1500), torch.Generator().manual_seed(0)).float().mean().item()
    assert abs(ratio - 0.52) < 0.02, ratio


# ----------------------------------------------------------------------------------------------
# Forward contract
# ----------------------------------------------------------------------------------------------


def test_no_pred_returns_the_7_tuple() -> None:
    model = tiny_model()
    mel, pad_mask = batch([30, 21])
    out = model(mel, pad_mask, get_hidden=True, no_pred=True)
    assert len(out) == 7 and out[1:5] == (None, None, None, None)
    hidden, layers, pre_feat = out[0], out[5], out[6]
    assert hidden.shape == (2, 30, 32) and pre_feat.shape == (2, 30, 32)
    assert len(layers) == 2 and all(h.shape == (2, 30, 32) for h in layers)
    torch.testing.assert_close(hidden, layers[-1])
    assert torch.all(pre_feat[1, 21:] == 0)  # padding zeroed
    assert model(mel, pad_mask, no_pred=True)[5] == []


def test_prediction_returns_the_8_tuple_on_masked_real_frames() -> None:
    model = tiny_model().train()
    mel, pad_mask = batch([30, 21])
    labels = torch.randint(0, 10, (2, 30))
    labels[1, 21:] = -100
    before = mel.clone()
    torch.manual_seed(3)
    hidden, logit_m, logit_u, label_m, label_u, layers, pre_feat, mask = model(mel, pad_mask, labels, mask=True)
    assert torch.equal(mel, before)  # the caller's batch is not masked in place
    assert mask.dtype == torch.bool and mask.shape == (2, 30) and not mask[1, 21:].any()
    assert logit_m.shape == (int(mask.sum()), 10) and torch.equal(label_m, labels[mask])
    assert logit_u is None and label_u is None and layers == []  # skip_nomask, no get_hidden
    loss, logs = masked_prediction_loss((hidden, logit_m, logit_u, label_m, label_u, layers, pre_feat, mask), model.config)
    torch.testing.assert_close(loss, F.cross_entropy(logit_m, label_m))
    assert 0.0 <= float(logs["accuracy_masked"]) <= 1.0
    # Both kinds, no labels.
    both = tiny_model(skip_nomask=False)
    out = both(mel, pad_mask, teacher_mask_indices=mask)
    assert out[1].shape[0] + out[2].shape[0] == int(pad_mask.sum()) and out[3] is None


def test_mask_embedding_replaces_masked_input_frames() -> None:
    model = tiny_model()
    mel, pad_mask = batch([12])
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 3:8] = True
    pre_feat = model(mel, pad_mask, teacher_mask_indices=mask, no_pred=True)[6]
    # Masked Mel frames are 0 before the projection, so the projection gives its bias there.
    torch.testing.assert_close(pre_feat[0, 3:8], model.pre_extract_proj.bias.expand(5, -1))
    learnable = tiny_model(learnable_mask_emb=True)
    assert "mask_emb" in learnable.state_dict() and learnable.mask_emb.shape == (80,)
    assert "mask_emb" not in model.state_dict()


def test_padding_does_not_change_real_frames() -> None:
    model = tiny_model()
    mel, pad_mask = batch([40, 23])
    padded = model(mel, pad_mask, get_hidden=True, no_pred=True)[5]
    alone = model(mel[1:, :23], pad_mask[1:, :23], get_hidden=True, no_pred=True)[5]
    for together, single in zip(padded, alone):
        torch.testing.assert_close(together[1, :23], single[0], atol=1e-5, rtol=1e-5)


def test_extract_features_matches_the_forward_hidden_states() -> None:
    model = tiny_model()
    mel, pad_mask = batch([25, 17])
    states, lengths = model.extract_features(mel, torch.tensor([25, 17]))
    out = model(mel, pad_mask, get_hidden=True, no_pred=True)
    assert len(states) == 3 and torch.equal(lengths, torch.tensor([25, 17]))
    torch.testing.assert_close(states[0], out[6])
    for mine, theirs in zip(states[1:], out[5]):
        torch.testing.assert_close(mine, theirs)
    assert len(model.extract_features(mel, torch.tensor([25, 17]), num_layers=1)[0]) == 2


# ----------------------------------------------------------------------------------------------
# Released checkpoints (a key list written out independently of the implementation)
# ----------------------------------------------------------------------------------------------

D, H, FFN, LAYERS, K, G, C, F_IN = 32, 4, 64, 2, 8, 4, 10, 80


def released_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "pre_extract_proj.weight": (D, F_IN), "pre_extract_proj.bias": (D,),
        "encoder.pos_conv.0.weight_g": (1, 1, K), "encoder.pos_conv.0.weight_v": (D, D // G, K), "encoder.pos_conv.0.bias": (D,),
        "encoder.layer_norm.weight": (D,), "encoder.layer_norm.bias": (D,),
        "final_proj.weight": (C, D), "final_proj.bias": (C,),
    }
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{name}.weight"] = (D, D)
            shapes[f"{p}self_attn.{name}.bias"] = (D,)
        shapes.update({f"{p}fc1.weight": (FFN, D), f"{p}fc1.bias": (FFN,), f"{p}fc2.weight": (D, FFN), f"{p}fc2.bias": (D,)})
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes[f"{p}{norm}.weight"] = (D,)
            shapes[f"{p}{norm}.bias"] = (D,)
    return shapes


RELEASED_CONFIG = dict(feat_emb_dim=F_IN, encoder_layers=LAYERS, encoder_embed_dim=D, encoder_ffn_embed_dim=FFN,
                       encoder_attention_heads=H, conv_pos=K, conv_pos_groups=G, num_cluster=C, mask_prob=0.7,
                       mask_length=5, final_dim=40, pred_masked_weight=1.0, pred_nomask_weight=0.0)


def released_state(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in released_shapes().items():
        value = torch.randn(shape, generator=generator) * 0.2
        if key.endswith("weight_g"):
            value = value.abs() + 0.5
        elif "norm.weight" in key:
            value = 1.0 + value
        state[key] = value
    return state


def reference_hidden_states(state: dict[str, torch.Tensor], mel: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
    """A plain functional post-LN MelHuBERT over the released names (no shared code)."""
    B, T, _ = mel.shape
    valid = torch.arange(T)[None, :] < lengths[:, None]

    def linear(x: torch.Tensor, name: str) -> torch.Tensor:
        return x @ state[f"{name}.weight"].T + state[f"{name}.bias"]

    def norm(x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (D,), state[f"{name}.weight"], state[f"{name}.bias"], 1e-5)

    x = linear(mel, "pre_extract_proj") * valid[..., None]
    v = state["encoder.pos_conv.0.weight_v"]
    weight = state["encoder.pos_conv.0.weight_g"] * v / v.norm(dim=(0, 1), keepdim=True)
    conv = F.conv1d(x.transpose(1, 2), weight, state["encoder.pos_conv.0.bias"], padding=K // 2, groups=G)[..., :-1]
    x = norm(x + F.gelu(conv).transpose(1, 2), "encoder.layer_norm")
    outputs = []
    d = D // H
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        q, k, v_ = (linear(x, f"{p}self_attn.{n}_proj").view(B, T, H, d).transpose(1, 2) for n in ("q", "k", "v"))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        context = (scores.softmax(-1) @ v_).transpose(1, 2).reshape(B, T, D)
        x = norm(x + linear(context, f"{p}self_attn.out_proj"), f"{p}self_attn_layer_norm")
        x = norm(x + linear(F.gelu(linear(x, f"{p}fc1")), f"{p}fc2"), f"{p}final_layer_norm")
        outputs.append(x)
    return outputs


def check_against_reference(model: MelHuBERTModel, state: dict[str, torch.Tensor]) -> None:
    lengths = torch.tensor([20, 13])
    mel, pad_mask = batch(lengths.tolist())
    last, _, _, _, _, hidden_states, _ = model(mel, pad_mask, get_hidden=True, no_pred=True)
    expected = reference_hidden_states(state, mel, lengths)
    for mine, theirs in zip(hidden_states, expected):
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(mine[b, :n], theirs[b, :n], atol=2e-5, rtol=1e-4)


def test_released_names_are_exactly_our_state_dict() -> None:
    model = MelHuBERTModel(RELEASED_CONFIG)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == released_shapes()
    assert {k.name: k.shape for k in released_layout(model.config)} == released_shapes()
    for key in ours:
        assert to_released_key(to_internal_key(key)) == key
    assert to_internal_key("encoder.layers.1.self_attn_layer_norm.bias") == "encoder.layers.1.layer_norm.bias"


def test_released_checkpoint_loads_by_the_original_recipe_and_matches_a_reference() -> None:
    state = released_state()
    for section in ("melhubert", "hubert"):  # old files keep the config under "hubert"
        all_states = {"model": state, "Upstream_Config": {section: dict(RELEASED_CONFIG), "task": {"sequence_length": 750}}}
        config = MelHuBERTConfig(all_states["Upstream_Config"][section])
        model = MelHuBERTModel(config)
        model.load_state_dict(all_states["model"])
        check_against_reference(model.eval(), state)


def test_released_file_with_an_argparse_namespace_is_read(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "released.ckpt"
    torch.save({"model": released_state(), "Upstream_Config": {"hubert": dict(RELEASED_CONFIG)},
                "Args": argparse.Namespace(mode="melhubert", seed=1337), "Step": 3}, path)
    model = load_melhubert(path)
    assert not model.training
    check_against_reference(model, released_state())


def test_weight_pruned_released_checkpoint_folds_masks() -> None:
    state = released_state(seed=2)
    generator = torch.Generator().manual_seed(5)
    pruned, effective = {}, {}
    for key, value in state.items():
        if any(f".{n}." in key for n in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")):
            mask = (torch.rand(value.shape, generator=generator) > 0.5).float()
            pruned[key + "_orig"], pruned[key + "_mask"] = value, mask
            effective[key] = value * mask
        else:
            pruned[key] = effective[key] = value
    model = MelHuBERTModel(RELEASED_CONFIG)
    model.load_state_dict(pruned)
    check_against_reference(model.eval(), effective)


def test_head_pruned_released_checkpoint_gets_per_layer_heads() -> None:
    config = MelHuBERTConfig(RELEASED_CONFIG)
    state = released_state()
    kept = [0, 2, 3]  # layer 0 lost head 1
    rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in kept])
    for name in ("q_proj", "k_proj", "v_proj"):
        state[f"encoder.layers.0.self_attn.{name}.weight"] = state[f"encoder.layers.0.self_attn.{name}.weight"][rows]
        state[f"encoder.layers.0.self_attn.{name}.bias"] = state[f"encoder.layers.0.self_attn.{name}.bias"][rows]
    state["encoder.layers.0.self_attn.out_proj.weight"] = state["encoder.layers.0.self_attn.out_proj.weight"][:, rows]
    checkpoint = {"model": state, "Upstream_Config": {"melhubert": dict(config)}, "Pruned_heads": [{0: [1]}]}
    model = model_from_checkpoint(checkpoint)
    assert config_from_checkpoint(checkpoint).encoder_attention_heads == [3, 4]
    assert model.encoder.layers[0].attention.num_heads == 3


def test_strict_loading_names_released_keys() -> None:
    model = MelHuBERTModel(RELEASED_CONFIG)
    state = released_state()
    del state["encoder.layers.1.fc2.bias"]
    state["encoder.layers.1.fc3.weight"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as error:
        model.load_state_dict(state)
    assert "encoder.layers.1.fc2.bias" in str(error.value) and "encoder.layers.1.fc3.weight" in str(error.value)
    state = released_state()
    state["final_proj.weight"] = torch.zeros(C + 1, D)
    with pytest.raises(CheckpointError, match="final_proj.weight: file"):
        load_state_strictly(model, state, "some.ckpt")


# ----------------------------------------------------------------------------------------------
# Our checkpoints
# ----------------------------------------------------------------------------------------------


def test_saved_checkpoint_loads_weights_only_and_by_the_recipe(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pruned_shape = {**TINY, "encoder_attention_heads": [4, 3], "encoder_ffn_embed_dim": [64, 40], "encoder_attention_head_dim": 8}
    source = MelHuBERTModel(pruned_shape).eval()
    path = save_checkpoint(tmp_path / "model.ckpt", source, task={"sequence_length": 750}, step=7, runner={"runner": {"n_epochs": 1}})
    all_states = torch.load(path, weights_only=True)
    assert set(all_states) == {"model", "Upstream_Config", "Optimizer", "Step", "Runner"} and all_states["Step"] == 7
    assert all_states["Upstream_Config"]["melhubert"]["encoder_attention_heads"] == [4, 3]
    config = MelHuBERTConfig(all_states["Upstream_Config"]["melhubert"])
    model = MelHuBERTModel(config)
    model.load_state_dict(all_states["model"])
    mel, pad_mask = batch([18, 11])
    last, _, _, _, _, hidden_states, _ = model.eval()(mel, pad_mask, get_hidden=True, no_pred=True)
    expected = source(mel, pad_mask, get_hidden=True, no_pred=True)
    assert torch.equal(last, expected[0]) and all(torch.equal(a, b) for a, b in zip(hidden_states, expected[5]))


def test_current_config_follows_structure_changes() -> None:
    model = tiny_model()
    model.encoder.layers[1].feed_forward = None  # e.g. every row pruned away
    config = model.current_config()
    assert config.encoder_ffn_embed_dim == [64, 0]
    rebuilt = MelHuBERTModel(config)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.encoder.layers[1].feed_forward is None
