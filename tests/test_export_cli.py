"""``export.py`` on the model files the toolkit writes: plain, low-rank, weight-pruned, MelHuBERT."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the [hf] extra (transformers) is not installed")
import transformers  # noqa: E402

import export  # noqa: E402
from evaluation.upstream import load_upstream  # noqa: E402
from export_models import low_rank_file, padded_batch, student  # noqa: E402
from wav2vec2 import load_model, save_model  # noqa: E402

TOL = 1e-5


def test_low_rank_file_exports_to_a_stock_class(tmp_path, capsys):
    model = low_rank_file(tmp_path / "lowrank.pth")
    assert export.main([str(tmp_path / "lowrank.pth"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    assert "HubertModel (stock)" in capsys.readouterr().out
    hf = transformers.AutoModel.from_pretrained(tmp_path / "hf").eval()
    waves, lengths = padded_batch()
    one = waves[:1, : lengths[0]]
    with torch.no_grad():
        ours, _ = model.extract_features(one)
        theirs = hf(one, output_hidden_states=True).hidden_states
    assert max((a - b).abs().max().item() for a, b in zip(ours[1:], theirs[1:])) <= TOL


def test_weight_pruned_file_to_safetensors(tmp_path):
    model = student("wavlm", heterogeneous=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    key = "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"
    mask = (torch.rand_like(state[key]) > 0.5).float()
    state[key + "_orig"] = state.pop(key) / torch.where(mask > 0, mask, torch.ones_like(mask))
    state[key + "_mask"] = mask
    torch.save({"state_dict": state, "config": model.config}, tmp_path / "wp.pth")
    assert export.main([str(tmp_path / "wp.pth"), str(tmp_path / "st"), "--format", "safetensors"]) == 0
    back = load_model(tmp_path / "st", verbose=False)
    assert torch.equal(back.state_dict()[key], model.state_dict()[key] * mask)
    reference = load_upstream(tmp_path / "wp.pth").model
    waves, lengths = padded_batch()
    with torch.no_grad():
        a, _ = reference.extract_features(waves, lengths)
        b, _ = back.extract_features(waves, lengths)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_pruned_student_to_remote_code_folder(tmp_path, capsys):
    save_model(tmp_path / "final.pth", student("hubert", heterogeneous=True))
    assert export.main([str(tmp_path / "final.pth"), str(tmp_path / "hf"), "--format", "hf"]) == 0
    out = capsys.readouterr().out
    assert "SpeechSSLCompressModel (remote)" in out and "trust_remote_code=True" in out
    assert "not a stock class: pruned-away attention blocks" in out


def test_melhubert_exports_to_onnx_only(tmp_path):
    from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel
    from wav2vec2.melhubert_checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                  encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, num_cluster=10)
    save_checkpoint(tmp_path / "mel.ckpt", MelHuBERTModel(MelHuBERTConfig(config)).eval())
    with pytest.raises(SystemExit):
        export.main([str(tmp_path / "mel.ckpt"), str(tmp_path / "hf"), "--format", "hf"])
    pytest.importorskip("onnxruntime", reason="the [export] extra (onnxruntime) is not installed")
    pytest.importorskip("onnxscript", reason="the [export] extra (onnxscript) is not installed")
    from wav2vec2.export import HiddenStates
    from wav2vec2.export.onnx import run_onnx

    assert export.main([str(tmp_path / "mel.ckpt"), str(tmp_path / "mel.onnx"), "--format", "onnx", "--legacy_onnx"]) == 0
    model = load_upstream(tmp_path / "mel.ckpt").model
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 40, 80, generator=gen)
    lengths = torch.tensor([40, 23, 31])
    feats = feats * (torch.arange(40)[None, :, None] < lengths[:, None, None])
    with torch.no_grad():
        ref, _ = HiddenStates(model)(feats, lengths)
    got, frames = run_onnx(tmp_path / "mel.onnx", feats, lengths)
    valid = (torch.arange(40)[None, :] < lengths[:, None])[None, :, :, None]
    assert torch.equal(frames, lengths)
    assert ((got - ref).abs() * valid).max().item() <= 1e-4


def test_stage_checkpoint_student_is_pruned_then_exported(tmp_path, tiny_model, capsys):
    from test_pruning import set_pattern

    gated = tiny_model("hubert", prune=("conv", "head", "interm"))
    set_pattern(gated.feature_extractor.conv_layers[1].hard_concrete, [0, 3], seed=1)
    for i, layer in enumerate(gated.encoder.transformer.layers):
        set_pattern(layer.attention.hard_concrete_for_heads, [i], seed=10 + i)
        set_pattern(layer.feed_forward.hard_concrete_for_intermediate, list(range(2 * i + 1)), seed=20 + i)
    state = {f"student.{k}": v for k, v in gated.state_dict().items()}
    torch.save({"student_config": gated.config, "state_dict": state}, tmp_path / "stage1.ckpt")
    assert export.main([str(tmp_path / "stage1.ckpt"), str(tmp_path / "st"), "--format", "safetensors"]) == 0
    assert "gated student pruned" in capsys.readouterr().out
    pruned = load_model(tmp_path / "st", verbose=False)
    assert not any(n.endswith("log_alpha") for n, _ in pruned.named_parameters())
    waves, lengths = padded_batch()
    with torch.no_grad():
        a, _ = gated.eval().extract_features(waves, lengths)
        b, _ = pruned.extract_features(waves, lengths)
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= TOL
