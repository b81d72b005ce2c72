"""``extract_feature.py``: per-layer features for a file list, from waveform and MelHuBERT models."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

import extract_feature
from evaluation.upstream import load_upstream
from export_models import student
from speech_data.normalize import save_mean_std
from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel
from wav2vec2.melhubert_checkpoint import save_checkpoint
from wav2vec2 import save_model

LENGTHS = {"spk-a-0001": 3200, "spk-b-0002": 2100}


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "wavs"
    root.mkdir()
    gen = np.random.default_rng(0)
    lines = [str(root)]
    for name, n in LENGTHS.items():
        soundfile.write(root / f"{name}.wav", (0.1 * gen.standard_normal(n)).astype("float32"), 16000, subtype="FLOAT")
        lines.append(f"{name}.wav\t{n}")
    (tmp_path / "dev.tsv").write_text("\n".join(lines) + "\n")
    return tmp_path / "dev.tsv", root


def test_waveform_model_to_npy(tmp_path, corpus):
    tsv, root = corpus
    model = student("hubert", heterogeneous=True)
    save_model(tmp_path / "student.pth", model)
    assert extract_feature.main(["-c", str(tmp_path / "student.pth"), "-t", str(tsv), "-o", str(tmp_path / "out"), "-m", "dphubert"]) == 0
    for name, n in LENGTHS.items():
        array = np.load(tmp_path / "out" / f"{name}.npy")
        wave = torch.from_numpy(soundfile.read(root / f"{name}.wav", dtype="float32")[0])[None]
        with torch.no_grad():
            ref, _ = model.extract_features(wave)
        assert array.shape == (model.num_layers + 1, ref[0].shape[1], 32) and array.dtype == np.float32
        assert np.abs(array - torch.stack(ref)[:, 0].numpy()).max() <= 1e-5
    assert not list((tmp_path / "out").glob("*.partial*"))


def test_melhubert_to_safetensors_with_statistics(tmp_path, corpus):
    tsv, root = corpus
    torch.manual_seed(0)
    config = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                  encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, num_cluster=10)
    save_checkpoint(tmp_path / "ckpt" / "melhubert.ckpt", MelHuBERTModel(MelHuBERTConfig(config)).eval())
    ckpt = str(tmp_path / "ckpt" / "melhubert.ckpt")
    out = str(tmp_path / "out")
    with pytest.raises(SystemExit, match="no log-Mel statistics"):
        extract_feature.main(["-c", ckpt, "-t", str(tsv), "-o", out])
    stats = np.stack([np.full(40, 12.0), np.full(40, 4.0)])
    save_mean_std(tmp_path / "ckpt" / "mean-std.npy", stats)
    with pytest.raises(SystemExit, match="-f 10 but the model produces 20 ms frames"):
        extract_feature.main(["-c", ckpt, "-t", str(tsv), "-o", out, "-f", "10"])
    assert extract_feature.main(["-c", ckpt, "-t", str(tsv), "-o", out, "-f", "20", "-m", "melhubert",
                                 "--format", "safetensors", "--layer", "2"]) == 0
    upstream = load_upstream(ckpt)
    wave = torch.from_numpy(soundfile.read(root / "spk-a-0001.wav", dtype="float32")[0])[None]
    with torch.no_grad():
        ref, frames = upstream.layers(wave)
    tensors = load_file(str(tmp_path / "out" / "spk-a-0001.safetensors"))
    assert list(tensors) == ["hidden_state_2"]
    assert torch.allclose(tensors["hidden_state_2"], ref[2][0, : int(frames[0])], atol=1e-6)


def test_mode_mismatch_is_refused(tmp_path, corpus):
    tsv, _ = corpus
    save_model(tmp_path / "student.pth", student("wavlm", heterogeneous=False))
    with pytest.raises(SystemExit, match="-m head-pruning expects a MelHuBERT checkpoint"):
        extract_feature.main(["-c", str(tmp_path / "student.pth"), "-t", str(tsv), "-o", str(tmp_path / "o"), "-m", "head-pruning"])
