"""K-means pre-training targets, for any frame-level feature function.

First iteration: cluster normalised 10 ms log-Mel frames. Second (HuBERT-style) iteration: cluster
hidden states of a trained model's layer; the caller passes that model as a feature function, so this
module never depends on a model class. Labels come out at whatever frame rate the feature function
produces.

Fitting uses scikit-learn's ``MiniBatchKMeans`` on the frames of a seeded random subset of utterances
(``fraction`` of them, as in HuBERT's recipe; optionally capped at ``max_frames`` frames by a seeded
uniform subsample). The fitted model is stored as its cluster centres only, a float64 ``.npy`` of
shape (K, D), so loading needs no pickle; prediction (nearest centre in squared Euclidean distance,
first index on ties, float64) reproduces ``MiniBatchKMeans.predict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from tqdm import tqdm

InputT = TypeVar("InputT")
# Maps one utterance's input (waveform tensor, log-Mel tensor, a path, ...) to its frames [T, D].
FeatureFunction = Callable[[InputT], "torch.Tensor | np.ndarray"]

LABEL_DTYPE = np.int64
# Rows per distance block in predict: bounds the [rows, K] score matrix (8192 x 512 x 8 B = 32 MiB).
_PREDICT_CHUNK = 8192


@dataclass(frozen=True)
class KMeansConfig:
    """How to fit the K-means targets. Defaults follow HuBERT's K-means recipe with 512 clusters."""

    num_clusters: int = 512
    # Fraction of utterances (at least one) whose frames are used for fitting.
    fraction: float = 0.1
    # Optional cap on the number of fitting frames; None keeps all frames of the chosen utterances.
    max_frames: int | None = None
    seed: int = 0
    n_init: int = 20
    batch_size: int = 10_000
    max_iter: int = 100
    max_no_improvement: int = 100
    # Threads for fitting (None: all cores). sklearn's OpenMP loops degrade badly on a busy machine,
    # where 1 thread can be much faster.
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.num_clusters < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.num_clusters}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_frames is not None and self.max_frames < self.num_clusters:
            raise ValueError(f"max_frames ({self.max_frames}) must be >= num_clusters ({self.num_clusters})")


