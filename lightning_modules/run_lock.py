"""One run per experiment folder: a lock file held for the life of a run, and no silent reuse.

``RunLock(exp_dir)`` creates ``EXP_DIR/.run.lock`` exclusively (``O_CREAT | O_EXCL``, which also
works on network filesystems where ``flock`` does not) holding the owner's PID, host and start
time. A second run into the folder is refused with the holder named. A lock whose PID is dead
on this host (a killed run) is taken over with a message; a lock from another host is never
taken over silently, since its PID cannot be checked from here: remove the file after making
sure that run is gone.

:func:`check_folder_reuse` refuses to start a fresh run in a folder holding an earlier run's
results unless the caller resumes it or asks to overwrite it; :func:`clear_previous_run`
removes exactly the artefacts a run writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Iterable, Optional

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class RunLockError(RuntimeError):
    """The folder is in use by another run, or holds a finished run; the message says which and how to proceed."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def is_rank_zero() -> bool:
    """True in the launching process; Lightning's DDP children (LOCAL_RANK/RANK > 0) share the parent's lock."""
    for variable in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(variable)
        if value not in (None, "", "0"):
            return False
    return True


class RunLock:
    """Context manager holding ``EXP_DIR/.run.lock``; see the module docstring."""

    def __init__(self, exp_dir: str | os.PathLike[str], what: str = "run") -> None:
        self.exp_dir = Path(exp_dir)
        self.path = self.exp_dir / LOCK_NAME
        self.what = what
        self.held = False
        self._created_folder = False  # the lock made exp_dir: a run refused before writing anything leaves no folder

    def _record(self) -> dict[str, object]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500]}

    def _read_holder(self) -> Optional[dict[str, object]]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written right now, or damaged

    def acquire(self) -> "RunLock":
        self._created_folder = not self.exp_dir.exists()
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_holder()
                if holder is None:
                    continue  # released in between: try again
                pid, host = holder.get("pid"), holder.get("host")
                if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
                    logger.warning("%s: taking over the lock of a run that is gone (PID %s on %s, started %s)",
                                   self.path, pid, host, holder.get("started", "?"))
                    self.path.unlink(missing_ok=True)
                    continue
                if not holder:
                    time.sleep(0.2)
                    holder = self._read_holder() or {}
                raise RunLockError(
                    f"{self.exp_dir} is in use by another run: PID {holder.get('pid', '?')} on host "
                    f"{holder.get('host', '?')}, started {holder.get('started', '?')} ({self.path}). Wait for it, "
                    "choose another folder, or remove the lock file if that run is certainly gone.")
            with os.fdopen(fd, "w") as handle:
                json.dump(self._record(), handle)
                handle.flush()
                os.fsync(handle.fileno())
            self.held = True
            return self
        raise RunLockError(f"{self.path}: could not take the lock (it keeps changing hands)")

    def release(self) -> None:
        if not self.held:
            return
        holder = self._read_holder()
        if holder and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.held = False
        if self._created_folder:
            try:
                self.exp_dir.rmdir()  # only succeeds when the run wrote nothing into it
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, kind: Optional[type[BaseException]], error: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.release()


def previous_run_artefacts(exp_dir: Path, artefacts: Iterable[str]) -> list[Path]:
    """The files / folders among ``artefacts`` (globs relative to ``exp_dir``) that exist."""
    found: list[Path] = []
    for pattern in artefacts:
        found += sorted(exp_dir.glob(pattern))
    return found


def check_folder_reuse(exp_dir: Path, artefacts: Iterable[str], resume: bool, overwrite: bool, flag: str = "--resume") -> None:
    """Refuse a fresh run into a folder holding an earlier run's results (unless resuming or overwriting).

    With ``overwrite`` those results are deleted first, so nothing of the old run can be picked
    up by a later stage; with ``resume`` they are kept and continued.
    """
    if resume and overwrite:
        raise RunLockError(f"{flag} and --overwrite contradict each other")
    found = previous_run_artefacts(exp_dir, artefacts)
    if not found or resume:
        return
    if not overwrite:
        names = ", ".join(str(p.relative_to(exp_dir)) for p in found[:6])
        raise RunLockError(f"{exp_dir} already holds an earlier run ({names}): pass {flag} to continue it, "
                           "--overwrite to delete it and start afresh, or choose another folder")
    clear_previous_run(exp_dir, found)


def clear_previous_run(exp_dir: Path, found: list[Path]) -> None:
    for path in found:
        logger.warning("--overwrite: deleting %s of the earlier run", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
