"""One interface over every model file of the toolkit: ``Upstream.layers(waveforms, lengths)``.

``load_upstream(spec)`` accepts

* every model file format of the toolkit, read by the one loader
  ``wav2vec2.checkpoint.open_model_file``: wav2vec2-family files (also nested under
  ``"wav2vec2"`` as ``train.py`` writes them; weight-pruning masks folded, low-rank structure
  rebuilt), MelHuBERT checkpoints, and DPHuBERT stage-1 / stage-3 Lightning checkpoints (the
  student, gates included: its MACs formula then counts what ``prune()`` would keep);
* a factory name (``hubert_base``, ``wavlm_base_plus`` ...): randomly initialised (seed 0),
  which is enough for size and speed measurements;
* ``fbank``: no model at all, the normalised log-Mel frames themselves (40 bins, pairs
  stacked to 80 dims at 20 ms, per-utterance normalisation) as the single hidden state:
  SUPERB's FBANK reference row for probing.

MelHuBERT models take normalised log-Mel frames; the ``Upstream`` computes them from the
waveform (Kaldi fbank, ``speech_data.fbank``), normalises them with the corpus statistics
``mean-std.npy`` (given explicitly, or found next to the checkpoint or up to three folders
above it) and stacks pairs of frames for 20 ms models (``feat_emb_dim`` 80). Without
statistics it falls back to per-utterance mean/variance normalisation over the valid frames
and says so in ``notes``: features then differ from the ones the model was trained on.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
from torch import Tensor, nn

from wav2vec2.checkpoint import DPHUBERT_STAGE, CheckpointError, open_model_file
from wav2vec2.components import valid_mask

SAMPLE_RATE = 16_000
MEAN_STD_FILE = "mean-std.npy"
FBANK = "fbank"
FACTORIES = ("hubert_base", "hubert_large", "wav2vec2_base", "wav2vec2_large", "wav2vec2_large_lv60k",
             "wavlm_base_plus", "wavlm_large")


# A model file the loader cannot read; the one loader's error class, so callers catch one thing.
UpstreamError = CheckpointError


@dataclass
class UpstreamInfo:
    """Where a model came from and what was done to load it."""

    name: str
    source: str
    family: str  # "wav2vec2" (wav2vec 2.0 / HuBERT / WavLM), "melhubert" or "fbank"
    notes: list[str] = field(default_factory=list)


class Upstream(nn.Module):
    """A frozen feature extractor: waveforms ``(B, L)`` at 16 kHz -> every hidden state.

    ``layers`` returns ``[h0, ..., hN]`` (h0 = the input projection, h_i = output of layer i),
    each ``(B, T, D)``, and ``frame_lengths`` ``(B,)`` (valid frames per row). No final
    LayerNorm and no layer drop, the convention of ``extract_features`` of both families.
    """

    def __init__(self, model: nn.Module, info: UpstreamInfo, mean_std: Optional[np.ndarray] = None,
                 frame_period_ms: int = 20) -> None:
        super().__init__()
        self.model = model
        self.info = info
        self.frame_period_ms = frame_period_ms
        if mean_std is not None:
            self.register_buffer("mel_mean", torch.as_tensor(mean_std[0], dtype=torch.float32), persistent=False)
            std = np.where(mean_std[1] < 1e-5, 1.0, mean_std[1])  # a dead bin is only centred
            self.register_buffer("mel_std", torch.as_tensor(std, dtype=torch.float32), persistent=False)
        else:
            self.mel_mean = None
            self.mel_std = None

    # ----- description ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def family(self) -> str:
        return self.info.family

    @property
    def num_hidden_states(self) -> int:
        """N + 1: the input projection plus one state per transformer layer."""
        return _num_layers(self.model) + 1

    @property
    def hidden_dim(self) -> int:
        if self.family in ("melhubert", FBANK):
            return int(self.model.embed_dim)
        return int(self.model.encoder.feature_projection.projection.out_features)

    @property
    def frames_per_second(self) -> float:
        return 1000.0 / self.frame_period_ms

    def num_params(self) -> int:
        """``sum(p.numel())`` of the feature extractor (MelHuBERT's cluster head excluded)."""
        return sum(p.numel() for n, p in self.model.named_parameters() if not _is_head(self.family, n))

    # ----- forward ---------------------------------------------------------------------------
    def model_inputs(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        """What the wrapped model's ``extract_features`` takes: ``(inputs, lengths)``.

        wav2vec2 family: the waveforms ``(B, L)`` and sample lengths. MelHuBERT: normalised (and
        stacked) log-Mel ``(B, T, F)`` in float32 and frame lengths; padded frames are zero,
        as when an utterance is featurised alone.
        """
        if waveforms.ndim != 2:
            raise ValueError(f"{self.name}: expected waveforms (batch, samples), got shape {tuple(waveforms.shape)}")
        if lengths is None:
            lengths = torch.full((waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device)
        lengths = lengths.to(waveforms.device)
        if self.family not in ("melhubert", FBANK):
            return waveforms, lengths
        from speech_data.fbank import log_mel_fbank, num_frames, stack_frames, stacked_num_frames

        # The front end stays in float32 even under autocast: FFT and log in bf16 lose the features.
        with torch.autocast(waveforms.device.type, enabled=False):
            feats = log_mel_fbank(waveforms.float())  # (B, T10, 40)
            frames = num_frames(lengths)
            mask = valid_mask(frames, feats.shape[1]).unsqueeze(-1).to(feats.dtype)  # (B, T10, 1)
            if self.mel_mean is not None:
                feats = (feats - self.mel_mean) / self.mel_std
            else:
                count = mask.sum(1, keepdim=True).clamp(min=1.0)
                mean = (feats * mask).sum(1, keepdim=True) / count
                var = (((feats - mean) * mask) ** 2).sum(1, keepdim=True) / count
                feats = (feats - mean) * torch.rsqrt(var + 1e-5)
            feats = feats * mask
            if self.frame_period_ms == 20:
                feats = stack_frames(feats)
                frames = stacked_num_frames(frames)
        return feats, frames

    def layers(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[list[Tensor], Tensor]:
        """waveforms ``(B, L)``, lengths ``(B,)`` samples -> ``([h0..hN] each (B, T, D), frame_lengths (B,))``."""
        inputs, input_lengths = self.model_inputs(waveforms, lengths)
        states, frame_lengths = self.model.extract_features(inputs, input_lengths)
        if frame_lengths is None:  # only when the model was given no lengths
            frame_lengths = torch.full((inputs.shape[0],), states[0].shape[1], dtype=torch.long, device=inputs.device)
        return states, frame_lengths

    def forward(self, waveforms: Tensor, lengths: Optional[Tensor] = None) -> tuple[list[Tensor], Tensor]:
        return self.layers(waveforms, lengths)

    def frame_lengths(self, num_samples: Tensor) -> Tensor:
        """Valid frames for utterances of ``num_samples`` samples, ``(B,)``, without a forward pass."""
        if self.family in ("melhubert", FBANK):
            from speech_data.fbank import num_frames, stacked_num_frames

            frames = num_frames(num_samples)
            return stacked_num_frames(frames) if self.frame_period_ms == 20 else frames
        return self.model.num_frames(num_samples)


class FbankIdentity(nn.Module):
    """The ``fbank`` pseudo-model: ``extract_features`` returns its input as the only state."""

    num_layers = 0
    embed_dim = 80

    def extract_features(self, features: Tensor, lengths: Optional[Tensor] = None) -> tuple[list[Tensor], Optional[Tensor]]:
        """features ``(B, T, 80)`` stacked normalised log-Mel -> ``([features], lengths)``."""
        return [features], lengths


def _num_layers(model: nn.Module) -> int:
    return int(model.num_layers)


def _is_head(family: str, parameter_name: str) -> bool:
    # MelHuBERT's K-means classifier is a pre-training head, not part of the upstream (SUPERB
    # counts upstream parameters only); the wav2vec2 family keeps everything it was given.
    return family == "melhubert" and parameter_name.startswith("final_proj.")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_upstream(
    spec: str | os.PathLike[str],
    mean_std: Optional[str | os.PathLike[str]] = None,
    name: Optional[str] = None,
    map_location: str | torch.device = "cpu",
) -> Upstream:
    """Load ``spec`` (a model file or a factory name) as an ``Upstream`` in eval mode.

    Raises FileNotFoundError for a missing file and ``UpstreamError`` (naming the file and
    the keys it holds) for anything that is not a model of a known family.
    """
    text = str(spec)
    path = Path(spec)
    if not path.exists() and text in FACTORIES:
        return _factory(text, name)
    if not path.exists() and text == FBANK:
        info = UpstreamInfo(name or FBANK, FBANK, FBANK, ["log-Mel features, no model (per-utterance normalisation)"])
        return Upstream(FbankIdentity(), info, frame_period_ms=20).eval()
    if not path.is_file():
        hint = f" (or a factory name: {', '.join(FACTORIES + (FBANK,))})"
        raise FileNotFoundError(f"model file not found: {path}{hint}")
    opened = open_model_file(path, map_location)
    model, label = opened.model, name or path.stem
    info = UpstreamInfo(label, str(path), opened.family, list(opened.notes))
    if opened.family == "melhubert":
        stats = _find_mean_std(path, mean_std, info)
        period = _melhubert_frame_period(opened.checkpoint, int(model.config.feat_emb_dim), str(path))
        return Upstream(model, info, stats, period).eval()
    if mean_std is not None:
        warnings.warn(f"{path}: --mean_std is only used by MelHuBERT models; ignored", stacklevel=2)
    if opened.format == DPHUBERT_STAGE and any(n.endswith("log_alpha") for n, _ in model.named_parameters()):
        info.notes.append("gated student (not pruned yet): runs dense; formula MACs count what prune() keeps")
    return Upstream(model, info, frame_period_ms=_wav2vec2_frame_period(model)).eval()


def _factory(name: str, label: Optional[str]) -> Upstream:
    import wav2vec2

    torch.manual_seed(0)
    model = getattr(wav2vec2, name)().eval()
    info = UpstreamInfo(label or name, f"factory:{name}", "wav2vec2", ["random weights (factory architecture)"])
    return Upstream(model, info, frame_period_ms=_wav2vec2_frame_period(model)).eval()


def _wav2vec2_frame_period(model: nn.Module) -> int:
    """Frame period in ms from the CNN's total stride (320 samples = 20 ms for every published model)."""
    stride = 1
    for block in model.feature_extractor.conv_layers:
        stride *= block.stride
    return max(1, round(stride * 1000 / SAMPLE_RATE))


def _melhubert_frame_period(checkpoint: Mapping[str, Any], feat_emb_dim: int, source: str) -> int:
    """20 ms (stacked pairs) when the runner recorded it or the input has 80 dims, else 10 ms."""
    runner = checkpoint.get("Runner")
    recorded = None
    if isinstance(runner, Mapping):
        section = runner.get("runner") if isinstance(runner.get("runner"), Mapping) else runner
        recorded = section.get("frame_period_ms")
    if recorded is not None:
        period = int(recorded)
        if period not in (10, 20):
            raise UpstreamError(f"{source}: Runner.frame_period_ms must be 10 or 20, found {recorded}")
        return period
    if feat_emb_dim == 80:
        return 20
    if feat_emb_dim == 40:
        return 10
    raise UpstreamError(f"{source}: cannot tell the frame period from feat_emb_dim {feat_emb_dim} (expected 40 or 80)")


def _find_mean_std(path: Path, explicit: Optional[str | os.PathLike[str]], info: UpstreamInfo) -> Optional[np.ndarray]:
    from speech_data.normalize import load_mean_std

    if explicit is not None:
        return load_mean_std(explicit)
    folder = path.resolve().parent
    for candidate in [folder, *list(folder.parents)[:3]]:
        if (candidate / MEAN_STD_FILE).is_file():
            info.notes.append(f"log-Mel statistics from {candidate / MEAN_STD_FILE}")
            return load_mean_std(candidate / MEAN_STD_FILE)
    info.notes.append(f"no {MEAN_STD_FILE} given or found near the checkpoint: per-utterance normalisation "
                      f"(pass --mean_std for the training statistics)")
    warnings.warn(f"{path}: {info.notes[-1]}", stacklevel=3)
    return None
