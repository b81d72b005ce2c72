"""AudioDataset, LengthBucketBatchSampler, collate_audio and SpeechDataModule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from speech_data.collate import AudioBatch, collate_audio
from speech_data.datamodule import SpeechDataModule
from speech_data.dataset import AudioDataset, AudioItem, UtteranceSlice
from speech_data.sampler import LengthBucketBatchSampler
from speech_data.tsv import write_file_list

RATE = 16_000


def random_lengths(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(RATE // 2, 20 * RATE, size=count)


def epoch_batches(sampler: LengthBucketBatchSampler, epoch: int) -> list[list[UtteranceSlice]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def rank_samplers(lengths: np.ndarray, world_size: int, **kwargs) -> list[LengthBucketBatchSampler]:
    return [LengthBucketBatchSampler(lengths, num_replicas=world_size, rank=rank, **kwargs) for rank in range(world_size)]


# -- sampler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [501, 37, 3])
@pytest.mark.parametrize("training", [True, False])
def test_every_utterance_exactly_once_per_epoch_across_two_ranks(count: int, training: bool) -> None:
    lengths = random_lengths(count, seed=count)
    samplers = rank_samplers(lengths, 2, seconds_per_batch=40, max_sample_size=15 * RATE, training=training, seed=3)
    for epoch in range(3):
        per_rank = [epoch_batches(sampler, epoch) for sampler in samplers]
        assert len(per_rank[0]) == len(per_rank[1]) == len(samplers[0]) > 0
        seen = Counter(piece.index for batches in per_rank for batch in batches for piece in batch)
        assert seen == Counter(range(count)), f"epoch {epoch}: duplicates or missing utterances"
        assert samplers[0].num_repeated_batches == 0


def test_two_ranks_with_one_utterance_repeat_a_batch_to_stay_in_step() -> None:
    samplers = rank_samplers(np.array([RATE]), 2, seconds_per_batch=10)
    assert [len(list(sampler)) for sampler in samplers] == [1, 1]
    assert samplers[0].num_repeated_batches == 1


@pytest.mark.parametrize("crop_mode", ["max", "shortest"])
def test_every_batch_within_its_seconds_budget(crop_mode: str) -> None:
    lengths = random_lengths(800)
    budget_seconds = 37.5
    sampler = LengthBucketBatchSampler(
        lengths, seconds_per_batch=budget_seconds, max_sample_size=12 * RATE, crop_mode=crop_mode, seed=1
    )
    for epoch in (0, 1):
        for batch in epoch_batches(sampler, epoch):
            padded = len(batch) * max(piece.num_samples for piece in batch)
            assert sum(piece.num_samples for piece in batch) <= padded <= budget_seconds * RATE
    # Packing is greedy, so batches are not needlessly small: average fill above 80 %.
    fills = [len(b) * max(p.num_samples for p in b) / (budget_seconds * RATE) for b in epoch_batches(sampler, 0)]
    assert np.mean(fills) > 0.8


def test_order_changes_between_epochs_and_repeats_within_an_epoch() -> None:
    lengths = random_lengths(300)
    make = lambda: LengthBucketBatchSampler(lengths, seconds_per_batch=30, max_sample_size=10 * RATE, seed=7)  # noqa: E731
    sampler = make()
    epoch1, epoch2 = epoch_batches(sampler, 1), epoch_batches(sampler, 2)
    assert epoch1 != epoch2
    assert [p.index for b in epoch1 for p in b] != [p.index for b in epoch2 for p in b]
    assert epoch_batches(sampler, 1) == epoch1  # same epoch again: same order and crops
    assert epoch_batches(make(), 1) == epoch1  # and in a fresh process-equivalent sampler
    other_seed = LengthBucketBatchSampler(lengths, seconds_per_batch=30, max_sample_size=10 * RATE, seed=8)
    assert epoch_batches(other_seed, 1) != epoch1


def test_validation_sampler_is_deterministic_and_centre_crops() -> None:
    lengths = np.array([5 * RATE, 20 * RATE, 3 * RATE, 16 * RATE])
    sampler = LengthBucketBatchSampler(lengths, seconds_per_batch=40, max_sample_size=10 * RATE, training=False)
    epoch0 = epoch_batches(sampler, 0)
    assert epoch_batches(sampler, 5) == epoch0
    pieces = {piece.index: piece for batch in epoch0 for piece in batch}
    assert pieces[1] == UtteranceSlice(1, 5 * RATE, 10 * RATE)  # (20 s - 10 s) / 2
    assert pieces[3] == UtteranceSlice(3, 3 * RATE, 10 * RATE)
    assert pieces[0] == UtteranceSlice(0, 0, 5 * RATE)


def test_long_utterances_are_cropped_at_random_offsets_not_dropped() -> None:
    lengths = np.array([30 * RATE] + [4 * RATE] * 9)
    sampler = LengthBucketBatchSampler(lengths, seconds_per_batch=60, max_sample_size=10 * RATE, seed=0)
    assert sampler.filter_report.cropped == 1 and sampler.filter_report.kept == 10
    offsets = set()
    for epoch in range(6):
        (long_piece,) = [p for b in epoch_batches(sampler, epoch) for p in b if p.index == 0]
        assert long_piece.num_samples == 10 * RATE
        assert 0 <= long_piece.offset <= 20 * RATE
        offsets.add(long_piece.offset)
    assert len(offsets) == 6  # a new crop each epoch


def test_drop_long_and_min_sample_size_drop_and_count() -> None:
    lengths = np.array([30 * RATE, 1 * RATE, 4 * RATE, 5 * RATE, RATE // 2])
    sampler = LengthBucketBatchSampler(
        lengths, seconds_per_batch=60, max_sample_size=10 * RATE, min_sample_size=2 * RATE, drop_long=True
    )
    report = sampler.filter_report
    assert (report.total, report.kept, report.dropped_long, report.dropped_short, report.cropped) == (5, 2, 1, 2, 0)
    assert sorted(p.index for b in sampler for p in b) == [2, 3]
    assert "2 dropped as too short, 1 dropped as too long" in report.describe()


def test_shortest_crop_mode_gives_equal_lengths_within_a_batch() -> None:
    lengths = random_lengths(120)
    sampler = LengthBucketBatchSampler(lengths, seconds_per_batch=30, max_sample_size=8 * RATE, crop_mode="shortest")
    for batch in sampler:
        assert len({piece.num_samples for piece in batch}) == 1
        shortest = min(min(lengths[p.index], 8 * RATE) for p in batch)
        assert batch[0].num_samples == shortest
        assert all(0 <= p.offset <= lengths[p.index] - p.num_samples for p in batch)


def test_an_utterance_over_the_budget_is_an_error_not_a_silent_oversize_batch() -> None:
    with pytest.raises(ValueError, match="more than seconds_per_batch=5"):
        LengthBucketBatchSampler(np.array([10 * RATE]), seconds_per_batch=5)


def test_mid_epoch_resume_skips_the_batches_already_seen() -> None:
    lengths = random_lengths(200)
    kwargs = dict(seconds_per_batch=30, max_sample_size=10 * RATE, seed=5, num_replicas=2, rank=1)
    reference = LengthBucketBatchSampler(lengths, **kwargs)
    full_epoch = epoch_batches(reference, 3)

    interrupted = LengthBucketBatchSampler(lengths, **kwargs)
    interrupted.set_epoch(3)
    iterator = iter(interrupted)
    first = [next(iterator) for _ in range(4)]
    state = interrupted.state_dict()
    assert state["epoch"] == 3 and state["batches_yielded"] == 4

    resumed = LengthBucketBatchSampler(lengths, **kwargs)
    resumed.load_state_dict(state)
    rest = list(resumed)
    assert first + rest == full_epoch
    assert len(resumed) == len(full_epoch)  # the epoch's length does not shrink
    resumed.set_epoch(4)
    assert list(resumed) == epoch_batches(reference, 4)  # the skip applied to epoch 3 only

    other_budget = LengthBucketBatchSampler(lengths, **{**kwargs, "seconds_per_batch": 60})
    with pytest.raises(ValueError, match="saved position does not apply"):
        other_budget.load_state_dict(state)


# -- dataset and collate ------------------------------------------------------------------------


@pytest.fixture
def small_corpus(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    """Five 16 kHz FLAC files of 0.5 s to 3 s and their tsv."""
    rng = np.random.default_rng(0)
    waveforms, entries = [], []
    for number, seconds in enumerate([0.5, 3.0, 1.0, 2.0, 1.5]):
        waveform = (0.5 * rng.uniform(-1, 1, int(seconds * RATE))).astype(np.float32)
        relative = f"train-clean-100/1/2/1-2-{number:04d}.flac"
        (tmp_path / "corpus" / relative).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(tmp_path / "corpus" / relative, waveform, RATE, subtype="PCM_16")
        waveforms.append(soundfile.read(tmp_path / "corpus" / relative, dtype="float32")[0])
        entries.append((relative, len(waveform)))
    write_file_list(tmp_path / "train.tsv", tmp_path / "corpus", entries)
    return tmp_path / "train.tsv", waveforms


def test_dataset_returns_float32_mono_waveforms_and_ids(small_corpus) -> None:
    tsv, waveforms = small_corpus
    dataset = AudioDataset(tsv)
    item = dataset[1]
    assert isinstance(item, AudioItem) and item.index == 1 and item.utterance_id == "1-2-0001"
    assert item.waveform.dtype == torch.float32 and item.waveform.shape == (3 * RATE,)
    np.testing.assert_array_equal(item.waveform.numpy(), waveforms[1])
    window = dataset[UtteranceSlice(1, 1000, 800)].waveform
    np.testing.assert_array_equal(window.numpy(), waveforms[1][1000:1800])
    with pytest.raises(ValueError, match="outside its 48000 samples"):
        dataset[UtteranceSlice(1, 47_500, 800)]


def test_dataset_rejects_other_sample_rates_unless_asked_to_resample(tmp_path: Path) -> None:
    path = tmp_path / "corpus" / "a.wav"
    path.parent.mkdir()
    soundfile.write(path, np.sin(np.arange(22_050) / 10).astype(np.float32) * 0.5, 22_050)
    write_file_list(tmp_path / "x.tsv", tmp_path / "corpus", [("a.wav", RATE)])
    with pytest.raises(ValueError, match=r"a\.wav: sample rate 22050 Hz, expected 16000 Hz"):
        AudioDataset(tmp_path / "x.tsv")[0]
    waveform = AudioDataset(tmp_path / "x.tsv", resample=True)[0].waveform
    assert waveform.shape == (RATE,) and waveform.dtype == torch.float32 and waveform.abs().max() > 0.4


def test_dataset_detects_a_stale_file_list(small_corpus) -> None:
    tsv, _ = small_corpus
    lines = tsv.read_text().splitlines()
    lines[1] = lines[1].split("\t")[0] + "\t7999"
    tsv.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="has 8000 samples but .* lists 7999"):
        AudioDataset(tsv)[0]


def test_collate_pads_with_zeros_and_returns_lengths() -> None:
    items = [AudioItem(torch.ones(3), 4, "a"), AudioItem(torch.full((5,), 2.0), 9, "b")]
    batch = collate_audio(items)
    assert isinstance(batch, AudioBatch)
    waveforms, lengths, *_ = batch
    assert waveforms.dtype == torch.float32 and waveforms.shape == (2, 5)
    assert lengths.dtype == torch.long and lengths.tolist() == [3, 5]
    assert waveforms[0].tolist() == [1, 1, 1, 0, 0] and waveforms[1].tolist() == [2] * 5
    assert batch.indices.tolist() == [4, 9] and batch.utterance_ids == ["a", "b"]


def test_dataloader_with_sampler_and_workers_yields_cropped_padded_batches(small_corpus) -> None:
    tsv, waveforms = small_corpus
    dataset = AudioDataset(tsv)
    sampler = LengthBucketBatchSampler(dataset.lengths, seconds_per_batch=4, max_sample_size=2 * RATE, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_audio, num_workers=1)
    seen = []
    for batch in loader:
        assert batch.waveforms.shape[0] * batch.waveforms.shape[1] <= 4 * RATE
        for row, index in enumerate(batch.indices.tolist()):
            length = int(batch.lengths[row])
            assert length == min(len(waveforms[index]), 2 * RATE)
            assert not batch.waveforms[row, length:].any()
            seen.append(index)
    assert sorted(seen) == [0, 1, 2, 3, 4]


# -- Lightning -----------------------------------------------------------------------------------


class RecordingModel(L.LightningModule):
    """Records which utterances each training step saw, per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[int, tuple[int, ...]]] = []

    def training_step(self, batch: AudioBatch, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.current_epoch, tuple(batch.indices.tolist())))
        return (self.weight * batch.waveforms.mean()).sum() + self.weight.square().sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def make_datamodule(tsv: Path) -> SpeechDataModule:
    return SpeechDataModule(tsv, seconds_per_batch=1.6, max_sample_size=RATE, min_sample_size=0, num_workers=0, seed=1)


