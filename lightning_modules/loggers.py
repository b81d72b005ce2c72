"""TensorBoard logging when the optional ``tensorboard`` package is installed, nothing otherwise."""

from __future__ import annotations

import os
import warnings
from typing import Any

from wav2vec2.optional import available


def tensorboard_loggers(exp_dir: str | os.PathLike[str]) -> list[Any]:
    """``[TensorBoardLogger(exp_dir/tb_logs)]``, or ``[]`` with one warning when tensorboard is missing."""
    if not (available("tensorboard") or available("tensorboardX")):
        warnings.warn("tensorboard is not installed: no TensorBoard event files (CSV metrics are still written); "
                      "install it with: pip install 'speech-ssl-compress[tensorboard]'", stacklevel=2)
        return []
    from lightning.pytorch.loggers import TensorBoardLogger

    return [TensorBoardLogger(str(exp_dir), name="tb_logs", version="")]
