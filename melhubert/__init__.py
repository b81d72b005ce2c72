"""MelHuBERT: HuBERT-style pre-training on log-Mel filterbank input, and its compression suite.

Submodules (import them directly; this package deliberately imports nothing heavy):

* ``melhubert.fbank``      Kaldi-compatible log-Mel filterbank in torch, 20 ms frame stacking.
* ``melhubert.normalize``  corpus mean/std accumulation and ``mean-std.npy`` I/O.
* ``melhubert.kmeans``     K-means targets (fit, save/load centres, predict), any feature function.
* ``melhubert.manifest``   DPHuBERT audio tsv reader and the ``file_path,label_path,length`` csv.
* ``melhubert.preprocess`` the end-to-end ``preprocess`` command (features + targets + manifest).
"""
