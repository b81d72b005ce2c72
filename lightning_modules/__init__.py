"""Training layer: the base LightningModule (``base``), the one Trainer builder and resume rule
(``trainer``), checkpoint layouts (``cli``: DPHuBERT stages; ``suite_checkpoints``: ``train.py``),
the YAML readers (``cli`` for recipes, ``config`` for the suite's sections), the distillation
core (``distill`` with ``distill_heads``, ``distill_loss``, ``sparsity``) and LR schedules."""
