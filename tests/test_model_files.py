"""The one door in and out of a model file (``wav2vec2.checkpoint``): every format is detected by
content and loads to the same weights, and ``save_model`` never leaves half a file behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_model
from wav2vec2.checkpoint import (
    DPHUBERT_STAGE,
    MELHUBERT,
    TRAIN_WAV2VEC2,
    WAV2VEC2,
    CheckpointError,
    detect_format,
    load_model,
    open_model_file,
    save_model,
)
from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel

TINY_MEL = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                encoder_attention_heads=4, num_cluster=8, conv_pos=4, conv_pos_groups=4)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_format_is_detected_and_loads_the_same_weights(tmp_path: Path) -> None:
    model = tiny_model("hubert")
    plain = save_model(tmp_path / "model.pth", model)
    files = torch.load(plain, weights_only=True)
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "global_step": 3, "wav2vec2": files}, tmp_path / "train.ckpt")
    torch.save({"state_dict": {f"student.{k}": v for k, v in files["state_dict"].items()},
                "student_config": files["config"]}, tmp_path / "stage.ckpt")
    torch.manual_seed(0)
    mel = MelHuBERTModel(MelHuBERTConfig(TINY_MEL)).eval()
    save_model(tmp_path / "mel.ckpt", mel, step=7)

    expected = {"model.pth": WAV2VEC2, "train.ckpt": TRAIN_WAV2VEC2, "stage.ckpt": DPHUBERT_STAGE, "mel.ckpt": MELHUBERT}
    for name, fmt in expected.items():
        opened = open_model_file(tmp_path / name)
        assert opened.format == fmt == detect_format(torch.load(tmp_path / name, weights_only=True))
        assert not opened.model.training
        assert _same_weights(opened.model, mel if fmt == MELHUBERT else model), name
    assert open_model_file(tmp_path / "mel.ckpt").checkpoint["Step"] == 7
    with pytest.raises(CheckpointError, match=r"mel\.ckpt: expected a wav2vec2 model file, found a melhubert file"):
        load_model(tmp_path / "mel.ckpt", verbose=False, family="wav2vec2")


def test_weight_pruning_pairs_are_folded_on_read(tmp_path: Path) -> None:
    model = tiny_model("hubert")
    state = model.state_dict()
    key = "encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"
    mask = (torch.rand_like(state[key]) > 0.5).float()
    pruned = {k: v for k, v in state.items() if k != key}
    pruned[key + "_orig"], pruned[key + "_mask"] = state[key], mask
    torch.save({"state_dict": pruned, "config": dict(model.config)}, tmp_path / "wp.pth")
    opened = open_model_file(tmp_path / "wp.pth")
    assert torch.equal(opened.model.state_dict()[key], state[key] * mask)
    assert opened.notes == ["weight-pruning masks folded into 1 tensors"]


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model("hubert")
    path = save_model(tmp_path / "model.pth", model)
    before = path.read_bytes()

    def crash(payload: object, stream: object) -> None:
        stream.write(b"half a model")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_model(path, tiny_model("hubert", seed=1))
    assert path.read_bytes() == before  # the old file is intact ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]  # ... and no temporary file is left

