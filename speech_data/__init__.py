"""Speech data: file lists for LibriSpeech-layout corpora, an offline demo corpus, and loading.

Preparation (no torch needed):
    prepare_file_lists      speech_data.prepare    scan a corpus, write <subset>.tsv + labels + report
    make_demo_corpus        speech_data.demo_corpus  synthesise a corpus with espeak-ng / flite
    read_file_list, write_file_list, read_labels, write_labels   speech_data.tsv

Loading (torch / Lightning):
    AudioDataset, UtteranceSlice, AudioItem   speech_data.dataset
    LengthBucketBatchSampler                  speech_data.sampler
    collate_audio, AudioBatch                 speech_data.collate
    SpeechDataModule                          speech_data.datamodule

Log-Mel features for MelHuBERT (``preprocess.py``):
    speech_data.fbank (Kaldi-compatible fbank, 20 ms stacking), speech_data.normalize (corpus
    mean / std), speech_data.kmeans (K-means targets), speech_data.manifest (the
    ``file_path,label_path,length`` csv), speech_data.mel_preprocess (the pipeline),
    speech_data.mel_data (dataset, sampler and data module of the manifests)

Names are imported lazily so that ``prepare_data.py`` starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare_file_lists": "speech_data.prepare",
    "PrepareError": "speech_data.prepare",
    "PrepareResult": "speech_data.prepare",
    "make_demo_corpus": "speech_data.demo_corpus",
    "FileList": "speech_data.tsv",
    "read_file_list": "speech_data.tsv",
    "write_file_list": "speech_data.tsv",
    "read_labels": "speech_data.tsv",
    "write_labels": "speech_data.tsv",
    "AudioDataset": "speech_data.dataset",
    "AudioItem": "speech_data.dataset",
    "UtteranceSlice": "speech_data.dataset",
    "LengthBucketBatchSampler": "speech_data.sampler",
    "LengthFilterReport": "speech_data.sampler",
    "AudioBatch": "speech_data.collate",
    "collate_audio": "speech_data.collate",
    "SpeechDataModule": "speech_data.datamodule",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'speech_data' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
