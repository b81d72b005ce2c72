"""Kaldi-compatible log-Mel filterbank features and the 20 ms frame period.

MelHuBERT's input is Kaldi's ``compute-fbank-feats`` output (equivalently torchaudio's
``compliance.kaldi.fbank``) with 40 Mel bins, a 25 ms Hamming window and a 10 ms shift, computed on
int16-scale audio. This module reimplements that definition in plain torch so it runs batched on
CPU or GPU without torchaudio:

per frame of ``window_length`` samples (snip_edges: only frames that fit entirely in the signal)
    1. remove the DC offset (subtract the frame mean),
    2. pre-emphasis ``y[i] = x[i] - 0.97 x[i-1]`` with ``x[-1] := x[0]``,
    3. Hamming window ``0.54 - 0.46 cos(2 pi i / (N - 1))``,
    4. zero-pad to the next power of two (400 -> 512) and take the power spectrum,
    5. triangular Mel filters, equally spaced on Kaldi's ``1127 ln(1 + f / 700)`` scale between
       20 Hz and Nyquist, applied to FFT bins 0..fft_size/2 - 1 (Kaldi never uses the Nyquist bin),
    6. natural log, floored at float32 epsilon.

Dither is 0 and there is no energy coefficient. The 20 ms frame period of MelHuBERT stacks pairs of
10 ms frames (``stack_frames``) and keeps every other 10 ms label (``halve_labels``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

# Kaldi floors Mel energies at std::numeric_limits<float>::epsilon() before the log.
LOG_FLOOR: float = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class FbankConfig:
    """Options of the Kaldi fbank computation; the defaults are MelHuBERT's."""

    sample_rate: int = 16_000
    num_mel_bins: int = 40
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    preemphasis: float = 0.97
    low_freq_hz: float = 20.0
    # Kaldi convention: a value <= 0 is an offset from the Nyquist frequency (0 -> Nyquist).
    high_freq_hz: float = 0.0
    # Audio arrives as floats in [-1, 1]; the features are defined on int16-scale samples.
    waveform_scale: float = 2.0**15

    @property
    def window_length(self) -> int:
        """Samples per analysis window (400 at 16 kHz / 25 ms)."""
        return int(self.sample_rate * self.frame_length_ms / 1000)

    @property
    def window_shift(self) -> int:
        """Samples between frame starts (160 at 16 kHz / 10 ms)."""
        return int(self.sample_rate * self.frame_shift_ms / 1000)

    @property
    def fft_size(self) -> int:
        """Window length rounded up to a power of two (512 for 400)."""
        return 1 << (self.window_length - 1).bit_length()


DEFAULT_FBANK_CONFIG = FbankConfig()


def kaldi_mel_scale(frequency_hz: np.ndarray | float) -> np.ndarray | float:
    """Kaldi's Mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(frequency_hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=16)
def _mel_filterbank_numpy(config: FbankConfig) -> np.ndarray:
    nyquist = 0.5 * config.sample_rate
    high_freq = config.high_freq_hz if config.high_freq_hz > 0 else nyquist + config.high_freq_hz
    if not 0.0 <= config.low_freq_hz < high_freq <= nyquist:
        raise ValueError(
            f"need 0 <= low_freq ({config.low_freq_hz}) < high_freq ({high_freq}) <= Nyquist ({nyquist})"
        )
    num_fft_bins = config.fft_size // 2
    mel_low = kaldi_mel_scale(config.low_freq_hz)
    mel_high = kaldi_mel_scale(high_freq)
    mel_step = (mel_high - mel_low) / (config.num_mel_bins + 1)
    bin_index = np.arange(config.num_mel_bins, dtype=np.float64)[None, :]
    left = mel_low + bin_index * mel_step
    centre = left + mel_step
    right = centre + mel_step
    fft_bin_mel = kaldi_mel_scale(np.arange(num_fft_bins) * (config.sample_rate / config.fft_size))[:, None]
    rising = (fft_bin_mel - left) / (centre - left)
    falling = (right - fft_bin_mel) / (right - centre)
    weights = np.where(fft_bin_mel <= centre, rising, falling)
    # Kaldi keeps a filter weight only strictly inside (left, right).
    weights = np.where((fft_bin_mel > left) & (fft_bin_mel < right), weights, 0.0)
    # Row for the Nyquist bin, which the filters never touch.
    return np.concatenate([weights, np.zeros((1, config.num_mel_bins))], axis=0)


def mel_filterbank(
    config: FbankConfig = DEFAULT_FBANK_CONFIG,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Kaldi triangular Mel filters as a matrix.

    Returns:
        Tensor[fft_size // 2 + 1, num_mel_bins]; multiply a power spectrum [..., fft_size // 2 + 1]
        by it to get Mel energies.
    """
    return torch.from_numpy(_mel_filterbank_numpy(config)).to(device=device, dtype=dtype)


def hamming_window(length: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Kaldi's (symmetric) Hamming window, Tensor[length]."""
    index = torch.arange(length, dtype=torch.float64)
    window = 0.54 - 0.46 * torch.cos(2 * math.pi * index / (length - 1))
    return window.to(device=device, dtype=dtype)


IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor, np.ndarray)


