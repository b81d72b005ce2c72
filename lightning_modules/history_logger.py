"""A CSV logger whose ``metrics.csv`` survives a resume: earlier steps are kept, later ones appended.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a resumed run
would lose every step before the resume, and the curves of the report with them.
``HistoryCSVLogger(..., resume_step=N)`` keeps the rows logged before step ``N`` (rows at or
after ``N`` were logged after the checkpoint being resumed and are logged again by the resumed
run, so keeping them would duplicate steps) and appends from there.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from typing import Any, Optional

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from wav2vec2.atomic_io import atomic_write

logger = logging.getLogger(__name__)


class _HistoryWriter(ExperimentWriter):
    def __init__(self, log_dir: str, resume_step: Optional[int]) -> None:
        self._resume_step = resume_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = self.metrics_file_path
        if self._resume_step is None or not os.path.isfile(path):
            super()._check_log_dir_exists()
            return
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [row for row in reader if row.get("step") not in (None, "") and int(float(row["step"])) < self._resume_step]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(path, lambda handle: handle.write(buffer.getvalue().encode()))
        self.metrics_keys = fields
        logger.info("%s: kept %d rows logged before step %d", path, len(rows), self._resume_step)


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` that keeps the history before ``resume_step`` (None: a fresh run, a fresh file)."""

    def __init__(self, *args: Any, resume_step: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_step = resume_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:  # type: ignore[override]
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(self.log_dir, self._resume_step)
        return self._experiment
