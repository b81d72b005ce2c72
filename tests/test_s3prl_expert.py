"""The s3prl upstream (``hubconf.py`` + ``evaluation.s3prl_expert``) against s3prl's interface contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hubconf
from export_models import student
from helpers import TINY_CONV_STRIDE
from wav2vec2 import save_model


@pytest.fixture()
def expert(tmp_path):
    model = student("wavlm", heterogeneous=True)
    save_model(tmp_path / "student.pth", model)
    return hubconf.speech_ssl_compress(str(tmp_path / "student.pth")), model


def test_contract(expert):
    upstream, model = expert
    assert isinstance(upstream, nn.Module)
    assert upstream.get_downsample_rates("hidden_states") == TINY_CONV_STRIDE
    with pytest.raises(KeyError, match="unknown feature key"):
        upstream.get_downsample_rates("logits")
    gen = torch.Generator().manual_seed(0)
    wavs = [torch.randn(n, generator=gen) for n in (1600, 900, 1300)]
    with torch.no_grad():
        out = upstream(wavs)
    states = out["hidden_states"]
    assert isinstance(states, list) and len(states) == model.num_layers + 1
    frames = model.num_frames(torch.tensor([1600, 900, 1300]))
    assert torch.equal(out["frame_lengths"], frames)
    assert all(s.shape == (3, int(frames.max()), 32) for s in states)
    assert out["last_hidden_state"] is states[-1]
    # s3prl's length check: frames ~ samples / downsample rate
    assert abs(states[0].shape[1] - 1600 / upstream.get_downsample_rates("hidden_states")) <= 2
    for row, wav in enumerate(wavs):
        with torch.no_grad():
            alone, _ = model.extract_features(wav[None])
        n = int(frames[row])
        assert max((a[0] - s[row, :n]).abs().max().item() for a, s in zip(alone, states)) <= 1e-5
        assert all(torch.all(s[row, n:] == 0) for s in states)


def test_bad_input_is_named(expert):
    upstream, _ = expert
    with pytest.raises(ValueError, match=r"wavs\[1\] has shape \(2, 100\)"):
        upstream([torch.zeros(100), torch.zeros(2, 100)])
    with pytest.raises(ValueError, match="at least one waveform"):
        upstream([])
