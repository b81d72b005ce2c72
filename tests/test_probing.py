"""Probing: edit distance, CTC decoding, label reading, and a deterministic run on a tiny corpus."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from evaluation.probing import (
    ProbeConfig,
    Utterance,
    _sid_split,
    char_units,
    ctc_feasible,
    ctc_greedy_decode,
    edit_distance,
    error_rate,
    read_split,
    run_probe,
    summary_line,
)
from evaluation.upstream import Upstream, UpstreamInfo, load_upstream
from speech_data.demo_corpus import make_demo_corpus
from speech_data.prepare import prepare_file_lists
from wav2vec2.checkpoint import save_model
from wav2vec2.model import hubert_base_config, wav2vec2_model

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------
# Edit distance and decoding
# ------------------------------------------------------------------------------------------


def test_edit_distance_known_cases() -> None:
    assert edit_distance([], []) == 0
    assert edit_distance(list("abc"), list("abc")) == 0
    assert edit_distance(list("abc"), []) == 3 and edit_distance([], list("ab")) == 2
    assert edit_distance(list("kitten"), list("sitting")) == 3  # 2 substitutions + 1 insertion
    assert edit_distance(list("flaw"), list("lawn")) == 2  # 1 deletion + 1 insertion
    assert edit_distance(["ð", "ə"], ["ð", "ɪ"]) == 1  # multi-character phone symbols are single tokens
    assert edit_distance(list("abcd"), list("acbd")) == 2  # no transpositions in Levenshtein


def test_error_rate_is_corpus_level() -> None:
    refs = [["a", "b", "c", "d"], ["e", "f"]]
    assert error_rate(refs, refs) == 0.0
    # 1 error in 4 tokens + 2 errors in 2 tokens: 3 / 6, not the mean of 0.25 and 1.0.
    assert error_rate(refs, [["a", "b", "x", "d"], []]) == pytest.approx(0.5)
    assert error_rate([["a"]], [["a", "b", "c"]]) == pytest.approx(2.0)  # insertions can exceed 100 %
    with pytest.raises(ValueError):
        error_rate([[]], [["a"]])


def test_ctc_greedy_decode_merges_repeats_and_drops_blanks() -> None:
    path = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0, 3, 3]])
    log_probs = torch.nn.functional.one_hot(path, 4).float().log_softmax(-1)
    assert ctc_greedy_decode(log_probs, torch.tensor([10])) == [[1, 1, 2, 3]]
    assert ctc_greedy_decode(log_probs, torch.tensor([4])) == [[1]]  # frames past the length are ignored


def test_char_units_and_ctc_feasibility() -> None:
    assert char_units("IT'S A  CAT") == ["I", "T", "'", "S", "|", "A", "|", "C", "A", "T"]
    assert ctc_feasible(3, ["a", "b", "c"]) and not ctc_feasible(3, ["a", "a", "b"]) and ctc_feasible(4, ["a", "a", "b"])
    assert not ctc_feasible(10, [])


def test_sid_split_holds_out_training_utterances_when_speakers_are_disjoint() -> None:
    train = [Utterance(i, f"u{i}", 1000, speaker=str(i % 3), units=None) for i in range(30)]
    test = [Utterance(i, f"t{i}", 1000, speaker="99", units=None) for i in range(5)]
    fit, held, scored, dropped, split = _sid_split(train, test, seed=0)
    assert not scored and len(dropped) == 5 and "held-out" in split
    assert len(held) == 3 and not set(held) & set(fit) and len(fit) + len(held) == 30
    assert {train[k].speaker for k in held} == {"0", "1", "2"}
    assert _sid_split(train, test, seed=0) == (fit, held, scored, dropped, split)  # seeded


# ------------------------------------------------------------------------------------------
# A run on a tiny synthetic corpus
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_corpus")
    make_demo_corpus(root / "audio", num_utterances=64, num_speakers=4, seed=5, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(root / "audio", root / "tsv", workers=2, show_progress=False)
    return root / "tsv"


@pytest.fixture(scope="module")
def tiny_upstream_path(tmp_path_factory) -> Path:
    # Standard 20 ms frame rate (total stride 320) so CTC has the usual frames per phone.
    config = hubert_base_config(
        extractor_conv_layer_config=[[16, 10, 5], [16, 8, 4], [16, 4, 4], [16, 2, 2], [16, 2, 2]],
        encoder_embed_dim=32, encoder_num_layers=2, encoder_use_attention=[True] * 2, encoder_use_feed_forward=[True] * 2,
        encoder_num_heads=[4] * 2, encoder_head_dim=8, encoder_ff_interm_features=[64] * 2, encoder_pos_conv_kernel=8,
        encoder_pos_conv_groups=4, encoder_layer_drop=0.0,
    )
    torch.manual_seed(0)
    return save_model(tmp_path_factory.mktemp("upstream") / "tiny.pth", wav2vec2_model(**config))


FAST = ProbeConfig(seed=3, batch_size=8, sid_epochs=6, pr_epochs=2, sid_learning_rate=5e-3, pr_learning_rate=5e-3)


def _without_timings(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


def test_probe_runs_in_range_and_is_deterministic(corpus: Path, tiny_upstream_path: Path) -> None:
    upstream = load_upstream(tiny_upstream_path)
    first = run_probe(upstream, corpus, "train100", "test-clean", FAST, log=lambda _: None)
    second = run_probe(load_upstream(tiny_upstream_path), corpus, "train100", "test-clean", FAST, log=lambda _: None)
    assert _without_timings(first) == _without_timings(second), "same seed must give identical numbers"

    sid, pr = first["sid"], first["pr"]
    assert 0.0 <= sid["accuracy"] <= 1.0 and sid["num_speakers"] == 4 and sid["split"] == "test subset"
    assert sid["num_test"] >= 4 and sid["chance"] == pytest.approx(0.25)
    assert pr["metric"] == "PER" and pr["unit"] == "phone" and pr["error_rate"] >= 0.0
    assert pr["num_units"] > 10 and pr["num_test"] == sid["num_test"]
    for weights in (sid["layer_weights"], pr["layer_weights"]):
        assert len(weights) == 3 and sum(weights) == pytest.approx(1.0, abs=1e-3)
    line = summary_line(first)
    assert "SID acc" in line and "PER" in line and "layer weights" in line

    other_seed = run_probe(upstream, corpus, "train100", "test-clean", ProbeConfig(**{**FAST.__dict__, "seed": 4}),
                           log=lambda _: None)
    assert other_seed["sid"]["layer_weights"] != sid["layer_weights"], "the seed must matter"


def test_characters_are_the_fallback_unit(corpus: Path, tiny_upstream_path: Path, tmp_path: Path) -> None:
    tsv_dir = tmp_path / "tsv"
    shutil.copytree(corpus, tsv_dir)
    for phones in tsv_dir.glob("*.phones.tsv"):
        phones.unlink()
    split = read_split(tsv_dir, "test-clean")
    assert split.unit == "char" and split.utterances[0].units and "|" in split.utterances[0].units
    config = ProbeConfig(seed=0, batch_size=8, sid_epochs=1, pr_epochs=1, tasks=("pr",), max_train_utterances=12)
    result = run_probe(load_upstream(tiny_upstream_path), tsv_dir, config=config, log=lambda _: None)
    assert result["pr"]["metric"] == "CER" and result["pr"]["num_train"] <= 12 and "sid" not in result


def test_melhubert_upstream_probes(corpus: Path) -> None:
    from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel

    torch.manual_seed(0)
    model = MelHuBERTModel(MelHuBERTConfig(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=48,
                                           encoder_attention_heads=4, feat_emb_dim=80, conv_pos=8, conv_pos_groups=4)).eval()
    upstream = Upstream(model, UpstreamInfo("mel", "test", "melhubert"), frame_period_ms=20)
    config = ProbeConfig(seed=0, batch_size=8, sid_epochs=2, pr_epochs=1, max_train_utterances=16)
    result = run_probe(upstream, corpus, config=config, log=lambda _: None)
    assert 0.0 <= result["sid"]["accuracy"] <= 1.0 and result["pr"]["error_rate"] >= 0.0
    assert result["num_hidden_states"] == 2
