"""The offline demo corpus: layout, speakers, phones, determinism, and prepare_data.py on it."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
import soundfile

from speech_data import synthesis
from speech_data.cli import main
from speech_data.demo_corpus import DEMO_SPLITS, estimated_seconds, make_demo_corpus, plan_corpus
from speech_data.phones import ipa_to_phones
from speech_data.sentences import make_sentence, plural
from speech_data.speakers import choose_speakers, full_roster, read_speakers_table
from speech_data.tsv import read_file_list, read_labels

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (bash setup.sh)")

NUM_SPEAKERS = 4
NUM_UTTERANCES = 12


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed (bash setup.sh)")
    root = tmp_path_factory.mktemp("demo") / "corpus"
    summary = make_demo_corpus(
        root, num_utterances=NUM_UTTERANCES, num_speakers=NUM_SPEAKERS, seed=11, workers=2, show_progress=False
    )
    assert summary.num_utterances == NUM_UTTERANCES and summary.num_speakers == NUM_SPEAKERS
    return root


@needs_espeak
def test_layout_is_librispeech_with_every_speaker_in_every_split(demo_root: Path) -> None:
    speakers = read_speakers_table(demo_root / "speakers.tsv")
    assert [s.speaker_id for s in speakers] == [s.speaker_id for s in choose_speakers(NUM_SPEAKERS, synthesis.flite_available())]
    flacs = sorted(demo_root.rglob("*.flac"))
    assert len(flacs) == NUM_UTTERANCES
    for flac in flacs:
        split, speaker, chapter = flac.relative_to(demo_root).parts[:3]
        assert split in DEMO_SPLITS
        assert flac.name.startswith(f"{speaker}-{chapter}-")
    for split in DEMO_SPLITS:
        assert sorted(p.name for p in (demo_root / split).iterdir()) == sorted(str(s.speaker_id) for s in speakers)


@needs_espeak
def test_audio_is_16khz_mono_pcm16_peak_normalised(demo_root: Path) -> None:
    for flac in demo_root.rglob("*.flac"):
        info = soundfile.info(str(flac))
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16_000, 1, "PCM_16", "FLAC")
        audio, _ = soundfile.read(flac)
        assert 0.85 < abs(audio).max() <= 0.91
        assert 0.5 < len(audio) / 16_000 < 30


@needs_espeak
def test_transcripts_and_phones_cover_every_utterance(demo_root: Path) -> None:
    for chapter_dir in {flac.parent for flac in demo_root.rglob("*.flac")}:
        utterances = sorted(flac.stem for flac in chapter_dir.glob("*.flac"))
        stem = f"{chapter_dir.parent.name}-{chapter_dir.name}"
        transcripts = dict(line.split(" ", 1) for line in (chapter_dir / f"{stem}.trans.txt").read_text().splitlines())
        phones = dict(line.split(" ", 1) for line in (chapter_dir / f"{stem}.phones.txt").read_text().splitlines())
        assert sorted(transcripts) == sorted(phones) == utterances
        for utterance in utterances:
            assert transcripts[utterance] == transcripts[utterance].upper() and transcripts[utterance].strip()
            tokens = phones[utterance].split(" ")
            assert len(tokens) >= 3 and all(tokens)
            assert not any(mark in phones[utterance] for mark in "ˈˌ:")


@needs_espeak
def test_prepare_data_reads_the_demo_corpus_like_librispeech(demo_root: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "lists"
    assert main(["--data", str(demo_root), "--out", str(out), "--workers", "2"]) == 0
    assert f"{NUM_UTTERANCES} files listed, 0 problems" in capsys.readouterr().out
    sizes = {subset: len(read_file_list(out / f"{subset}.tsv")) for subset in ("train100", "train960", "valid", "test-clean")}
    assert sizes["train100"] == sizes["train960"] == NUM_UTTERANCES - 2 * NUM_SPEAKERS
    assert sizes["valid"] == sizes["test-clean"] == NUM_SPEAKERS
    assert not (out / "test-other.tsv").exists()
    for subset in ("train960", "valid", "test-clean"):
        ids = [read_file_list(out / f"{subset}.tsv").utterance_id(i) for i in range(sizes[subset])]
        assert list(read_labels(out / f"{subset}.trans.tsv")) == ids
        assert list(read_labels(out / f"{subset}.phones.tsv")) == ids
        speakers = read_labels(out / f"{subset}.spk.tsv")
        assert len(set(speakers.values())) == NUM_SPEAKERS  # every speaker in every split
    assert (out / "speakers.tsv").read_text() == (demo_root / "speakers.tsv").read_text()


@needs_espeak
def test_same_seed_gives_identical_files_and_another_seed_other_sentences(demo_root: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_demo_corpus(again, num_utterances=NUM_UTTERANCES, num_speakers=NUM_SPEAKERS, seed=11, workers=1, show_progress=False)
    originals = sorted(p.relative_to(demo_root) for p in demo_root.rglob("*") if p.is_file())
    assert originals == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in originals:
        assert (demo_root / relative).read_bytes() == (again / relative).read_bytes(), relative

    with pytest.raises(FileExistsError, match="--overwrite"):
        make_demo_corpus(again, num_utterances=NUM_UTTERANCES, num_speakers=NUM_SPEAKERS, seed=12, show_progress=False)
    jobs_11 = plan_corpus(again, choose_speakers(NUM_SPEAKERS, False), seed=11, num_utterances=NUM_UTTERANCES)
    jobs_12 = plan_corpus(again, choose_speakers(NUM_SPEAKERS, False), seed=12, num_utterances=NUM_UTTERANCES)
    assert [job.text for job in jobs_11] != [job.text for job in jobs_12]


def test_default_plan_has_at_least_20_distinct_speakers_in_every_split_and_about_an_hour(tmp_path: Path) -> None:
    for include_flite in (True, False):
        speakers = choose_speakers(24, include_flite)
        assert len({(s.engine, s.voice, s.pitch, s.rate) for s in speakers}) == 24
        assert {s.gender for s in speakers} == {"F", "M"}
        jobs = plan_corpus(tmp_path, speakers, seed=0, hours=1.0)
        per_split = {split: Counter(job.speaker.speaker_id for job in jobs if job.split == split) for split in DEMO_SPLITS}
        assert all(len(counts) == 24 for counts in per_split.values())
        assert 0.95 < sum(estimated_seconds(job.speaker, job.text) for job in jobs) / 3600 < 1.1
        assert len({job.utterance_id for job in jobs}) == len(jobs)
    # A voice keeps its speaker id whether or not flite is installed.
    with_flite = {s.speaker_id: s for s in full_roster(True)}
    assert all(with_flite[s.speaker_id] == s for s in full_roster(False))


def test_too_few_utterances_for_the_speakers_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 12"):
        plan_corpus(tmp_path, choose_speakers(4, False), seed=0, num_utterances=11)


def test_missing_espeak_names_the_install_command(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(synthesis.shutil, "which", lambda name: None)
    with pytest.raises(synthesis.SynthesisError, match="apt-get install -y espeak-ng flite sox"):
        make_demo_corpus(tmp_path / "x", num_utterances=3, num_speakers=1, show_progress=False)


def test_ipa_is_split_into_a_consistent_phone_inventory() -> None:
    espeak_output = "ð ˈɪ  ˌoʊ l d  k ˈɑːɹ əl\nf ˈaɪə t̪ a: aa eʲ dʒ"
    assert ipa_to_phones(espeak_output) == [
        "ð", "ɪ", "oʊ", "l", "d", "k", "ɑː", "ɹ", "ə", "l", "f", "aɪ", "ə", "t", "aː", "aː", "e", "dʒ",
    ]  # fmt: skip


def test_sentences_are_seeded_and_varied() -> None:
    first = [make_sentence(random.Random(3)) for _ in range(2)]
    assert first[0] == first[1]
    sentences = [make_sentence(random.Random(seed)) for seed in range(50)]
    assert len(set(sentences)) == 50
    assert all(sentence == sentence.lower() and "  " not in sentence for sentence in sentences)
    assert [plural(noun) for noun in ("box", "lady", "key", "wolf", "child", "church")] == [
        "boxes", "ladies", "keys", "wolves", "children", "churches",
    ]  # fmt: skip
