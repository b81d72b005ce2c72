"""Atomic file writes: a reader sees the old file or the complete new one, never a partial one.

The bytes go to a temporary file **in the destination folder** (so the final ``os.replace`` is
a rename inside one filesystem, which POSIX makes atomic; a temporary file in ``/tmp`` would
turn the rename into a copy when the destination is on other storage), are flushed and
fsync'ed, then renamed over the target, and the folder is fsync'ed so the rename itself
survives a power cut. A failure at any point (full disk, exception, signal) removes the
temporary file and leaves the previous target untouched. A SIGKILL can leave a
``.NAME.tmp-*`` file behind, never a damaged ``NAME``; :func:`remove_stale_temporaries`
clears them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch

TEMP_MARKER = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """fsync a folder so a rename inside it is durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (e.g. certain network mounts) refuse fsync on folders
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then atomically move it there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARKER}", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; keep what a plain open() would give
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save(obj, path)``, atomically."""
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """Copy ``source`` to ``target`` atomically (``target`` is never a half-copied file)."""
    def copy(handle: BinaryIO) -> None:
        with open(source, "rb") as reader:
            shutil.copyfileobj(reader, handle, length=16 << 20)

    return atomic_write(target, copy)


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete temporaries of :func:`atomic_write` that a killed process left in ``directory``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".") and TEMP_MARKER in p.name and p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
