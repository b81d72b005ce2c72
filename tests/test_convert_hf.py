"""Hugging Face -> our format: parity with transformers, config mapping, and refusals.

Tiny random transformers models are built offline, their weights re-drawn at realistic
scales (transformers' own init keeps LayerNorms at identity and linears at std 0.02, which
would hide a swapped LayerNorm or a q/k mix-up), saved with ``save_pretrained`` and
converted through the CLI's ``main``. Index mapping used for the comparisons:

- our h0 = transformers' ``feature_projection(feature_extractor(x))`` (before the pos conv);
- our h_i (i >= 1) = the output of transformers' encoder layer i (forward hooks, and
  ``hidden_states[i]`` for i < N, which is the same tensor in every transformers version);
- our ``model(x)[0]`` = ``last_hidden_state`` (final LayerNorm included for pre-norm models).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import convert_hubert_from_hf as cli  # noqa: E402
from wav2vec2.checkpoint import CheckpointError, load_model  # noqa: E402
from wav2vec2.convert import (  # noqa: E402
    ConversionError,
    build_converted_model,
    config_from_hf,
    convert_hf_model,
    convert_hf_state_dict,
)

TOL = 1e-4
TINY: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
)
LARGE_STYLE: dict[str, Any] = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
FAMILIES: dict[str, tuple[str, str]] = {
    "hubert": ("HubertConfig", "HubertModel"),
    "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model"),
    "wavlm": ("WavLMConfig", "WavLMModel"),
}
MEASURED: dict[str, float] = {}  # case -> max abs diff, printed at the end with -s


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter at a scale that keeps activations O(1) and makes each one matter."""
    g = torch.Generator().manual_seed(seed)

    def draw(p: torch.Tensor) -> torch.Tensor:
        return torch.randn(p.shape, generator=g)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):  # LayerNorm / GroupNorm scales
                p.copy_(1.0 + 0.2 * draw(p))
            elif name.endswith(("original0", "weight_g")):  # weight-norm magnitudes (positive)
                p.copy_(0.5 + draw(p).abs())
            elif name.endswith("gru_rel_pos_const"):
                p.copy_(1.0 + 0.5 * draw(p))
            elif p.ndim == 1 or name.endswith("rel_attn_embed.weight"):
                p.copy_(0.2 * draw(p) if p.ndim == 1 else draw(p))
            else:
                p.copy_(draw(p) / p[0].numel() ** 0.5)


