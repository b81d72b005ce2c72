"""Corpus-scale probing with bounded memory: the memory-mapped fp16 frame cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evaluation.feature_cache import FRAMES_FILE, FrameCache, MemoryBoundError, estimate, extract_to_cache
from evaluation.probing import ProbeConfig, extract_features, read_split, run_probe
from evaluation.upstream import load_upstream
from speech_data.demo_corpus import make_demo_corpus
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")

FAST = ProbeConfig(seed=3, batch_size=8, sid_epochs=3, pr_epochs=1, extract_batch_seconds=4.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache_corpus")
    make_demo_corpus(root / "audio", num_utterances=24, num_speakers=3, seed=2, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(root / "audio", root / "tsv", workers=2, show_progress=False)
    return root / "tsv"


@pytest.fixture(scope="module")
def upstream_path(tmp_path_factory) -> Path:
    config = hubert_base_config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 8, 4], [16, 4, 4], [16, 2, 2], [16, 2, 2]],
        encoder_embed_dim=32, encoder_num_layers=2, encoder_use_attention=[True] * 2, encoder_use_feed_forward=[True] * 2,
        encoder_num_heads=[4] * 2, encoder_head_dim=8, encoder_ff_interm_features=[64] * 2, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=2, encoder_layer_drop=0.0,
    )
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("upstream") / "tiny.pth", wav2vec2_model(**config))


def test_cache_holds_exactly_the_in_memory_frames(corpus: Path, upstream_path: Path, tmp_path: Path) -> None:
    upstream = load_upstream(upstream_path)
    split = read_split(corpus, "train100")
    utterances = split.utterances[:10]
    est = estimate(upstream, utterances, batch_seconds=4.0)
    pooled, cache = extract_to_cache(upstream, split.tsv, utterances, tmp_path / "cache", batch_seconds=4.0, progress=False)
    reference = extract_features(upstream, split.tsv, utterances, keep_frames=True, batch_seconds=4.0)
    assert (tmp_path / "cache" / FRAMES_FILE).stat().st_size == est.frames_bytes
    assert len(cache) == len(utterances)
    torch.testing.assert_close(pooled, reference.pooled, rtol=0, atol=0)
    for k in range(len(utterances)):
        assert cache[k].dtype == torch.float16
        assert torch.equal(cache[k], reference.frames[k])
    # Reopened from disk (index written last, so only a complete cache opens).
    assert torch.equal(FrameCache(tmp_path / "cache")[3], reference.frames[3])


def test_bound_refuses_in_memory_and_the_disk_cache_stays_under_it(corpus: Path, upstream_path: Path, tmp_path: Path) -> None:
    upstream = load_upstream(upstream_path)
    train = read_split(corpus, "train100").utterances
    est = estimate(upstream, train, FAST.extract_batch_seconds)
    # A bound the in-memory frames exceed but the disk cache's resident part fits under.
    bound_gb = (est.on_disk_ram_bytes + (est.in_memory_bytes - est.on_disk_ram_bytes) // 2) / 2**30
    assert est.frames_bytes > bound_gb * 2**30 > est.on_disk_ram_bytes

    messages: list[str] = []
    bounded = ProbeConfig(**{**FAST.__dict__, "memory_bound_gb": bound_gb})
    with pytest.raises(MemoryBoundError, match=r"over the bound of .* GB.*disk cache \(--feature_cache DIR\) would need"):
        run_probe(upstream, corpus, "train100", "test-clean", bounded, log=messages.append)
    assert any("in memory" in m and "with the disk cache" in m for m in messages)  # the estimate came first

    cached = ProbeConfig(**{**bounded.__dict__, "feature_cache": str(tmp_path / "features")})
    result = run_probe(load_upstream(upstream_path), corpus, "train100", "test-clean", cached, log=lambda _: None)
    frames_file = tmp_path / "features" / "train" / FRAMES_FILE
    assert frames_file.stat().st_size > bound_gb * 2**30  # the corpus's frames are larger than the bound
    # Same numbers as the unbounded in-memory run: the cache changes where frames live, not what they are.
    reference = run_probe(load_upstream(upstream_path), corpus, "train100", "test-clean", FAST, log=lambda _: None)
    for task in ("sid", "pr"):
        assert result[task] == reference[task]

    # A second run reuses the complete cache instead of extracting again.
    before = frames_file.stat().st_mtime_ns
    run_probe(load_upstream(upstream_path), corpus, "train100", "test-clean", cached, log=lambda _: None)
    assert frames_file.stat().st_mtime_ns == before


def test_incomplete_cache_is_not_opened(tmp_path: Path) -> None:
    (tmp_path / FRAMES_FILE).write_bytes(np.zeros(8, dtype=np.float16).tobytes())
    with pytest.raises(FileNotFoundError, match="feature cache index not found"):
        FrameCache(tmp_path)
