"""Hugging Face export: stock classes for homogeneous students, shipped code for pruned ones.

Every hidden state of the exported model must equal the toolkit's to 1e-5 (fp32):
``hidden_states[0]`` is the transformer input (``transformers``' convention: after the
positional convolution, and the encoder LayerNorm for post-norm models), entry i the output
of layer i; for pre-norm models ``last_hidden_state`` has the final LayerNorm and
``hidden_states[-1]`` does not (``transformers`` 5 default, ``tie_last_hidden_states`` unset).
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
import transformers  # noqa: E402

from export_models import FAMILIES, padded_batch, student  # noqa: E402
from wav2vec2.export.hf import HFExportError, load_hf, save_hf, stock_misfits  # noqa: E402

TOL = 1e-5
STOCK_CLASSES = {"hubert": "HubertModel", "wav2vec2": "Wav2Vec2Model", "wavlm": "WavLMModel"}


def toolkit_states(model, waves, lengths=None) -> list[torch.Tensor]:
    """The toolkit's states in ``transformers``' indexing convention."""
    with torch.no_grad():
        states, _ = model.extract_features(waves, lengths)
        transformer = model.encoder.transformer
        first = transformer._preprocess(states[0])
    return [first] + list(states[1:])


def max_diff(a: list[torch.Tensor], b: tuple[torch.Tensor, ...]) -> float:
    assert len(a) == len(b)
    return max((x - y).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_homogeneous_student_loads_as_stock_class(tmp_path, family, layer_norm_first):
    model = student(family, heterogeneous=False, layer_norm_first=layer_norm_first)
    info = save_hf(model, tmp_path / "out", family=None if family == "wavlm" else family)
    assert info["kind"] == "stock" and info["reasons"] == []
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "model.safetensors", "preprocessor_config.json"]
    hf = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()  # no custom code
    assert type(hf).__name__ == STOCK_CLASSES[family]
    waves, lengths = padded_batch()
    one = waves[:1, : lengths[0]]
    with torch.no_grad():
        out = hf(one, output_hidden_states=True)
    diff = max_diff(toolkit_states(model, one), out.hidden_states)
    print(f"stock {family} pre-norm={layer_norm_first}: max diff {diff:.2e}")
    assert diff <= TOL
    if layer_norm_first:
        with torch.no_grad():
            final = model(one)[0]
        assert (out.last_hidden_state - final).abs().max().item() <= TOL
    else:
        assert torch.equal(out.last_hidden_state, out.hidden_states[-1])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layer_norm_first", [False, True])
def test_pruned_student_ships_its_modeling_code(tmp_path, family, layer_norm_first):
    model = student(family, heterogeneous=True, layer_norm_first=layer_norm_first)
    info = save_hf(model, tmp_path / "out", family=None if family == "wavlm" else family)
    assert info["kind"] == "remote"
    assert "pruned-away attention blocks" in info["reasons"] and "scaled CNN output channels (dummy_weight)" in info["reasons"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_speech_ssl_compress.SpeechSSLCompressModel"
    assert config["per_layer_config"]["1"]["skip"] == ["attention"]
    assert config["per_layer_config"]["2"]["skip"] == ["feed_forward"]
    assert (tmp_path / "out" / "modeling_speech_ssl_compress.py").is_file()
    with pytest.raises(ValueError, match="trust_remote_code"):
        transformers.AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=False)
    hf = transformers.AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    assert hf.config.is_heterogeneous
    assert hf.config.per_layer_config[2].num_attention_heads == (3 if family == "wavlm" else 2)
    assert sum(p.numel() for p in hf.parameters()) == sum(p.numel() for p in model.parameters())

    waves, lengths = padded_batch()
    one = waves[:1, : lengths[0]]
    with torch.no_grad():
        alone = hf(one, output_hidden_states=True)
        batch = hf(waves, attention_mask=(torch.arange(waves.shape[1])[None] < lengths[:, None]).long(), output_hidden_states=True)
    diff_alone = max_diff(toolkit_states(model, one), alone.hidden_states)
    ours_batch = toolkit_states(model, waves, lengths)
    frames = model.num_frames(lengths)
    diff_batch = 0.0
    for row in range(waves.shape[0]):
        valid = slice(0, int(frames[row]))
        ours_row = [s[row, valid] for s in ours_batch]
        hf_row = [s[row, valid] for s in batch.hidden_states]
        diff_batch = max(diff_batch, max_diff(ours_row, tuple(hf_row)))
        # padded == alone: each row's valid frames equal the utterance run on its own
        with torch.no_grad():
            single = hf(waves[row : row + 1, : lengths[row]], output_hidden_states=True).hidden_states
        assert max_diff([s[0] for s in single], tuple(hf_row)) <= TOL
    print(f"remote {family} pre-norm={layer_norm_first}: max diff unpadded {diff_alone:.2e}, padded batch {diff_batch:.2e}")
    assert diff_alone <= TOL and diff_batch <= TOL


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("heterogeneous", [False, True])
def test_import_reads_the_folder_back(tmp_path, family, heterogeneous):
    model = student(family, heterogeneous)
    save_hf(model, tmp_path / "out", family=None if family == "wavlm" else family)
    back = load_hf(tmp_path / "out")
    waves, lengths = padded_batch()
    with torch.no_grad():
        a, _ = model.extract_features(waves, lengths)
        b, _ = back.extract_features(waves, lengths)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= TOL


def test_preprocessor_do_normalize_follows_the_model(tmp_path):
    for normalize in (False, True):
        model = student("hubert", heterogeneous=False)
        model.normalize_waveform = normalize
        save_hf(model, tmp_path / str(normalize))
        assert json.loads((tmp_path / str(normalize) / "preprocessor_config.json").read_text())["do_normalize"] is normalize
        assert load_hf(tmp_path / str(normalize)).normalize_waveform is normalize


def test_gated_student_is_refused(tmp_path, tiny_model):
    gated = tiny_model("hubert", prune=("head",))
    assert any("gates" in r for r in stock_misfits(gated))
    with pytest.raises(HFExportError, match="prune it first"):
        save_hf(gated, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_per_layer_settings_without_heterogeneous_configs():
    """Older transformers keep ``per_layer_config`` as a plain dict; the shipped code reads it by hand."""
    from types import SimpleNamespace

    from wav2vec2.export.modeling_speech_ssl_compress import layer_settings

    config = SimpleNamespace(per_layer_config={"1": {"skip": ["attention"], "intermediate_size": 10}},
                             num_attention_heads=4, intermediate_size=24, remaining_heads=None, skip=None)
    assert layer_settings(config, 0) == {"num_attention_heads": 4, "intermediate_size": 24, "remaining_heads": None, "skip": []}
    assert layer_settings(config, 1) == {"num_attention_heads": 4, "intermediate_size": 10, "remaining_heads": None, "skip": ["attention"]}
