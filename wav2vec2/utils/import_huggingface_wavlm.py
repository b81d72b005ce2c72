"""``import_huggingface_model(hf_model)``: a loaded transformers model -> this package's model.

The name and module of the original DPHuBERT helper (``wav2vec2/utils/import_huggingface_wavlm.py``),
for scripts written against it. It goes through ``wav2vec2.convert`` (strict: a weight that does
not map is an error, where the original loaded with ``strict=False``) and takes HuBERT,
wav2vec 2.0 and WavLM base or task models. For a hub id or a folder use
``wav2vec2.convert.convert_hf_model`` or ``convert_hubert_from_hf.py``.
"""

from __future__ import annotations

from typing import Any, Optional

from ..convert import build_converted_model
from ..convert.hf import config_from_hf, convert_hf_state_dict
from ..model import Wav2Vec2Model


def import_huggingface_model(original: Any, normalize_waveform: Optional[bool] = None) -> Wav2Vec2Model:
    """A transformers ``WavLMModel`` / ``HubertModel`` / ``Wav2Vec2Model`` (or task model) instance -> ours.

    ``normalize_waveform``: None takes the family default (False for post-norm, True for
    stable-layer-norm models), as ``config_from_hf``.
    """
    source = f"transformers {type(original).__name__}"
    config = config_from_hf(original.config, normalize_waveform=normalize_waveform, source=source)
    state_dict = convert_hf_state_dict(original.state_dict(), source=source)
    return build_converted_model(config, state_dict, source=source)
