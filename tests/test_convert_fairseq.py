"""fairseq -> our format, without fairseq: parity, checkpoint formats, and refusals.

fairseq is not installed, so the fairseq checkpoints are built here: a tiny transformers
model's weights are renamed to fairseq's layout by ``HF_TO_FAIRSEQ`` below (this test's own
ground truth, written from the fairseq module tree: ``ConvFeatureExtractionModel`` blocks are
``Sequential(conv, dropout, norm, GELU)`` with the layer_norm-mode norm wrapped as
``Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)``; ``pos_conv`` is
``Sequential(weight-normed conv, SamePad, GELU)``; layers hold ``self_attn``,
``self_attn_layer_norm``, ``fc1``, ``fc2``, ``final_layer_norm``), saved with ``torch.save``
and converted through the CLI; hidden states must equal the transformers model's.
"""

from __future__ import annotations

import argparse
import collections
import enum
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import convert_from_fairseq as cli  # noqa: E402
from wav2vec2.checkpoint import CheckpointError, load_model  # noqa: E402
from wav2vec2.convert import (  # noqa: E402
    ConversionError,
    build_converted_model,
    convert_fairseq_checkpoint,
    load_fairseq_checkpoint,
)
from wav2vec2.convert.fairseq import parse_conv_feature_layers  # noqa: E402