@dataclass(frozen=True)
class KMeansModel:
    """Fitted cluster centres, ``centers``: float64 [K, D]."""

    centers: np.ndarray

    def __post_init__(self) -> None:
        if self.centers.ndim != 2 or self.centers.shape[0] < 1:
            raise ValueError(f"centers must be [K, D] with K >= 1, got shape {self.centers.shape}")
        object.__setattr__(self, "centers", np.ascontiguousarray(self.centers, dtype=np.float64))

    @property
    def num_clusters(self) -> int:
        return self.centers.shape[0]

    @property
    def dim(self) -> int:
        return self.centers.shape[1]

    @classmethod
    def from_sklearn(cls, estimator: object) -> KMeansModel:
        """Take the centres of a fitted sklearn ``KMeans``/``MiniBatchKMeans``."""
        return cls(np.asarray(getattr(estimator, "cluster_centers_")))

    def save(self, path: str | Path) -> None:
        """Write the centres as a float64 ``.npy`` of shape (K, D)."""
        np.save(Path(path), self.centers)

    @classmethod
    def load(cls, path: str | Path) -> KMeansModel:
        """Read centres written by ``save``."""
        return cls(np.load(Path(path), allow_pickle=False))

    def predict_tensor(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest-centre labels, computed on ``features``' device.

        Args:
            features: Tensor[T, D].

        Returns:
            int64 Tensor[T] with values in [0, K), on the same device.
        """
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [T, {self.dim}], got shape {tuple(features.shape)}")
        # float64 so that near-ties resolve as in sklearn's float64 predict.
        frames = features.detach().to(torch.float64)
        centers = torch.from_numpy(self.centers).to(frames.device)
        # argmin_k |x - c_k|^2 = argmin_k (|c_k|^2 - 2 x.c_k): |x|^2 is constant per row.
        center_norms = centers.square().sum(dim=1)
        labels = [
            (center_norms - 2.0 * chunk @ centers.T).argmin(dim=1)
            for chunk in frames.split(_PREDICT_CHUNK)
        ]
        if not labels:
            return torch.zeros(0, dtype=torch.int64, device=frames.device)
        return torch.cat(labels)

    def predict(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Nearest-centre labels of features [T, D] as an int64 numpy array [T]."""
        tensor = torch.from_numpy(np.asarray(features)) if not isinstance(features, torch.Tensor) else features
        return self.predict_tensor(tensor).cpu().numpy().astype(LABEL_DTYPE, copy=False)


def choose_fitting_utterances(num_utterances: int, fraction: float, seed: int) -> np.ndarray:
    """Seeded random subset of ``ceil(fraction * N)`` (at least 1) utterance indices, sorted."""
    if num_utterances < 1:
        raise ValueError("no utterances to fit K-means on")
    count = min(num_utterances, max(1, math.ceil(fraction * num_utterances)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_utterances, size=count, replace=False))


def cap_frames(frames: np.ndarray, max_frames: int | None, seed: int) -> np.ndarray:
    """A seeded uniform subsample (without replacement, original order kept) of at most ``max_frames`` rows."""
    if max_frames is None or len(frames) <= max_frames:
        return frames
    # A different stream from the utterance choice, so changing one does not shift the other.
    rng = np.random.default_rng([seed, 1])
    return frames[np.sort(rng.choice(len(frames), size=max_frames, replace=False))]


def frames_as_numpy(features: torch.Tensor | np.ndarray) -> np.ndarray:
    """A feature function's output as a float numpy array [T, D]."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"a feature function must return [T, D] frames, got shape {features.shape}")
    return features


def gather_fitting_frames(
    inputs: Sequence[InputT],
    feature_fn: FeatureFunction,
    config: KMeansConfig,
) -> np.ndarray:
    """Frames for fitting: all frames of the chosen utterances, capped; float64 [N, D]."""
    chosen = choose_fitting_utterances(len(inputs), config.fraction, config.seed)
    with torch.no_grad():
        frames = np.concatenate([frames_as_numpy(feature_fn(inputs[index])) for index in chosen])
    return cap_frames(frames.astype(np.float64, copy=False), config.max_frames, config.seed)


def _progress_estimator(progress: "tqdm | None", **kwargs: object) -> object:
    """A ``MiniBatchKMeans`` whose minibatch steps advance ``progress`` (total = sklearn's step
    budget, ``max_iter`` passes over the data; an early convergence ends the bar there)."""
    from sklearn.cluster import MiniBatchKMeans

    class _WithProgress(MiniBatchKMeans):
        # sklearn has no fit callback; its per-step convergence check is the one place that
        # sees every step with the step budget.
        def _mini_batch_convergence(self, step, n_steps, *args, **kw):  # type: ignore[no-untyped-def]
            if progress is not None:
                if progress.total != n_steps:
                    progress.reset(total=n_steps)
                progress.update(step + 1 - progress.n)
            return super()._mini_batch_convergence(step, n_steps, *args, **kw)

    return _WithProgress(**kwargs) if progress is not None else MiniBatchKMeans(**kwargs)


def fit_kmeans(frames: np.ndarray, config: KMeansConfig, progress: bool = True) -> KMeansModel:
    """Fit ``MiniBatchKMeans`` on frames [N, D] (N >= num_clusters); deterministic for a given seed.

    ``progress``: a tqdm bar (stderr) over the minibatch steps, with ETA.
    """
    # sklearn is slow to import and only fitting needs it; threadpoolctl comes with sklearn.
    from threadpoolctl import threadpool_limits
    from tqdm import tqdm

    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim != 2:
        raise ValueError(f"frames must be [N, D], got shape {frames.shape}")
    if len(frames) < config.num_clusters:
        raise ValueError(
            f"K-means needs at least as many frames as clusters: {len(frames)} frames for "
            f"{config.num_clusters} clusters (raise the fraction or lower the number of clusters)"
        )
    bar = tqdm(desc=f"K-means ({config.num_clusters} clusters, {len(frames)} frames)", unit="step",
               mininterval=1.0) if progress else None
    estimator = _progress_estimator(
        bar,
        n_clusters=config.num_clusters,
        init="k-means++",
        n_init=config.n_init,
        batch_size=config.batch_size,
        max_iter=config.max_iter,
        max_no_improvement=config.max_no_improvement,
        # HuBERT's recipe: never re-seed small clusters at random (keeps fits reproducible and stable).
        reassignment_ratio=0.0,
        compute_labels=False,
        random_state=config.seed,
    )
    try:
        with threadpool_limits(limits=config.num_threads):
            estimator.fit(frames)
    finally:
        if bar is not None:
            bar.close()
    return KMeansModel.from_sklearn(estimator)


def learn_kmeans(inputs: Sequence[InputT], feature_fn: FeatureFunction, config: KMeansConfig) -> KMeansModel:
    """Fit K-means on the frames ``feature_fn`` gives for a seeded subset of ``inputs``.

    Example (second iteration): ``learn_kmeans(mel_features, lambda mel: layer8(mel), config)``
    where ``layer8`` returns Tensor[T', D] at the model's frame rate.
    """
    return fit_kmeans(gather_fitting_frames(inputs, feature_fn, config), config)


def label_inputs(inputs: Iterable[InputT], feature_fn: FeatureFunction, model: KMeansModel) -> Iterator[np.ndarray]:
    """Yield int64 labels [T'] for each input, one per frame of ``feature_fn(input)``."""
    for item in inputs:
        with torch.no_grad():
            features = feature_fn(item)
        if isinstance(features, torch.Tensor):
            if features.dim() != 2:
                raise ValueError(f"a feature function must return [T, D] frames, got shape {tuple(features.shape)}")
            yield model.predict(features)  # stays on the feature function's device
        else:
            yield model.predict(frames_as_numpy(features))
