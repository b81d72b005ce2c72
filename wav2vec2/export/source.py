"""The model to export, from any model file the toolkit writes."""

from __future__ import annotations

import copy
import os

from torch import nn


def load_for_export(path: str | os.PathLike[str]) -> tuple[nn.Module, str, list[str]]:
    """``(model in eval mode, family "wav2vec2"|"melhubert", notes)``.

    Every format ``wav2vec2.checkpoint.open_model_file`` reads (safetensors exports included);
    the gated student of a DPHuBERT stage checkpoint is pruned first (eval-mode gate values),
    since no export format carries gates.
    """
    from ..checkpoint import open_model_file

    opened = open_model_file(path)
    model, notes = opened.model, list(opened.notes)
    if opened.family == "wav2vec2" and any(n.endswith("log_alpha") for n, _ in model.named_parameters()):
        model = copy.deepcopy(model).eval()
        model.prune()
        notes.append("gated student pruned (eval-mode gate values) before export")
    return model.eval(), opened.family, notes