def make_hf(family: str, seed: int = 0, model_class: str | None = None, **overrides: Any) -> torch.nn.Module:
    config_name, base_name = FAMILIES[family]
    config = getattr(transformers, config_name)(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = getattr(transformers, model_class or base_name)(config).eval()
    randomize_(model, seed)
    return model


def base_of(model: torch.nn.Module) -> torch.nn.Module:
    for attr in ("hubert", "wav2vec2", "wavlm"):
        if hasattr(model, attr):
            return getattr(model, attr)
    return model


@torch.no_grad()
def hf_reference(hf: torch.nn.Module, wave: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """(h0 and per-layer outputs via hooks, transformers' hidden_states, last_hidden_state)."""
    base = base_of(hf)
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
        for layer in base.encoder.layers
    ]
    try:
        result = base(wave, output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    projected = base.feature_projection(base.feature_extractor(wave).transpose(1, 2))
    h0 = projected[0] if isinstance(projected, tuple) else projected  # wav2vec2/WavLM also return the normed input
    return [h0] + outputs, list(result.hidden_states), result.last_hidden_state


def convert_dir(tmp_path: Path, hf: torch.nn.Module, *extra: str) -> tuple[torch.nn.Module, Path]:
    """save_pretrained -> CLI main -> strict load of the written file."""
    directory = tmp_path / "hf"
    hf.save_pretrained(directory)
    out = tmp_path / "pretrained" / "model.pth"
    assert cli.main(["--model", str(directory), "--out", str(out), *extra]) == 0
    return load_model(out, verbose=False), out


def parity(ours: torch.nn.Module, hf: torch.nn.Module, seconds: float = 1.0, seed: int = 1) -> float:
    """Max abs diff over every hidden state and the final output; asserts each <= TOL."""
    wave = torch.randn(1, int(16000 * seconds), generator=torch.Generator().manual_seed(seed))
    # Normalisation is ours (inside the model) but transformers' feature extractor's job:
    # hand transformers the normalised wave (same formula, eps 1e-5) when ours normalises.
    hf_input = F.layer_norm(wave, wave.shape[-1:]) if ours.normalize_waveform else wave
    reference, hidden_states, last = hf_reference(hf, hf_input)
    with torch.no_grad():
        ours_all, _ = ours.extract_features(wave)
        ours_last, _ = ours(wave)
    assert len(ours_all) == len(reference) == ours.num_layers + 1
    diffs = [float((a - b).abs().max()) for a, b in zip(ours_all, reference)]
    for i in range(1, ours.num_layers):  # transformers' own index convention for inner layers
        diffs.append(float((ours_all[i] - hidden_states[i]).abs().max()))
    diffs.append(float((ours_last - last).abs().max()))
    assert max(diffs) <= TOL, diffs
    assert float(reference[-1].abs().mean()) > 0.1  # outputs are not degenerate
    return max(diffs)


CASES = {
    "hubert-base": ("hubert", {}),
    "hubert-large-style": ("hubert", LARGE_STYLE),
    "wav2vec2-base": ("wav2vec2", {}),
    "wav2vec2-large-style": ("wav2vec2", LARGE_STYLE),
    "wavlm-base": ("wavlm", {}),
    "wavlm-large-style": ("wavlm", LARGE_STYLE),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hidden_states_match_transformers(case: str, tmp_path: Path) -> None:
    family, overrides = CASES[case]
    hf = make_hf(family, seed=len(case), **overrides)
    ours, out = convert_dir(tmp_path, hf)
    MEASURED[case] = parity(ours, hf)

    saved = torch.load(out, weights_only=True)
    assert saved["source"] == str(tmp_path / "hf") and saved["converter"] == "hf"
    assert saved["model_type"] == family
    config = saved["config"]
    stable = bool(overrides)
    assert config["encoder_layer_norm_first"] is stable
    assert config["extractor_mode"] == ("layer_norm" if stable else "group_norm")
    assert config["extractor_conv_bias"] is stable
    assert config["normalize_waveform"] is stable  # no preprocessor_config.json: family default
    assert config["extractor_conv_layer_config"] == [[32, 10, 5], [32, 3, 2], [32, 3, 2]]
    assert ("encoder_remaining_heads" in config) is (family == "wavlm")
    assert torch.equal(saved["state_dict"]["feature_extractor.dummy_weight"], torch.ones(32))


def test_config_fields_are_mapped() -> None:
    hf_config = transformers.HubertConfig(
        **{**TINY, "num_hidden_layers": 3}, feat_proj_dropout=0.11, attention_dropout=0.12,
        activation_dropout=0.13, hidden_dropout=0.14, layerdrop=0.15,
    )
    config = config_from_hf(hf_config)
    assert config["encoder_num_heads"] == [4, 4, 4] and config["encoder_head_dim"] == 8
    assert config["encoder_ff_interm_features"] == [64, 64, 64]
    assert config["encoder_use_attention"] == [True] * 3 and config["encoder_use_feed_forward"] == [True] * 3
    assert (config["encoder_projection_dropout"], config["encoder_attention_dropout"], config["encoder_ff_interm_dropout"],
            config["encoder_dropout"], config["encoder_layer_drop"]) == (0.11, 0.12, 0.13, 0.14, 0.15)
    assert (config["encoder_pos_conv_kernel"], config["encoder_pos_conv_groups"]) == (16, 4)
    assert not any(config[k] for k in config if "_prune_" in k)

    wavlm = config_from_hf(transformers.WavLMConfig(**TINY, num_buckets=64, max_bucket_distance=100).to_dict())
    assert wavlm["encoder_total_num_heads"] == [4, 4] and wavlm["encoder_remaining_heads"] == [[0, 1, 2, 3]] * 2
    assert (wavlm["encoder_num_buckets"], wavlm["encoder_max_distance"]) == (64, 100)
    assert "encoder_num_heads" not in wavlm and "encoder_head_dim" not in wavlm


def test_wavlm_bucket_settings_reach_the_model(tmp_path: Path) -> None:
    hf = make_hf("wavlm", seed=3, num_buckets=64, max_bucket_distance=100)
    ours, _ = convert_dir(tmp_path, hf)
    MEASURED["wavlm-64-buckets"] = parity(ours, hf, seconds=0.5)


@pytest.mark.parametrize("task_class", ["HubertForCTC", "HubertForSequenceClassification"])
def test_task_checkpoint_converts_its_base_model(task_class: str, tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=5, model_class=task_class)
    ours, out = convert_dir(tmp_path, hf)
    MEASURED[task_class] = parity(ours, hf, seconds=0.5)
    dropped = torch.load(out, weights_only=True)["dropped_keys"]
    head = {"HubertForCTC": ["lm_head.bias", "lm_head.weight"],
            "HubertForSequenceClassification": ["classifier.bias", "classifier.weight", "projector.bias", "projector.weight"]}
    assert set(head[task_class]) <= set(dropped)
    assert set(dropped) <= set(head[task_class]) | {"masked_spec_embed", "layer_weights"}


def test_pretraining_checkpoint_and_prefixed_state_dict() -> None:
    pretraining = make_hf(
        "wav2vec2", seed=6, model_class="Wav2Vec2ForPreTraining", codevector_dim=16, proj_codevector_dim=16,
        num_codevectors_per_group=8,
    )
    info: dict[str, Any] = {}
    from_task = convert_hf_state_dict(pretraining.state_dict(), info=info)
    from_base = convert_hf_state_dict(pretraining.wav2vec2.state_dict())
    assert from_task.keys() == from_base.keys()
    assert all(torch.equal(from_task[k], from_base[k]) for k in from_task)
    assert {"quantizer.codevectors", "project_hid.weight", "project_q.weight", "wav2vec2.masked_spec_embed"} <= set(info["dropped"])
    # The weight-norm halves land on our names, with the parametrization's values.
    conv = pretraining.wav2vec2.encoder.pos_conv_embed.conv.parametrizations.weight
    assert torch.equal(from_task["encoder.transformer.pos_conv_embed.conv.weight_g"], conv.original0)
    assert torch.equal(from_task["encoder.transformer.pos_conv_embed.conv.weight_v"], conv.original1)


def test_old_weight_norm_names_are_accepted() -> None:
    hf = make_hf("hubert", seed=7)
    state = dict(hf.state_dict())
    state["encoder.pos_conv_embed.conv.weight_g"] = state.pop("encoder.pos_conv_embed.conv.parametrizations.weight.original0")
    state["encoder.pos_conv_embed.conv.weight_v"] = state.pop("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    ours = build_converted_model(config_from_hf(hf.config), convert_hf_state_dict(state), "old-names")
    MEASURED["hubert-weight_g/v-names"] = parity(ours, hf, seconds=0.5)


def test_padded_batch_matches_each_utterance_alone(tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=8)
    ours, _ = convert_dir(tmp_path, hf)
    g = torch.Generator().manual_seed(2)
    lengths = torch.tensor([16000, 9000])
    batch = torch.randn(2, 16000, generator=g)
    batch[1, 9000:] = 3.0  # padding content must not matter
    with torch.no_grad():
        padded, frame_lengths = ours.extract_features(batch, lengths)
        for b, length in enumerate(lengths.tolist()):
            alone, alone_lengths = ours.extract_features(batch[b : b + 1, :length])
            T = int(frame_lengths[b])
            assert T == alone[0].shape[1]
            worst = max(float((p[b, :T] - a[0]).abs().max()) for p, a in zip(padded, alone))
            assert worst <= TOL, (b, worst)


def test_preprocessor_do_normalize_and_explicit_choice(tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=9)
    directory = tmp_path / "hf"
    hf.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "sampling_rate": 16000}))
    info: dict[str, Any] = {}
    config, state = convert_hf_model(str(directory), info=info)
    assert config["normalize_waveform"] is True
    assert info["normalize_waveform_from"] == "preprocessor_config.json do_normalize"
    ours = build_converted_model(config, state, str(directory))
    MEASURED["hubert-do_normalize"] = parity(ours, hf, seconds=0.5)  # HF gets the normalised wave

    out = tmp_path / "explicit.pth"
    assert cli.main(["--model", str(directory), "--out", str(out), "--normalize-waveform", "false"]) == 0
    assert torch.load(out, weights_only=True)["config"]["normalize_waveform"] is False


def test_wrong_mapping_would_be_caught(tmp_path: Path) -> None:
    """The tolerance is meaningful: swapping q and k of one layer breaks parity by far more."""
    hf = make_hf("hubert", seed=10)
    ours, _ = convert_dir(tmp_path, hf)
    attention = ours.encoder.transformer.layers[0].attention
    with torch.no_grad():
        q = attention.q_proj.weight.clone()
        attention.q_proj.weight.copy_(attention.k_proj.weight)
        attention.k_proj.weight.copy_(q)
    with pytest.raises(AssertionError):
        parity(ours, hf, seconds=0.5)


# --------------------------------------------------------------------------------------------
# Refusals: the message names the model type, field or key
# --------------------------------------------------------------------------------------------


def test_unknown_model_type_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConversionError, match="data2vec-audio"):
        config_from_hf({"model_type": "data2vec-audio", "architectures": ["Data2VecAudioModel"]})
    directory = tmp_path / "d2v"
    transformers.Data2VecAudioConfig(**TINY).save_pretrained(directory)  # refused before any weights are read
    assert cli.main(["--model", str(directory), "--out", str(tmp_path / "x.pth")]) == 1
    assert "unsupported model_type 'data2vec-audio'" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


