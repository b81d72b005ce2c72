"""Measuring compressed speech SSL models: size, compute, speed, and frozen-feature probing.

Import submodules directly (this package imports nothing heavy):

* ``evaluation.upstream``  ``load_upstream(path)``: any model file of the toolkit (wav2vec2-family
                           ``.pth``, MelHuBERT ``.ckpt``, DPHuBERT and ``train.py`` outputs, factory
                           names such as ``hubert_base``) behind one ``Upstream`` interface,
                           ``layers(waveforms, lengths) -> ([h0..hN], frame_lengths)``.
* ``evaluation.profiler``  parameters, MACs (SUPERB convention), CPU / GPU latency, real-time
                           factor and peak memory; the comparison table (``profile_model.py``).
* ``evaluation.probing``   a small SUPERB: learned weighted sum of frozen layers, speaker
                           identification and CTC phone recognition (``probe.py``).
* ``evaluation.report``    Markdown report over experiment folders (``report.py``).
* ``evaluation.plots``     the report's matplotlib figures (Agg backend).
"""
