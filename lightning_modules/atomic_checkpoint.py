"""Lightning checkpoints that are written atomically, never with NaN, and read safely.

:class:`AtomicCheckpointIO` is a ``CheckpointIO`` plugin (``Trainer(plugins=[AtomicCheckpointIO()])``):

- ``save_checkpoint`` goes through the toolkit's one writer, ``wav2vec2.state_dicts.write_atomically``:
  it refuses a checkpoint with non-finite weights or optimizer moments (``wav2vec2.finite``)
  and writes through ``wav2vec2.atomic_io`` (temporary file in the
  destination folder, flush, fsync, rename, fsync of the folder), so ``last.ckpt`` and
  ``step=N.ckpt`` are the previous complete file or the new complete one, whatever the
  filesystem of the experiment folder and whenever the process dies;
- ``load_checkpoint`` (also the path of ``Trainer.fit(ckpt_path=...)``) reads through the one
  reader, ``wav2vec2.state_dicts.read_checkpoint`` (``weights_only=True``), naming the file in
  every error.

:func:`pick_resume_checkpoint` chooses what ``--resume last`` continues from: the checkpoint
with the highest step among those that load, saying which ones it skipped and why.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from wav2vec2.atomic_io import remove_stale_temporaries
from wav2vec2.state_dicts import CheckpointError, read_checkpoint, write_atomically

logger = logging.getLogger(__name__)

# Keys every Lightning training checkpoint holds; a file without them cannot resume a run.
RESUME_KEYS = ("state_dict", "global_step", "loops")


class ResumeError(CheckpointError):
    """An unreadable checkpoint, or none usable to resume from; the message names every file and its problem."""


def read_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """The one reader (``wav2vec2.state_dicts.read_checkpoint``, ``weights_only=True``) for a
    training checkpoint: its CheckpointError becomes a ResumeError, the file named in every error."""
    try:
        checkpoint = read_checkpoint(path, map_location=map_location)
    except ResumeError:
        raise
    except CheckpointError as error:
        raise ResumeError(str(error)) from error
    if not isinstance(checkpoint, dict):
        raise ResumeError(f"{path}: expected a dict, found {type(checkpoint).__name__}")
    return checkpoint


def check_resumable(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A Lightning training checkpoint (not a model ``.pth``); ResumeError naming the file otherwise."""
    missing = [key for key in RESUME_KEYS if key not in checkpoint]
    if missing:
        raise ResumeError(f"{path}: not a training checkpoint that can resume a run (no {', '.join(missing)}); "
                          f"found keys {sorted(checkpoint)[:12]}. Model files (.pth) start new runs instead.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic, finite-checked saves and ``weights_only=True`` loads (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options!r}")
        write_atomically(checkpoint, path)  # the toolkit's one writer: NaN check, then an atomic save

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(f"{path}: checkpoints are read with weights_only=True only")
        return read_checkpoint_file(path, map_location if map_location is not None else "cpu")


@dataclass(frozen=True)
class ResumeChoice:
    path: Path
    global_step: int
    skipped: tuple[tuple[Path, str], ...]  # (file, why) of every candidate that did not load

    def describe(self) -> str:
        lines = [f"resuming from {self.path} (step {self.global_step})"]
        lines += [f"  skipped {path}: {why}" for path, why in self.skipped]
        return "\n".join(lines)


_STEP = re.compile(r"step[=_-]?(\d+)")


def _candidates(folder: Path, patterns: Sequence[str]) -> list[Path]:
    found: dict[Path, None] = {}
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not path.name.startswith("."):
                found[path] = None
    return list(found)


def pick_resume_checkpoint(folder: str | os.PathLike[str], patterns: Sequence[str] = ("last*.ckpt", "*.ckpt"),
                           validate: Optional[Callable[[dict[str, Any], Path], None]] = None) -> ResumeChoice:
    """The checkpoint in ``folder`` with the highest ``global_step`` that loads (``weights_only=True``).

    Every candidate that fails to load (truncated, empty, wrong kind) is skipped with its reason;
    ties prefer the ``last`` file. Stale temporaries of killed writes are removed first.
    Raises ResumeError naming every file tried when none loads.
    """
    folder = Path(folder)
    removed = remove_stale_temporaries(folder)
    if removed:
        logger.warning("removed %d unfinished checkpoint write(s) of a killed run: %s", len(removed),
                       ", ".join(p.name for p in removed))
    candidates = _candidates(folder, patterns)
    if not candidates:
        raise ResumeError(f"--resume: no checkpoint (*.ckpt) in {folder}")
    loaded: list[tuple[int, int, Path]] = []
    failed: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            checkpoint = read_checkpoint_file(path)
            check_resumable(checkpoint, path)
            if validate is not None:
                validate(checkpoint, path)
        except (ResumeError, ValueError, FileNotFoundError) as error:
            failed.append((path, str(error).removeprefix(f"{path}: ")))
            continue
        prefer_last = 1 if path.name.startswith("last") else 0
        loaded.append((int(checkpoint.get("global_step", -1)), prefer_last, path))
        del checkpoint
    if not loaded:
        raise ResumeError("--resume: no checkpoint in " + str(folder) + " loads:\n"
                          + "\n".join(f"  {path}: {why}" for path, why in failed))
    step, _, best = max(loaded)
    choice = ResumeChoice(best, step, tuple(failed))
    for path, why in failed:
        logger.warning("--resume: skipping %s: %s", path, why)
    logger.warning(choice.describe().splitlines()[0])
    return choice


def resolve_resume_path(resume: Optional[str], folder: Path, last_name: str) -> Optional[tuple[Path, int]]:
    """``--resume`` -> ``(checkpoint, its global_step)``: ``last`` picks the newest loadable one in
    ``folder`` (falling back past a damaged ``last_name``); an explicit path must load and resume."""
    if resume is None:
        return None
    if resume == "last":
        choice = pick_resume_checkpoint(folder, patterns=(last_name, "*.ckpt"))
        return choice.path, choice.global_step
    path = Path(resume)
    checkpoint = read_checkpoint_file(path)
    check_resumable(checkpoint, path)
    return path, int(checkpoint.get("global_step", 0))
