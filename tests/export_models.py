"""Tiny students for the export tests: homogeneous (fits a stock class) and heterogeneous.

Heterogeneous = what DPHuBERT's pruning leaves: per-layer heads and FFN widths, a pruned-away
attention block and FFN block, pruned CNN channels, a non-trivial ``dummy_weight`` scale and,
for WavLM, layers that keep a subset of their original heads.
"""

from __future__ import annotations

import torch

from helpers import randomize_, tiny_config
import wav2vec2
from wav2vec2.low_rank import LowRankLinear

FAMILIES = ("hubert", "wav2vec2", "wavlm")
HETERO_CONV = [[16, 10, 5], [9, 3, 2], [16, 3, 2], [7, 2, 2]]


def student(family: str, heterogeneous: bool, layer_norm_first: bool = False, seed: int = 0) -> wav2vec2.Wav2Vec2Model:
    """A seeded tiny model in eval mode; ``family`` "wav2vec2" builds the HuBERT architecture."""
    arch = "wavlm" if family == "wavlm" else "hubert"
    overrides = {}
    if heterogeneous:
        overrides["conv"] = HETERO_CONV
        overrides["encoder_ff_interm_features"] = [24, 10, 0]
        overrides["encoder_use_attention"] = [True, False, True]
        if arch == "wavlm":
            overrides["encoder_remaining_heads"] = [[0, 2], [], [1, 2, 3]]
        else:
            overrides["encoder_num_heads"] = [4, 0, 2]
    extractor = "layer_norm" if layer_norm_first else "group_norm"
    torch.manual_seed(seed)
    model = wav2vec2.wav2vec2_model(**tiny_config(arch, extractor, layer_norm_first, **overrides))
    randomize_(model, seed)
    if heterogeneous:
        with torch.no_grad():
            generator = torch.Generator().manual_seed(seed + 7)
            model.feature_extractor.dummy_weight.copy_(0.5 + torch.rand(model.feature_extractor.dummy_weight.shape, generator=generator))
    return model.eval()


def padded_batch(lengths=(1600, 1100, 700), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Waveforms ``(B, max(lengths))`` with zeros after each row's length, and the lengths ``(B,)``."""
    generator = torch.Generator().manual_seed(seed)
    waves = torch.randn(len(lengths), max(lengths), generator=generator)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    waves = waves * (torch.arange(waves.shape[1])[None, :] < lengths_t[:, None])
    return waves, lengths_t


def low_rank_file(path):
    """A homogeneous student whose layer-0 FFN input map is factorised (rank 5), as the suite saves it."""
    model = student("hubert", heterogeneous=False)
    name = "encoder.transformer.layers.0.feed_forward.intermediate_dense"
    model.get_submodule(name.rpartition(".")[0]).intermediate_dense = LowRankLinear.from_linear(model.get_submodule(name), 5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": {**model.config, "low_rank": {name: 5}}}, path)
    return model
