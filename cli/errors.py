"""The command-line boundary of the DPHuBERT stage scripts: input problems become one line.

``run_cli("distill.py", distill_main)`` runs a stage and turns the errors that describe bad input
(a damaged or wrong-kind file, a locked or finished experiment folder, non-finite weights or
data, a diverged run) into ``distill.py: error: <message naming the file>`` and exit status 2,
instead of a traceback. Every other exception keeps its traceback: it is a bug to report.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from lightning_modules.finite_guard import NonFiniteTrainingError
from lightning_modules.run_lock import RunLockError
from speech_data.mel_data import MelDataError
from wav2vec2.finite import NonFiniteError
from wav2vec2.state_dicts import CheckpointError

# CheckpointError also covers lightning_modules.atomic_checkpoint.ResumeError (a subclass).
INPUT_ERRORS = (CheckpointError, FileNotFoundError, RunLockError, NonFiniteError, NonFiniteTrainingError, MelDataError)


def run_cli(name: str, main: Callable[[], object]) -> NoReturn:
    try:
        main()
    except INPUT_ERRORS as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(0)
