"""prepare_data.py: split routing, tsv format, label files, problem reports and --strict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from speech_data.cli import main
from speech_data.librispeech import SUBSETS_OF_SPLIT, split_of
from speech_data.prepare import PrepareError, prepare_file_lists
from speech_data.tsv import read_file_list, read_labels, write_file_list, write_labels


def write_audio(path: Path, num_samples: int, sample_rate: int = 16_000, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(num_samples)
    shape = (num_samples, channels) if channels > 1 else (num_samples,)
    soundfile.write(path, 0.1 * rng.standard_normal(shape), sample_rate, subtype="PCM_16")


def make_librispeech_tree(root: Path) -> dict[str, str]:
    """One utterance per LibriSpeech split (lengths differ per split) plus transcripts.

    Returns {split: relative path}.
    """
    relative_paths = {}
    for number, split in enumerate(SUBSETS_OF_SPLIT):
        speaker, chapter = 100 + number, 2000 + number
        relative = f"{split}/{speaker}/{chapter}/{speaker}-{chapter}-0000.flac"
        write_audio(root / relative, 1000 + number)
        (root / split / str(speaker) / str(chapter) / f"{speaker}-{chapter}.trans.txt").write_text(
            f"{speaker}-{chapter}-0000 WORDS OF {split.upper()}\n"
        )
        relative_paths[split] = relative
    return relative_paths


@pytest.fixture
def corpus_root(tmp_path: Path) -> Path:
    # The root itself contains "train" and "dev": routing must ignore it.
    return tmp_path / "dev-home" / "train-clean-100-backup" / "LibriSpeech"


def listed(tsv: Path) -> list[str]:
    return list(read_file_list(tsv).relative_paths)


def test_every_split_routed_by_folder_name_not_by_root_substrings(corpus_root: Path, tmp_path: Path) -> None:
    paths = make_librispeech_tree(corpus_root)
    out = tmp_path / "lists"
    result = prepare_file_lists(corpus_root, out, workers=2, show_progress=False)

    assert listed(out / "train100.tsv") == [paths["train-clean-100"]]
    assert listed(out / "train960.tsv") == sorted(paths[s] for s in ("train-clean-100", "train-clean-360", "train-other-500"))
    assert listed(out / "valid.tsv") == sorted([paths["dev-clean"], paths["dev-other"]])
    assert listed(out / "test-clean.tsv") == [paths["test-clean"]]
    assert listed(out / "test-other.tsv") == [paths["test-other"]]
    assert result.files_listed == 7 and result.problems == []
    assert result.summary().startswith("7 files listed, 0 problems: 0 corrupt, 0 empty")


def test_split_of_uses_whole_folder_names() -> None:
    assert split_of("train-clean-360/1/2/1-2-0.flac") == "train-clean-360"
    assert split_of("LibriSpeech/dev-other/1/2/1-2-0.flac") == "dev-other"
    assert split_of("train-clean-100-extra/1/2/1-2-0.flac") is None
    assert split_of("mytest-clean/x.flac") is None
    assert split_of("1/2/1-2-0.flac", root_name="test-other") == "test-other"  # --data points at a split
    assert split_of("1/2/1-2-0.flac", root_name="train") is None


def test_files_outside_splits_are_reported_not_listed(corpus_root: Path, tmp_path: Path) -> None:
    make_librispeech_tree(corpus_root)
    write_audio(corpus_root / "extras" / "stray.wav", 500)
    result = prepare_file_lists(corpus_root, tmp_path / "lists", workers=1, show_progress=False)
    assert [(row.path.name, row.reason) for row in result.problems] == [("stray.wav", "no_split")]
    assert "1 outside any split" in result.summary()
    for subset in ("train100", "train960", "valid", "test-clean", "test-other"):
        assert not any("stray" in path for path in listed(tmp_path / "lists" / f"{subset}.tsv"))


def test_tsv_root_is_absolute_and_lengths_round_trip(corpus_root: Path, tmp_path: Path, monkeypatch) -> None:
    make_librispeech_tree(corpus_root)
    monkeypatch.chdir(tmp_path)
    prepare_file_lists(Path("dev-home/train-clean-100-backup/LibriSpeech"), Path("lists"), workers=1, show_progress=False)
    lines = (tmp_path / "lists" / "valid.tsv").read_text().splitlines()
    assert lines[0] == str(corpus_root.resolve())
    file_list = read_file_list(tmp_path / "lists" / "valid.tsv")
    for index in range(len(file_list)):
        assert soundfile.info(str(file_list.path(index))).frames == file_list.num_samples[index]
    assert file_list.num_samples == (1003, 1004)  # dev-clean, dev-other as written


def test_write_read_file_list_and_labels(tmp_path: Path) -> None:
    entries = [("a/b/1-2-0003.flac", 16000), ("a/b/1-2-0004.wav", 7)]
    assert write_file_list(tmp_path / "x.tsv", tmp_path / "corpus" / ".." / "corpus", entries) == 2
    file_list = read_file_list(tmp_path / "x.tsv")
    assert file_list.root == (tmp_path / "corpus").resolve()
    assert list(zip(file_list.relative_paths, file_list.num_samples)) == entries
    assert file_list.utterance_id(1) == "1-2-0004"

    labels = [("1-2-0003", "HELLO WORLD"), ("1-2-0004", "ð ə k æ t")]
    write_labels(tmp_path / "x.trans.tsv", labels)
    assert list(read_labels(tmp_path / "x.trans.tsv").items()) == labels


def test_read_file_list_names_the_bad_line(tmp_path: Path) -> None:
    (tmp_path / "bad.tsv").write_text("/root\nok.flac\t10\nbroken line\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3"):
        read_file_list(tmp_path / "bad.tsv")


def test_transcripts_and_speakers_follow_the_file_lists(corpus_root: Path, tmp_path: Path) -> None:
    make_librispeech_tree(corpus_root)
    out = tmp_path / "lists"
    prepare_file_lists(corpus_root, out, workers=1, show_progress=False)
    assert read_labels(out / "valid.trans.tsv") == {
        "103-2003-0000": "WORDS OF DEV-CLEAN",
        "104-2004-0000": "WORDS OF DEV-OTHER",
    }
    assert read_labels(out / "train960.spk.tsv") == {"100-2000-0000": "100", "101-2001-0000": "101", "102-2002-0000": "102"}
    assert not (out / "valid.phones.tsv").exists()  # LibriSpeech has no phones files


def test_missing_transcript_is_reported_but_audio_listed(corpus_root: Path, tmp_path: Path) -> None:
    make_librispeech_tree(corpus_root)
    write_audio(corpus_root / "test-clean/106/2006/106-2006-0001.flac", 900)
    result = prepare_file_lists(corpus_root, tmp_path / "lists", workers=1, show_progress=False)
    assert [(row.path.name, row.reason) for row in result.problems] == [("106-2006-0001.flac", "no_transcript")]
    assert len(read_file_list(tmp_path / "lists" / "test-clean.tsv")) == 2
    assert "106-2006-0001" not in read_labels(tmp_path / "lists" / "test-clean.trans.tsv")


def add_problem_files(root: Path) -> dict[str, Path]:
    chapter = root / "train-clean-100" / "200" / "3000"
    files = {
        "corrupt": chapter / "200-3000-0000.flac",
        "empty": chapter / "200-3000-0001.wav",
        "sample_rate": chapter / "200-3000-0002.flac",
        "channels": chapter / "200-3000-0003.flac",
    }
    chapter.mkdir(parents=True)
    files["corrupt"].write_bytes(b"fLaC this is not really a flac stream" * 10)
    files["empty"].write_bytes(b"")
    write_audio(files["sample_rate"], 2205, sample_rate=22_050)
    write_audio(files["channels"], 1600, channels=2)
    (chapter / "200-3000.trans.txt").write_text("".join(f"200-3000-000{i} X\n" for i in range(4)))
    return files


def test_corrupt_empty_22khz_and_stereo_files_are_reported_with_reasons(corpus_root: Path, tmp_path: Path) -> None:
    make_librispeech_tree(corpus_root)
    files = add_problem_files(corpus_root)
    out = tmp_path / "lists"
    result = prepare_file_lists(corpus_root, out, workers=2, show_progress=False)

    report = (out / "prepare_report.tsv").read_text().splitlines()
    assert report[0] == "path\treason\tdetail"
    rows = {Path(line.split("\t")[0]).name: line.split("\t")[1:] for line in report[1:]}
    assert {name: reason for name, (reason, _) in rows.items()} == {path.name: reason for reason, path in files.items()}
    assert "22050 Hz" in rows[files["sample_rate"].name][1]
    assert "2 channels" in rows[files["channels"].name][1]
    assert result.summary().startswith(
        "7 files listed, 4 problems: 1 corrupt, 1 empty, 1 not 16 kHz, 1 multi-channel, 0 outside any split"
    )
    assert listed(out / "train100.tsv") == ["train-clean-100/100/2000/100-2000-0000.flac"]


def test_strict_fails_and_names_the_file_and_reason(corpus_root: Path, tmp_path: Path, capsys) -> None:
    make_librispeech_tree(corpus_root)
    stereo = corpus_root / "dev-clean" / "300" / "4000" / "300-4000-0000.flac"
    write_audio(stereo, 1600, channels=2)
    (stereo.parent / "300-4000.trans.txt").write_text("300-4000-0000 X\n")

    with pytest.raises(PrepareError, match=r"300-4000-0000\.flac: channels \(2 channels"):
        prepare_file_lists(corpus_root, tmp_path / "strict", workers=1, strict=True, show_progress=False)
    assert not (tmp_path / "strict" / "valid.tsv").exists()

    assert main(["--data", str(corpus_root), "--out", str(tmp_path / "cli"), "--strict"]) == 1
    error = capsys.readouterr().err
    assert str(stereo) in error and "channels" in error

    assert main(["--data", str(corpus_root), "--out", str(tmp_path / "cli")]) == 0
    assert "7 files listed, 1 problems:" in capsys.readouterr().out


def test_missing_root_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 1
    assert "nowhere: no such directory" in capsys.readouterr().err


def test_stale_subset_files_are_removed(corpus_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "lists"
    out.mkdir()
    (out / "test-other.tsv").write_text("/old/root\nold.flac\t5\n")
    write_audio(corpus_root / "dev-clean/1/2/1-2-0000.flac", 100)
    prepare_file_lists(corpus_root, out, workers=1, show_progress=False)
    assert sorted(p.name for p in out.glob("*.tsv")) == ["prepare_report.tsv", "valid.spk.tsv", "valid.tsv"]
