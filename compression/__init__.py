"""The MelHuBERT compression suite (``train.py -m MODE``), for MelHuBERT and the wav2vec2 family.

Layout (import submodules directly; this package imports nothing heavy):

* ``compression.runner``   ``train.py``: config checks, mode registry and dispatch, Trainer,
                           checkpoints (``MODES`` lists every mode and the module implementing it).
* ``compression.mode_*``   one plug-in per compression mode, each defining
                           ``build_module(mode, model, model_cfg, runner_cfg, init_checkpoint)``
                           and ``export(module)`` (see ``compression.runner``); ``-m melhubert``
                           is implemented by ``lightning_modules.melhubert_pretrain``.
* ``compression.ops_*``, ``wav2vec2.low_rank``, ``compression.measure``, ``compression.schedule``
                           the compression operations, counting and schedules, family-agnostic
                           (they work on ``wav2vec2.components.Transformer``).
"""