@pytest.mark.parametrize(
    "family, field, value",
    [
        ("hubert", "feat_proj_layer_norm", False),
        ("hubert", "conv_pos_batch_norm", True),
        ("hubert", "feat_extract_activation", "relu"),
        ("wav2vec2", "hidden_act", "gelu_new"),
        ("wav2vec2", "add_adapter", True),
        ("wav2vec2", "adapter_attn_dim", 8),
        ("wavlm", "feat_extract_norm", "batch"),
        ("hubert", "layer_norm_eps", 1e-6),
        ("hubert", "num_conv_pos_embedding_groups", 5),
        ("wavlm", "num_attention_heads", 5),
        ("wav2vec2", "num_feat_extract_layers", 4),
    ],
)
def test_unsupported_config_field_is_refused(family: str, field: str, value: Any) -> None:
    config = getattr(transformers, FAMILIES[family][0])(**TINY)
    setattr(config, field, value)  # on the object: transformers' own constructor checks are bypassed
    with pytest.raises(ConversionError, match=f"unsupported {field}="):
        config_from_hf(config)


def _converted(family: str = "hubert") -> tuple[torch.nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    hf = make_hf(family, seed=11)
    return hf, config_from_hf(hf.config), dict(hf.state_dict())


def test_missing_key_is_named() -> None:
    _, config, state = _converted()
    del state["encoder.layers.1.feed_forward.output_dense.weight"]
    with pytest.raises(CheckpointError, match=r"encoder\.transformer\.layers\.1\.feed_forward\.output_dense\.weight"):
        build_converted_model(config, convert_hf_state_dict(state), "missing")


def test_wrong_shape_is_named() -> None:
    _, config, state = _converted("wavlm")
    state["encoder.layers.0.attention.gru_rel_pos_linear.weight"] = torch.zeros(8, 9)
    with pytest.raises(CheckpointError, match=r"layers\.0\.attention\.gru_rel_pos_linear\.weight: file \(8, 9\)"):
        build_converted_model(config, convert_hf_state_dict(state), "shape")


def test_unknown_key_is_named() -> None:
    _, _, state = _converted()
    state["encoder.layers.0.attention.rotary.weight"] = torch.zeros(3)
    with pytest.raises(ConversionError, match=r"encoder\.layers\.0\.attention\.rotary\.weight"):
        convert_hf_state_dict(state)


@pytest.mark.parametrize("damage", ["missing", "shape"])
def test_bad_weight_in_the_checkpoint_file_is_named(damage: str, tmp_path: Path) -> None:
    """transformers would re-initialise a weight that is absent or mis-shaped; we refuse, by name."""
    from safetensors.torch import load_file, save_file

    hf = make_hf("hubert", seed=12)
    directory = tmp_path / "hf"
    hf.save_pretrained(directory)
    weights = load_file(directory / "model.safetensors")
    if damage == "missing":
        del weights["encoder.layers.0.attention.v_proj.bias"]
    else:
        weights["encoder.layers.0.attention.v_proj.bias"] = torch.zeros(33)
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})
    message = "lacks weights" if damage == "missing" else "shape mismatch for"
    with pytest.raises(ConversionError, match=message + r" encoder\.layers\.0\.attention\.v_proj\.bias"):
        convert_hf_model(str(directory))


def test_config_dict_takes_transformers_defaults() -> None:
    config = transformers.HubertConfig(**TINY, hidden_dropout=0.3).to_dict()
    del config["hidden_dropout"], config["conv_stride"]
    with pytest.raises(ConversionError, match="transformers rejects this config"):
        config_from_hf(config)  # transformers' default conv_stride has 7 entries, conv_dim 3
    config["conv_stride"] = [5, 2, 2]
    assert config_from_hf(config)["encoder_dropout"] == transformers.HubertConfig().hidden_dropout


def test_report_measured_diffs() -> None:
    """Runs last in this file: prints the per-case max abs diffs (visible with ``-s``)."""
    for case, diff in MEASURED.items():
        print(f"HF parity {case}: max abs diff {diff:.2e}")
    assert all(diff <= TOL for diff in MEASURED.values())
