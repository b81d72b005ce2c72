"""``model.safetensors`` + JSON config: the toolkit's model file without pickle.

Layout of an export folder: ``model.safetensors`` (the state dict; its metadata holds the
config as JSON under ``config`` and ``format = speech-ssl-compress``) and ``config.json``
(the same config, for people and tools that do not open the weights). The config is the
``wav2vec2_model(**config)`` dict, so ``wav2vec2.checkpoint.load_model`` rebuilds the model
from either the ``.safetensors`` file or the folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

FORMAT = "speech-ssl-compress"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_safetensors(model: Any, folder: str | os.PathLike[str], extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` for a built ``Wav2Vec2Model``.

    ``extra`` (JSON-able) is stored next to the config (e.g. where the model came from).
    Both files are written under temporary names and renamed, so a failed export leaves no
    half-written model. Returns the folder.
    """
    from safetensors.torch import save_file

    from ..state_dicts import plain

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = plain(model.config)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    document = {"format": FORMAT, "config": config, **dict(extra or {})}
    weights_tmp = folder / (WEIGHTS_NAME + ".partial")
    config_tmp = folder / (CONFIG_NAME + ".partial")
    save_file(state, str(weights_tmp), metadata={"format": FORMAT, "config": json.dumps(config)})
    config_tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(weights_tmp, folder / WEIGHTS_NAME)
    os.replace(config_tmp, folder / CONFIG_NAME)
    return folder


def is_safetensors_model(path: str | os.PathLike[str]) -> bool:
    """True for a ``.safetensors`` file, or a folder holding ``model.safetensors`` and our config.json."""
    path = Path(path)
    if path.is_file():
        return path.suffix == ".safetensors"
    config = path / CONFIG_NAME
    if not (path / WEIGHTS_NAME).is_file() or not config.is_file():
        return False
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(config, state_dict)`` from a ``.safetensors`` file or an export folder.

    The config comes from the file's metadata, else from ``config.json`` beside it.
    Raises ``CheckpointError`` naming the file when neither holds one.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ..state_dicts import CheckpointError

    path = Path(path)
    weights = path / WEIGHTS_NAME if path.is_dir() else path
    if not weights.is_file():
        raise FileNotFoundError(f"model file not found: {weights}")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata() or {}
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types; re-raised with the file named
        raise CheckpointError(f"{weights}: not a readable safetensors file ({error})") from error
    if "config" in metadata:
        return json.loads(metadata["config"]), state
    sidecar = weights.with_name(CONFIG_NAME)
    if sidecar.is_file():
        document = json.loads(sidecar.read_text(encoding="utf-8"))
        if document.get("format") == FORMAT and isinstance(document.get("config"), dict):
            return document["config"], state
    raise CheckpointError(f"{weights}: no model config (neither in the file's metadata nor in {sidecar} with format {FORMAT!r})")
