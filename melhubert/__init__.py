"""Historical import path of the MelHuBERT model (``melhubert.model``), kept for users' scripts.

The model lives in ``wav2vec2.melhubert`` (models layer), its file format in
``wav2vec2.melhubert_checkpoint``, and the data work (fbank, normalisation, K-means, manifests,
``preprocess.py``) in ``speech_data``.
"""