TOL = 1e-4
TINY: dict[str, Any] = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)
LARGE_STYLE: dict[str, Any] = dict(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
MEASURED: dict[str, float] = {}

# transformers base-model name -> fairseq name ({mode} filled per extractor mode).
HF_TO_FAIRSEQ: list[tuple[str, str]] = [
    (r"^feature_extractor\.conv_layers\.(\d+)\.conv\.(weight|bias)$", r"feature_extractor.conv_layers.\1.0.\2"),
    (r"^feature_extractor\.conv_layers\.(\d+)\.layer_norm\.(weight|bias)$", r"feature_extractor.conv_layers.\1.{norm}.\2"),
    (r"^feature_projection\.layer_norm\.(weight|bias)$", r"layer_norm.\1"),
    (r"^feature_projection\.projection\.(weight|bias)$", r"post_extract_proj.\1"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original0$", r"encoder.pos_conv.0.weight_g"),
    (r"^encoder\.pos_conv_embed\.conv\.parametrizations\.weight\.original1$", r"encoder.pos_conv.0.weight_v"),
    (r"^encoder\.pos_conv_embed\.conv\.bias$", r"encoder.pos_conv.0.bias"),
    (r"^encoder\.layer_norm\.(weight|bias)$", r"encoder.layer_norm.\1"),
    (r"^encoder\.layers\.(\d+)\.attention\.(\w+_proj)\.(weight|bias)$", r"encoder.layers.\1.self_attn.\2.\3"),
    (r"^encoder\.layers\.(\d+)\.layer_norm\.(weight|bias)$", r"encoder.layers.\1.self_attn_layer_norm.\2"),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.intermediate_dense\.(weight|bias)$", r"encoder.layers.\1.fc1.\2"),
    (r"^encoder\.layers\.(\d+)\.feed_forward\.output_dense\.(weight|bias)$", r"encoder.layers.\1.fc2.\2"),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$", r"encoder.layers.\1.final_layer_norm.\2"),
    (r"^masked_spec_embed$", r"mask_emb"),
]


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter at a scale where each one matters (see test_convert_hf)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("original0"):
                p.copy_(0.5 + noise.abs())
            elif p.ndim == 1:
                p.copy_(0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def make_hf(family: str = "hubert", seed: int = 0, **overrides: Any) -> torch.nn.Module:
    config_class, model_class = {"hubert": ("HubertConfig", "HubertModel"), "wav2vec2": ("Wav2Vec2Config", "Wav2Vec2Model")}[family]
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**{**TINY, **overrides})).eval()
    randomize_(model, seed)
    return model


def fairseq_state(hf: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    norm = "2.1" if hf.config.feat_extract_norm == "layer" else "2"
    state: dict[str, torch.Tensor] = {}
    for name, value in hf.state_dict().items():
        for pattern, replacement in HF_TO_FAIRSEQ:
            if re.match(pattern, name):
                state[prefix + re.sub(pattern, replacement.replace("{norm}", norm), name)] = value.clone()
                break
        else:
            raise AssertionError(f"test mapping lacks {name}")
    return state


def fairseq_model_cfg(hf: torch.nn.Module, arch: str = "hubert") -> dict[str, Any]:
    c = hf.config
    return {
        "_name": arch,
        "extractor_mode": "layer_norm" if c.feat_extract_norm == "layer" else "default",
        "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2",
        "conv_bias": c.conv_bias,
        "encoder_embed_dim": 32, "encoder_layers": 2, "encoder_attention_heads": 4, "encoder_ffn_embed_dim": 64,
        "activation_fn": "gelu",
        "dropout": 0.1, "attention_dropout": 0.05, "activation_dropout": 0.02, "dropout_input": 0.03,
        "encoder_layerdrop": 0.04,
        "layer_norm_first": c.do_stable_layer_norm,
        "conv_pos": 16, "conv_pos_groups": 4,
        "label_rate": 50, "final_dim": 16,  # fields we do not use are ignored
    }


@torch.no_grad()
def parity(ours: torch.nn.Module, hf: torch.nn.Module, seconds: float = 1.0) -> float:
    wave = torch.randn(1, int(16000 * seconds), generator=torch.Generator().manual_seed(1))
    hf_input = F.layer_norm(wave, wave.shape[-1:]) if ours.normalize_waveform else wave
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for layer in hf.encoder.layers]
    try:
        last = hf(hf_input).last_hidden_state
    finally:
        for hook in hooks:
            hook.remove()
    projected = hf.feature_projection(hf.feature_extractor(hf_input).transpose(1, 2))
    reference = [projected[0] if isinstance(projected, tuple) else projected] + outputs
    ours_all, _ = ours.extract_features(wave)
    diffs = [float((a - b).abs().max()) for a, b in zip(ours_all, reference, strict=True)]
    diffs.append(float((ours(wave)[0] - last).abs().max()))
    assert max(diffs) <= TOL, diffs
    return max(diffs)


def convert(tmp_path: Path, checkpoint: Path, *extra: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    out = tmp_path / "pretrained" / (checkpoint.stem + ".pth")
    assert cli.main(["--checkpoint", str(checkpoint), "--out", str(out), *extra]) == 0
    return load_model(out, verbose=False), torch.load(out, weights_only=True)


# --------------------------------------------------------------------------------------------
# Parity through the file formats fairseq has used
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["base", "large"])
def test_hydra_checkpoint_with_plain_dict_cfg(style: str, tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=1 if style == "base" else 2, **(LARGE_STYLE if style == "large" else {}))
    state = fairseq_state(hf)
    state["label_embs_concat"] = torch.randn(10, 16)
    state["final_proj.weight"], state["final_proj.bias"] = torch.randn(16, 32), torch.randn(16)
    large = style == "large"
    checkpoint = {
        "args": None,
        "cfg": {"model": fairseq_model_cfg(hf), "task": {"_name": "hubert_pretraining", "normalize": large}, "common": {}},
        "model": state,
        "optimizer_history": [{"criterion_name": "HubertCriterion", "num_updates": 5}],
        "extra_state": {"epoch": 3},
    }
    path = tmp_path / f"hubert_{style}.pt"
    torch.save(checkpoint, path)
    ours, saved = convert(tmp_path, path)
    MEASURED[f"hubert-{style} (cfg dict)"] = parity(ours, hf)

    config = saved["config"]
    assert config["extractor_mode"] == ("layer_norm" if large else "group_norm")
    assert config["encoder_layer_norm_first"] is large and config["extractor_conv_bias"] is large
    assert config["normalize_waveform"] is large
    assert config["extractor_conv_layer_config"] == [[32, 10, 5], [32, 3, 2], [32, 3, 2]]
    assert config["encoder_num_heads"] == [4, 4] and config["encoder_head_dim"] == 8
    assert (config["encoder_projection_dropout"], config["encoder_attention_dropout"], config["encoder_ff_interm_dropout"],
            config["encoder_dropout"], config["encoder_layer_drop"]) == (0.03, 0.05, 0.02, 0.1, 0.04)
    assert sorted(saved["dropped_keys"]) == ["final_proj.bias", "final_proj.weight", "label_embs_concat", "mask_emb"]
    assert saved["converter"] == "fairseq" and saved["source"] == str(path) and saved["arch"] == "hubert"


def test_legacy_format_with_argparse_namespace(tmp_path: Path) -> None:
    """wav2vec 2.0 Base-era file: ``args`` Namespace, pre-1.6 torch serialisation, quantiser weights."""
    hf = make_hf("wav2vec2", seed=3)
    state = fairseq_state(hf)
    state["quantizer.vars"] = torch.randn(1, 16, 8)
    state["quantizer.weight_proj.weight"], state["quantizer.weight_proj.bias"] = torch.randn(16, 32), torch.randn(16)
    state["project_q.weight"], state["project_q.bias"] = torch.randn(16, 16), torch.randn(16)
    fields = fairseq_model_cfg(hf, arch="wav2vec2")
    fields.pop("_name")
    del fields["conv_pos_groups"]  # absent in the file: fairseq's default (16) would apply ...
    args = argparse.Namespace(arch="wav2vec2", task="audio_pretraining", normalize=False, **fields)
    path = tmp_path / "wav2vec_small.pt"
    torch.save({"args": args, "model": state}, path, _use_new_zipfile_serialization=False)

    info: dict[str, Any] = {}
    config, converted = convert_fairseq_checkpoint(path, info=info)
    assert info["defaulted"] == ["conv_pos_groups"] and config["encoder_pos_conv_groups"] == 16
    # ... and with 16 groups the positional conv weights do not fit: the key is named.
    with pytest.raises(CheckpointError, match=r"pos_conv_embed\.conv\.weight_v: file \(32, 8, 16\) vs model \(32, 2, 16\)"):
        build_converted_model(config, converted, str(path))

    args.conv_pos_groups = 4
    torch.save({"args": args, "model": state}, path, _use_new_zipfile_serialization=False)
    ours, saved = convert(tmp_path, path)
    MEASURED["wav2vec2-base (args, legacy format)"] = parity(ours, hf)
    assert saved["arch"] == "wav2vec2" and saved["config"]["normalize_waveform"] is False
    assert {"quantizer.vars", "project_q.weight", "mask_emb"} <= set(saved["dropped_keys"])


def test_finetuned_ctc_checkpoint(tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=4)
    state = fairseq_state(hf, prefix="w2v_encoder.w2v_model.")
    state["w2v_encoder.proj.weight"], state["w2v_encoder.proj.bias"] = torch.randn(12, 32), torch.randn(12)
    pretraining = {"model": fairseq_model_cfg(hf), "task": {"_name": "hubert_pretraining", "normalize": False}}
    cfg = {"model": {"_name": "hubert_ctc", "w2v_path": "/gone/hubert.pt", "w2v_args": pretraining},
           "task": {"_name": "audio_finetuning", "normalize": False}}
    path = tmp_path / "hubert_ft.pt"
    torch.save({"cfg": cfg, "model": state}, path)
    ours, saved = convert(tmp_path, path)
    MEASURED["hubert-base fine-tuned (w2v_args)"] = parity(ours, hf, seconds=0.5)
    assert saved["arch"] == "hubert (fine-tuned)"
    assert {"w2v_encoder.proj.weight", "w2v_encoder.proj.bias"} <= set(saved["dropped_keys"])


# ---- a hydra-era file whose cfg is an omegaconf DictConfig, read without omegaconf ----------


def _fake_omegaconf(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Classes pickled under omegaconf / fairseq names, laid out as omegaconf 2.x pickles them.

    A container pickles its ``__dict__`` (``_metadata``, ``_parent``, ``_content``), a value
    node ``_metadata``, ``_parent``, ``_val``; metadata is a dataclass holding ``ref_type``
    (``typing.Any``), ``object_type`` (the fairseq dataclass) and a ``defaultdict`` cache.
    """
    modules = {name: types.ModuleType(name) for name in (
        "omegaconf", "omegaconf.base", "omegaconf.dictconfig", "omegaconf.nodes",
        "fairseq", "fairseq.dataclass", "fairseq.dataclass.constants", "fairseq.models", "fairseq.models.hubert",
        "fairseq.models.hubert.hubert",
    )}
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)

    def place(cls: type, module: str) -> type:
        cls.__module__, cls.__qualname__ = module, cls.__name__
        setattr(modules[module], cls.__name__, cls)
        return cls

    class ContainerMetadata:
        def __init__(self, key: Any, object_type: Any = None) -> None:
            self.ref_type, self.object_type, self.optional, self.key = typing.Any, object_type, True, key
            self.flags, self.flags_root = {"readonly": False}, False
            self.resolver_cache = collections.defaultdict(dict, {"oc.env": {}})
            self.key_type, self.element_type = typing.Any, typing.Any

    class Metadata(ContainerMetadata):
        pass

    class Node:
        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k != "_flags_cache"}

    class DictConfig(Node):
        def __init__(self, content: dict[str, Any], parent: Any = None, key: Any = None, object_type: Any = None) -> None:
            self._metadata, self._parent, self._flags_cache = ContainerMetadata(key, object_type), parent, None
            self._content = {k: DictConfig(v, self, k) if isinstance(v, dict) else
                             (EnumNode if isinstance(v, enum.Enum) else AnyNode)(v, self, k) for k, v in content.items()}

    class AnyNode(Node):
        def __init__(self, value: Any, parent: Any, key: Any) -> None:
            self._metadata, self._parent, self._flags_cache, self._val = Metadata(key), parent, None, value

    class EnumNode(AnyNode):
        pass

    class HubertConfig:  # the structured-config class a hydra cfg records as object_type
        pass

    Choices = enum.Enum("Choices", [("default", "default"), ("layer_norm", "layer_norm")])
    LayerType = enum.Enum("LayerType", [("transformer", "transformer"), ("conformer", "conformer")])
    for cls, module in ((ContainerMetadata, "omegaconf.base"), (Metadata, "omegaconf.base"), (Node, "omegaconf.base"),
                        (DictConfig, "omegaconf.dictconfig"), (AnyNode, "omegaconf.nodes"), (EnumNode, "omegaconf.nodes"),
                        (HubertConfig, "fairseq.models.hubert.hubert"), (Choices, "fairseq.dataclass.constants"),
                        (LayerType, "fairseq.dataclass.constants")):
        place(cls, module)
    return {"DictConfig": DictConfig, "Choices": Choices, "LayerType": LayerType, "HubertConfig": HubertConfig}


class _ByName:
    """Pickles an enum member the Python >= 3.12 way: ``getattr(EnumClass, member_name)``."""

    def __init__(self, enum_class: type, name: str) -> None:
        self.enum_class, self.name = enum_class, name

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (self.enum_class, self.name)


def test_omegaconf_cfg_read_without_omegaconf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hf = make_hf("hubert", seed=5, **LARGE_STYLE)
    path = tmp_path / "hubert_large.pt"
    with monkeypatch.context() as patch:
        fake = _fake_omegaconf(patch)
        model_cfg = fairseq_model_cfg(hf)
        model_cfg["extractor_mode"] = fake["Choices"]("layer_norm")  # an enum-valued node, pickled by value
        model_cfg["layer_type"] = _ByName(fake["LayerType"], "transformer")  # ... and by name (Python 3.12)
        model_cfg["normalize"] = True
        cfg = fake["DictConfig"]({
            "model": model_cfg,
            "task": {"_name": "hubert_pretraining", "normalize": "${model.normalize}"},  # an interpolation
        })
        cfg._content["model"]._metadata.object_type = fake["HubertConfig"]
        torch.save({"args": None, "cfg": cfg, "model": fairseq_state(hf)}, path)
    assert "omegaconf" not in sys.modules or not hasattr(sys.modules["omegaconf"], "DictConfig")

    loaded = load_fairseq_checkpoint(path)
    assert loaded["cfg"]["model"]["extractor_mode"] == "layer_norm"
    assert loaded["cfg"]["model"]["layer_type"] == "transformer"
    assert loaded["cfg"]["task"]["normalize"] == "${model.normalize}"
    ours, saved = convert(tmp_path, path)
    assert saved["config"]["normalize_waveform"] is True and saved["config"]["extractor_mode"] == "layer_norm"
    MEASURED["hubert-large-style (omegaconf cfg, no omegaconf)"] = parity(ours, hf)

    # --trust-pickle imports what the pickle names: without omegaconf / fairseq that fails, clearly.
    monkeypatch.setitem(sys.modules, "omegaconf", None)
    monkeypatch.setitem(sys.modules, "fairseq", None)
    assert cli.main(["--checkpoint", str(path), "--out", str(tmp_path / "t.pth"), "--trust-pickle"]) == 1


def test_trust_pickle_without_omegaconf_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hydra.pt"
    with monkeypatch.context() as patch:
        fake = _fake_omegaconf(patch)
        torch.save({"cfg": fake["DictConfig"]({"model": {"_name": "hubert"}}), "model": {}}, path)
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # make sure it is not importable here
    with pytest.raises(ConversionError, match=r"needs the module 'omegaconf.*pip install omegaconf"):
        load_fairseq_checkpoint(path, trust_pickle=True)


class _Payload:
    """Pickles as a call to ``exec`` that would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def test_restricted_loader_runs_no_pickled_code(tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=6)
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pt"
    cfg = {"model": fairseq_model_cfg(hf), "task": {"normalize": False}}
    torch.save({"cfg": cfg, "model": fairseq_state(hf), "extra_state": {"meter": _Payload(marker)}}, path)
    config, state = convert_fairseq_checkpoint(path)
    assert not marker.exists()
    build_converted_model(config, state, str(path))

    class _System:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return os.system, ("true",)

    torch.save({"cfg": cfg, "model": fairseq_state(hf), "extra_state": _System()}, path)
    with pytest.raises(ConversionError, match=r"restricted loader could not read .*posix\.system whose module posix is blocked.*trust_pickle=True"):
        load_fairseq_checkpoint(path)


# --------------------------------------------------------------------------------------------
# Config parsing and refusals
# --------------------------------------------------------------------------------------------


def test_conv_feature_layers_parsing() -> None:
    default = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]"
    assert parse_conv_feature_layers(default) == [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_feature_layers("2 * [(8, 3, 1)]") == [(8, 3, 1), (8, 3, 1)]
    assert parse_conv_feature_layers([[4, 2, 2]]) == [(4, 2, 2)]
    for hostile in ("__import__('os').system('true')", "[(1, 2, 3)] * 10**9", "[(1, 2)]", "[(1.5, 2, 3)]", "[x]"):
        with pytest.raises(ConversionError, match="conv_feature_layers"):
            parse_conv_feature_layers(hostile)


def _save(tmp_path: Path, model_cfg: dict[str, Any], state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save({"cfg": {"model": model_cfg, "task": {"normalize": False}}, "model": state}, path)
    return path


def test_unsupported_arch_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = make_hf("hubert", seed=7)
    path = _save(tmp_path, {**fairseq_model_cfg(hf), "_name": "data2vec_audio"}, fairseq_state(hf))
    with pytest.raises(ConversionError, match="unsupported fairseq architecture 'data2vec_audio'"):
        convert_fairseq_checkpoint(path)
    assert cli.main(["--checkpoint", str(path), "--out", str(tmp_path / "x.pth")]) == 1
    assert "data2vec_audio" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value",
    [("activation_fn", "relu"), ("layer_type", "conformer"), ("pos_conv_depth", 5), ("extractor_mode", "batch_norm"),
     ("quantize_input", True), ("encoder_layers_to_keep", "0,1"), ("encoder_attention_heads", 5), ("conv_pos_groups", 3)],
)
def test_unsupported_field_is_named(field: str, value: Any, tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=8)
    path = _save(tmp_path, {**fairseq_model_cfg(hf), field: value}, fairseq_state(hf))
    with pytest.raises(ConversionError, match=f"unsupported {field}="):
        convert_fairseq_checkpoint(path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    hf = make_hf("hubert", seed=9)
    state = fairseq_state(hf)
    state["encoder.layers.0.self_attn.rel_pos.weight"] = torch.zeros(2)
    with pytest.raises(ConversionError, match=r"unrecognised keys encoder\.layers\.0\.self_attn\.rel_pos\.weight"):
        convert_fairseq_checkpoint(_save(tmp_path, fairseq_model_cfg(hf), state))


def test_missing_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hf = make_hf("hubert", seed=10)
    state = fairseq_state(hf)
    del state["encoder.layers.1.fc2.weight"]
    path = _save(tmp_path, fairseq_model_cfg(hf), state)
    config, converted = convert_fairseq_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"missing keys encoder\.transformer\.layers\.1\.feed_forward\.output_dense\.weight"):
        build_converted_model(config, converted, str(path))
    assert cli.main(["--checkpoint", str(path), "--out", str(tmp_path / "x.pth")]) == 1
    assert "layers.1.feed_forward.output_dense.weight" in capsys.readouterr().err


def test_extractor_mode_must_match_the_weights(tmp_path: Path) -> None:
    """A layer_norm-mode file labelled "default" leaves LN weights unplaced: named, not ignored."""
    hf = make_hf("hubert", seed=11, **LARGE_STYLE)
    path = _save(tmp_path, {**fairseq_model_cfg(hf), "extractor_mode": "default"}, fairseq_state(hf))
    config, converted = convert_fairseq_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"unexpected keys feature_extractor\.conv_layers\.1\.layer_norm\.weight"):
        build_converted_model(config, converted, str(path))


def test_report_measured_diffs() -> None:
    """Runs last in this file: prints the per-case max abs diffs (visible with ``-s``)."""
    for case, diff in MEASURED.items():
        print(f"fairseq parity {case}: max abs diff {diff:.2e}")
    assert all(diff <= TOL for diff in MEASURED.values())