def make_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        use_distributed_sampler=False,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        **kwargs,
    )


def test_datamodule_follows_trainer_epochs_and_resumes_mid_epoch(small_corpus, tmp_path: Path) -> None:
    tsv, _ = small_corpus
    # Reference: two full epochs; each epoch sees every utterance once and the order changes.
    model = RecordingModel()
    make_trainer(tmp_path / "full", max_epochs=2, enable_checkpointing=False).fit(model, datamodule=make_datamodule(tsv))
    by_epoch = {epoch: [batch for e, batch in model.seen if e == epoch] for epoch in (0, 1)}
    for batches in by_epoch.values():
        assert sorted(i for batch in batches for i in batch) == [0, 1, 2, 3, 4]
    assert by_epoch[0] != by_epoch[1]
    steps_per_epoch = len(by_epoch[0])
    assert steps_per_epoch >= 3

    # Interrupted after 2 steps of epoch 0 (checkpoint written at that step), then resumed.
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = RecordingModel()
    make_trainer(tmp_path / "a", max_steps=2, callbacks=[checkpoint]).fit(first, datamodule=make_datamodule(tsv))
    (saved,) = list((tmp_path / "ckpt").glob("*.ckpt"))
    (state,) = torch.load(saved, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert (state["epoch"], state["batches_yielded"]) == (0, 2)

    resumed = RecordingModel()
    make_trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=False).fit(
        resumed, datamodule=make_datamodule(tsv), ckpt_path=saved
    )
    assert first.seen == [(0, batch) for batch in by_epoch[0][:2]]
    assert resumed.seen == [(0, batch) for batch in by_epoch[0][2:]] + [(1, batch) for batch in by_epoch[1]]


def test_datamodule_refuses_lightnings_distributed_sampler(small_corpus) -> None:
    class FakeConnector:
        use_distributed_sampler = True

    class FakeTrainer:
        world_size, global_rank, current_epoch = 2, 0, 0
        _accelerator_connector = FakeConnector()

    datamodule = make_datamodule(small_corpus[0])
    datamodule.trainer = FakeTrainer()  # type: ignore[assignment]
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        datamodule.train_dataloader()
