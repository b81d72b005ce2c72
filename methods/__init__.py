"""Methods layer: one module per compression / training method, each a configuration of the
shared model (``wav2vec2``), data (``speech_data``) and training (``lightning_modules``) parts.

* ``dphubert``              DPHuBERT stages 2 and 4 (prune a gated student, save the final model);
                            stages 1 and 3 are ``lightning_modules.distill.DistillModule``
* ``distilhubert_baseline`` DistilHuBERT-style baseline (a configuration of the same distiller)
* ``hubert_pretrain``       HuBERT masked prediction on log-Mel K-means ids (the demo teacher)
* ``melhubert_pretrain``    MelHuBERT pre-training (``train.py -m melhubert``)
* ``weight_pruning``, ``head_pruning``, ``row_pruning``, ``low_rank_retraining``, ``distillation``:
                            the compression suite's ``train.py`` modes, sharing ``suite`` (families,
                            data, export, the retraining objective), ``suite_config`` (the runner
                            yaml) and ``scheduled_pruning`` (the prune-retrain loop)
* ``ops_weight``, ``ops_heads``, ``ops_rows``: scoring and selection for the pruning modes
* ``prune_schedule``        when the suite's pruning modes prune
"""
