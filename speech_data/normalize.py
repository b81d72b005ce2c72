"""Global (corpus-level) per-bin mean/std normalisation of log-Mel features.

The statistics file ``mean-std.npy`` is an array of shape (2, D): row 0 the per-bin mean, row 1 the
per-bin population standard deviation. The released MelHuBERT files are float64 (2, 40); both
float32 and float64 load. We write float64.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

# A bin whose std is (numerically) zero would blow up under division; such a bin carries no
# information, so it is only centred. Real log-Mel stds are ~3-5.
MIN_STD: float = 1e-5


class MeanStdAccumulator:
    """Streams per-bin sum, sum of squares and frame count (float64) over a corpus."""

    def __init__(self, num_bins: int = 40) -> None:
        self.num_bins = num_bins
        self.count = 0
        self.sum = np.zeros(num_bins, dtype=np.float64)
        self.sum_of_squares = np.zeros(num_bins, dtype=np.float64)

    def add(self, features: np.ndarray | torch.Tensor) -> None:
        """Add one utterance, [T, num_bins]."""
        if isinstance(features, torch.Tensor):
            features = features.detach().cpu().numpy()
        self.add_sums(*frame_sums(features))

    def add_sums(self, count: int, total: np.ndarray, total_of_squares: np.ndarray) -> None:
        """Add precomputed sums (``frame_sums``' output), e.g. from a worker process."""
        if total.shape != (self.num_bins,) or total_of_squares.shape != (self.num_bins,):
            raise ValueError(f"expected sums of shape ({self.num_bins},), got {total.shape}, {total_of_squares.shape}")
        self.count += int(count)
        self.sum += total
        self.sum_of_squares += total_of_squares

    def mean_std(self) -> np.ndarray:
        """(2, num_bins) float64: mean, population std (``sqrt(E[x^2] - E[x]^2)``)."""
        if self.count == 0:
            raise ValueError("no frames accumulated; cannot compute mean/std")
        mean = self.sum / self.count
        # Cancellation can leave a tiny negative variance for a constant bin.
        variance = np.maximum(self.sum_of_squares / self.count - mean**2, 0.0)
        return np.stack([mean, np.sqrt(variance)])


def frame_sums(features: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(frame count, per-bin sum, per-bin sum of squares) of features [T, D], sums in float64."""
    if features.ndim != 2:
        raise ValueError(f"features must be [T, D], got shape {features.shape}")
    as_float64 = features.astype(np.float64, copy=False)
    return features.shape[0], as_float64.sum(axis=0), np.square(as_float64).sum(axis=0)


def save_mean_std(path: str | Path, mean_std: np.ndarray) -> None:
    """Write ``mean-std.npy``: float64 (2, D), row 0 mean, row 1 std."""
    mean_std = validate_mean_std(mean_std)
    np.save(Path(path), mean_std)


def load_mean_std(path: str | Path) -> np.ndarray:
    """Read a (2, D) float32 or float64 ``mean-std.npy``; returns float64 (2, D)."""
    array = np.load(Path(path), allow_pickle=False)
    try:
        return validate_mean_std(array)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def validate_mean_std(mean_std: np.ndarray) -> np.ndarray:
    """Check shape (2, D) and finiteness; returns it as float64."""
    mean_std = np.asarray(mean_std)
    if mean_std.ndim != 2 or mean_std.shape[0] != 2:
        raise ValueError(f"mean/std must have shape (2, D), got {mean_std.shape}")
    if not np.all(np.isfinite(mean_std)) or np.any(mean_std[1] < 0):
        raise ValueError("mean/std contains non-finite values or a negative std")
    return mean_std.astype(np.float64, copy=False)


ArrayOrTensor = TypeVar("ArrayOrTensor", np.ndarray, torch.Tensor)


def normalize(features: ArrayOrTensor, mean_std: np.ndarray) -> ArrayOrTensor:
    """Per-bin z-normalisation ``(x - mean) / std``.

    Args:
        features: [..., D] numpy array or tensor.
        mean_std: (2, D) statistics (``load_mean_std``).

    Returns:
        Same shape; a numpy input gives float32 (the storage dtype), a tensor keeps its dtype and
        device. Bins with std < MIN_STD are only centred (divided by 1).
    """
    mean_std = validate_mean_std(mean_std)
    if features.shape[-1] != mean_std.shape[1]:
        raise ValueError(f"features have {features.shape[-1]} bins, mean/std has {mean_std.shape[1]}")
    mean = mean_std[0]
    std = np.where(mean_std[1] < MIN_STD, 1.0, mean_std[1])
    if isinstance(features, torch.Tensor):
        mean_t = torch.as_tensor(mean, dtype=features.dtype, device=features.device)
        std_t = torch.as_tensor(std, dtype=features.dtype, device=features.device)
        return (features - mean_t) / std_t
    return ((features - mean) / std).astype(np.float32)
