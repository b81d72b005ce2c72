"""``model.safetensors`` + JSON config exports, read back by ``wav2vec2.load_model``."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from export_models import padded_batch, student
from wav2vec2 import CheckpointError, load_model
from wav2vec2.export.safetensors import FORMAT, save_safetensors


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_round_trip_through_folder_and_file(tmp_path, family):
    model = student(family, heterogeneous=True)
    folder = save_safetensors(model, tmp_path / "out", extra={"source": "test"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    document = json.loads((folder / "config.json").read_text())
    assert document["format"] == FORMAT and document["source"] == "test"
    waves, lengths = padded_batch()
    with torch.no_grad():
        ref, _ = model.extract_features(waves, lengths)
    for path in (folder, folder / "model.safetensors"):
        back = load_model(path, verbose=False)
        with torch.no_grad():
            got, _ = back.extract_features(waves, lengths)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))


def test_safetensors_without_config_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="bare.safetensors: no model config"):
        load_model(path, verbose=False)


def test_wrong_weights_are_refused(tmp_path):
    folder = save_safetensors(student("hubert", heterogeneous=False), tmp_path / "out")
    other = student("hubert", heterogeneous=True)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(folder, verbose=False)