def num_frames(num_samples: IntOrTensor, config: FbankConfig = DEFAULT_FBANK_CONFIG) -> IntOrTensor:
    """Frames Kaldi produces with snip_edges=True: ``1 + (samples - 400) // 160``, 0 if shorter than a window.

    Works elementwise for an int, an integer numpy array or an integer tensor (e.g. the sample lengths
    of a padded batch, giving the number of valid frames of each row of ``log_mel_fbank``'s output).
    """
    window, shift = config.window_length, config.window_shift
    if isinstance(num_samples, torch.Tensor):
        counts = 1 + torch.div(num_samples - window, shift, rounding_mode="floor")
        return torch.where(num_samples >= window, counts, torch.zeros_like(counts))
    if isinstance(num_samples, np.ndarray):
        return np.where(num_samples >= window, 1 + (num_samples - window) // shift, 0)
    return 1 + (num_samples - window) // shift if num_samples >= window else 0


def log_mel_fbank(
    waveforms: torch.Tensor,
    num_mel_bins: int | None = None,
    config: FbankConfig | None = None,
) -> torch.Tensor:
    """Kaldi log-Mel filterbank of float waveforms in [-1, 1].

    Args:
        waveforms: Tensor[B, S] or Tensor[S], floating point, on any device. Rows of a padded batch
            may be longer than their audio; frame t of row b is valid for ``t < num_frames(len_b)``
            and the valid frames equal those computed on the unpadded row.
        num_mel_bins: Mel bins; when given it overrides ``config.num_mel_bins`` (40, MelHuBERT's).
        config: fbank options; MelHuBERT's defaults when None.

    Returns:
        Tensor[B, T, num_mel_bins] (Tensor[T, num_mel_bins] for 1-D input), same dtype and device as
        the input, with ``T = num_frames(S)``.
    """
    config = config or DEFAULT_FBANK_CONFIG
    if num_mel_bins is not None and num_mel_bins != config.num_mel_bins:
        config = dataclasses.replace(config, num_mel_bins=num_mel_bins)
    num_mel_bins = config.num_mel_bins
    if not waveforms.is_floating_point():
        raise TypeError(f"waveforms must be floating point in [-1, 1], got {waveforms.dtype}")
    single = waveforms.dim() == 1
    if single:
        waveforms = waveforms.unsqueeze(0)
    if waveforms.dim() != 2:
        raise ValueError(f"waveforms must be [S] or [B, S], got shape {tuple(waveforms.shape)}")
    batch, num_samples = waveforms.shape
    device, dtype = waveforms.device, waveforms.dtype
    frame_count = num_frames(num_samples, config)
    if frame_count == 0:
        empty = waveforms.new_zeros((batch, 0, num_mel_bins))
        return empty[0] if single else empty

    # [B, T, window]: a strided view, materialised by the first arithmetic below.
    frames = (waveforms * config.waveform_scale).unfold(-1, config.window_length, config.window_shift)
    frames = frames - frames.mean(dim=-1, keepdim=True)
    # Kaldi's pre-emphasis treats the sample before the frame as the frame's first sample.
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames - config.preemphasis * previous
    frames = frames * hamming_window(config.window_length, device, dtype)
    spectrum = torch.fft.rfft(frames, n=config.fft_size, dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    mel_energies = power @ mel_filterbank(config, device, dtype)
    features = mel_energies.clamp_min(LOG_FLOOR).log()
    return features[0] if single else features


# ----------------------------------------------------------------------------------------------
# 20 ms frame period: stack pairs of 10 ms frames, keep the labels of the even frames.
# ----------------------------------------------------------------------------------------------

ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def stack_frames(features: ArrayOrTensor) -> ArrayOrTensor:
    """Stack pairs of 10 ms frames into 20 ms frames.

    Args:
        features: [..., T, D] numpy array or tensor (e.g. [T, 40], or a zero-padded batch [B, T, 40]).

    Returns:
        [..., ceil(T / 2), 2 D] of the same type, dtype and device, where frame t is
        ``concat(x[2t], x[2t + 1])``; when T is odd the last frame's second half is zeros. For a batch
        zero-padded to T, row b's first ``ceil(len_b / 2)`` frames equal stacking row b alone.
    """
    length, dim = features.shape[-2], features.shape[-1]
    if length % 2:
        pad_shape = (*features.shape[:-2], 1, dim)
        if isinstance(features, torch.Tensor):
            zeros = features.new_zeros(pad_shape)
            features = torch.cat([features, zeros], dim=-2)
        else:
            features = np.concatenate([features, np.zeros(pad_shape, dtype=features.dtype)], axis=-2)
    # Row-major reshape puts frame 2t's dims first, then frame 2t+1's.
    return features.reshape(*features.shape[:-2], (length + 1) // 2, 2 * dim)


def stacked_num_frames(num_frames_10ms: IntOrTensor) -> IntOrTensor:
    """Number of 20 ms frames, ``ceil(T / 2)``, for an int, integer array or integer tensor."""
    return (num_frames_10ms + 1) // 2


def halve_labels(labels: ArrayOrTensor, num_stacked_frames: int) -> ArrayOrTensor:
    """Labels for 20 ms frames.

    Args:
        labels: [L] labels, either at 10 ms (L = T) or already at 20 ms (L = ceil(T / 2)).
        num_stacked_frames: ceil(T / 2), the length of ``stack_frames``' output.

    Returns:
        [num_stacked_frames]: ``labels`` unchanged if its length already matches, else ``labels[::2]``
        (the label of each stacked frame's even-index 10 ms frame).

    Raises:
        ValueError: if neither reading gives ``num_stacked_frames`` labels.
    """
    if len(labels) == num_stacked_frames:
        return labels
    halved = labels[::2]
    if len(halved) != num_stacked_frames:
        raise ValueError(
            f"{len(labels)} labels fit neither {num_stacked_frames} stacked frames nor their 10 ms count"
        )
    return halved
