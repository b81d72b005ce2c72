"""Command-line layer: what the top-level scripts (``train.py``, ``distill.py``, ``prune.py``,
``final_distill.py``, ``save_final_ckpt.py``, ``make_demo_teacher.py``) run."""
