"""Compressed models out of the toolkit: Hugging Face folders, ONNX graphs, safetensors files.

Library functions (the top-level ``export.py`` is the command line over them):

- :func:`~wav2vec2.export.hf.save_hf` / :func:`~wav2vec2.export.hf.load_hf`: a
  ``transformers`` folder; stock ``HubertModel`` / ``Wav2Vec2Model`` / ``WavLMModel`` when
  the structure fits one, otherwise a shipped modeling file registered through ``auto_map``;
- :func:`~wav2vec2.export.onnx.save_onnx`: an ONNX graph with dynamic batch and length and a
  ``lengths`` input;
- :func:`~wav2vec2.export.safetensors.save_safetensors`: ``model.safetensors`` + a JSON
  config, which ``wav2vec2.checkpoint.load_model`` reads back.

All of them take a built ``Wav2Vec2Model`` (pruned, gates removed); :func:`dense_copy` turns
the suite's low-rank factors back into plain linear maps first, when a format needs it.
"""

from .graph import HiddenStates, dense_copy

__all__ = ["HiddenStates", "dense_copy"]
