"""Shared fixtures for the test suite.

Generic on purpose: tiny model configs for any test that needs a prunable wav2vec2 / HuBERT /
WavLM model (see ``helpers.py`` for the functions behind them), and a cache of the full-size
published architectures, which are slow-ish to initialise.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import torch

from helpers import tiny_config as _tiny_config
from helpers import tiny_model as _tiny_model


@pytest.fixture
def tiny_config() -> Callable[..., dict[str, Any]]:
    """``tiny_config(family="hubert"|"wavlm", extractor_mode=..., layer_norm_first=..., prune=(...), **overrides)``."""
    return _tiny_config


@pytest.fixture
def tiny_model() -> Callable[..., Any]:
    """``tiny_model(family, seed=0, **tiny_config_kwargs)``: a seeded tiny model in eval mode."""
    return _tiny_model


_FULL_MODELS: dict[str, Any] = {}


@pytest.fixture(scope="session")
def full_model() -> Iterator[Callable[[str], Any]]:
    """``full_model("hubert_base")``: a cached full-size factory model (seed 0, eval mode).

    Shared across the session: treat it as read-only (no ``prune()``, no gate edits, no
    ``train()``). Base-size models and ``hubert_large`` are cached; the other Large ones are
    built fresh on each call to keep memory low (~1.3 GB each).
    """
    import wav2vec2

    def get(name: str) -> Any:
        if name in _FULL_MODELS:
            return _FULL_MODELS[name]
        torch.manual_seed(0)
        model = getattr(wav2vec2, name)().eval()
        if "large" not in name or name == "hubert_large":
            _FULL_MODELS[name] = model
        return model

    yield get
    _FULL_MODELS.clear()


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests with one intra-op thread (restored afterwards).

    The tiny models of these tests are dominated by per-op overhead; with two or more threads
    on a shared, busy machine OpenMP spin-waiting made them 5-50x slower.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
