"""The demo teacher's supervised-aided objective: labels, unmasked supervised rows, CTC bookkeeping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from methods.hubert_pretrain import FbankKMeansTargets
from methods.supervised_teacher import SupervisedMaskedPredictionModule, UtteranceLabels, ctc_frames_needed, read_labels
from speech_data.kmeans import KMeansModel
from tests.test_demo_teacher import chirps, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")


def write_split(folder: Path, with_phones_for: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train100.tsv").write_text("/root\n" + "".join(f"s{k}/u{k}.flac\t{8000 - 100 * k}\n" for k in range(3)))
    (folder / "train100.spk.tsv").write_text("u0\tB\nu1\tA\nu2\tB\n")
    phones = ["a b b", "c a", "b"][:with_phones_for]
    (folder / "train100.phones.tsv").write_text("".join(f"u{k}\t{p}\n" for k, p in enumerate(phones)))


def test_read_labels_indexes_speakers_and_phones_with_blank_zero(tmp_path: Path) -> None:
    write_split(tmp_path)
    labels = read_labels(tmp_path, "train100")
    assert labels.speaker_names == ["A", "B"] and labels.speakers == {"u0": 1, "u1": 0, "u2": 1}
    assert labels.phone_names == ["a", "b", "c"] and labels.num_phone_classes == 4
    assert labels.phones == {"u0": [1, 2, 2], "u1": [3, 1], "u2": [2]}
    assert labels.num_samples == {"u0": 8000, "u1": 7900, "u2": 7800}


def test_read_labels_names_the_file_with_a_missing_label(tmp_path: Path) -> None:
    write_split(tmp_path, with_phones_for=2)
    with pytest.raises(ValueError, match=r"train100\.phones\.tsv: no label for 1 utterance\(s\) of train100\.tsv, e\.g\. u2"):
        read_labels(tmp_path, "train100")
    (tmp_path / "train100.spk.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"train100\.spk\.tsv: missing"):
        read_labels(tmp_path, "train100")


def test_ctc_frames_needed_counts_a_blank_between_repeats() -> None:
    assert ctc_frames_needed([1, 2, 2]) == 4 and ctc_frames_needed([3, 3, 3]) == 5 and ctc_frames_needed([]) == 0


def make_module(supervised_fraction: float) -> SupervisedMaskedPredictionModule:
    waves, lengths = chirps()
    ids = ["u0", "u1", "u2", "u3"]
    labels = UtteranceLabels(
        speakers={"u0": 0, "u1": 1, "u2": 0, "u3": 1},
        phones={"u0": [1, 2, 3], "u1": [2, 2], "u2": [3], "u3": [1] * 40},  # u3: more phones than frames
        num_samples={u: int(n) for u, n in zip(ids, lengths)} | {"u1": int(lengths[1]) + 5},  # u1 was cropped
        speaker_names=["A", "B"], phone_names=["x", "y", "z"])
    centres = np.random.default_rng(0).standard_normal((5, 80))
    targets = FbankKMeansTargets(KMeansModel(centres), np.stack([np.full(40, -5.0), np.full(40, 3.0)]).astype(np.float32))
    return SupervisedMaskedPredictionModule(tiny_model(), targets, 5, labels, speaker_layer=1, phone_layer=2,
                                            supervised_fraction=supervised_fraction, mask_prob=0.5, mask_length=3, unmasked_weight=0.5,
                                            learning_rate=3e-3, warmup_updates=1, max_updates=100)


def test_supervised_rows_are_unmasked_and_ctc_skips_cropped_and_infeasible_rows() -> None:
    module = make_module(supervised_fraction=1.0)
    waves, lengths = chirps()
    loss, logs = module.training_loss((waves, lengths, torch.arange(4), ["u0", "u1", "u2", "u3"]))
    assert logs["supervised_utterances"] == 4.0
    assert logs["ctc_utterances"] == 2.0 and logs["ctc_infeasible"] == 1.0  # u0, u2; u1 cropped; u3 too long
    assert float(logs["loss_masked"]) == 0.0  # every row unmasked: no masked term
    assert {"loss_speaker", "accuracy_speaker", "loss_phone_ctc", "loss_unmasked"} <= set(logs)
    loss.backward()
    assert module.speaker_head.weight.grad.abs().sum() > 0 and module.phone_head.weight.grad.abs().sum() > 0


def test_unlabelled_batches_get_only_masked_prediction() -> None:
    module = make_module(supervised_fraction=1.0)
    waves, lengths = chirps()
    loss, logs = module.training_loss((waves, lengths, torch.arange(4), ["v0", "v1", "v2", "v3"]))
    assert logs["supervised_utterances"] == 0.0 and "loss_speaker" not in logs
    assert float(logs["masked_fraction"]) > 0.2 and torch.isfinite(loss)


def test_speaker_head_learns_on_a_fixed_batch() -> None:
    module = make_module(supervised_fraction=1.0)
    waves, lengths = chirps()
    batch = (waves, lengths, torch.arange(4), ["u0", "u1", "u2", "u3"])
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    first = None
    for _ in range(30):
        loss, logs = module.training_loss(batch)
        first = float(logs["loss_speaker"]) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(logs["loss_speaker"]) < 0.3 * first and float(logs["accuracy_speaker"]) == 1.0


def test_layers_are_checked() -> None:
    with pytest.raises(ValueError, match=r"phone_layer must be in 1\.\.2, got 3"):
        SupervisedMaskedPredictionModule(tiny_model(), None, 5, make_module(0.5).labels, speaker_layer=1, phone_layer=3)
