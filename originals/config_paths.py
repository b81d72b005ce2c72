"""The MelHuBERT compression repository's config paths, resolved to the shipped ``configs/``.

The original kept each mode's yamls next to its code (``./weight_pruning/config/config_model.yaml``);
this toolkit keeps them in ``configs/<mode>/``. A path given to ``train.py -g/-c`` (rewritten by
the root ``train.py`` before the runner parses it) that does not exist but has the original shape is looked up as ``configs/<mode>/<file>``, first under the
current directory (a clone's root, or a folder holding its own ``configs/``), then under the
toolkit's own root. The yaml files are not duplicated.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath
from typing import Optional, Sequence, TextIO

TOOLKIT_ROOT = Path(__file__).resolve().parent.parent

# original folder (relative, posix) -> ours under configs/
ORIGINAL_CONFIG_DIRS: dict[str, str] = {
    "melhubert/config": "melhubert",
    "weight_pruning/config": "weight_pruning",
    "head_pruning/config/l1": "head_pruning/l1",
    "head_pruning/config/data_driven": "head_pruning/data_driven",
    "row_pruning/config": "row_pruning",
    "distillation/config": "distillation",
}


def original_config_target(path: Path) -> Optional[str]:
    """``./head_pruning/config/l1/config_model.yaml`` -> ``configs/head_pruning/l1/config_model.yaml``;
    None when ``path`` does not have an original config path's shape."""
    if path.is_absolute():
        return None
    parts = PurePosixPath(path.as_posix()).parts
    parts = tuple(p for p in parts if p != ".")
    if len(parts) < 2:
        return None
    folder, name = "/".join(parts[:-1]), parts[-1]
    ours = ORIGINAL_CONFIG_DIRS.get(folder)
    if ours is None:
        return None
    # The reference's HEAD names its default (20 ms) files *_20ms.yaml; ours carry no suffix.
    if name.endswith("_20ms.yaml"):
        name = name[: -len("_20ms.yaml")] + ".yaml"
    return f"configs/{ours}/{name}"


def resolve_config_path(path: Optional[Path], *, cwd: Optional[Path] = None) -> tuple[Optional[Path], Optional[str]]:
    """``(path to use, note)``: an existing path is kept (note None); an original path becomes ours.

    Raises:
        FileNotFoundError: an original-shaped path whose counterpart does not exist either
            (the message names both).
    """
    if path is None or path.exists():
        return path, None
    target = original_config_target(path)
    if target is None:
        return path, None
    cwd = cwd or Path.cwd()
    for root in (cwd, TOOLKIT_ROOT):
        candidate = root / target
        if candidate.is_file():
            shown = candidate.relative_to(cwd) if candidate.is_relative_to(cwd) else candidate
            return candidate, f"{path} -> {shown}"
    raise FileNotFoundError(f"{path} is an original MelHuBERT config path; its counterpart {target} was found neither "
                            f"under {cwd} nor under {TOOLKIT_ROOT}")


CONFIG_OPTIONS = ("-g", "--model_config", "-c", "--runner_config")


def translate_train_argv(argv: Sequence[str], stream: Optional[TextIO] = None) -> list[str]:
    """``train.py``'s argv with original config paths after ``-g`` / ``-c`` replaced by ours.

    Handles ``-g PATH``, ``-gPATH``, ``--model_config PATH`` and ``--model_config=PATH`` (same for
    ``-c`` / ``--runner_config``); everything else is passed through for argparse to judge. One
    stderr line says which original paths were mapped.
    """
    out: list[str] = []
    notes: list[str] = []

    def resolved(value: str) -> str:
        path, note = resolve_config_path(Path(value))
        if note:
            notes.append(note)
        return str(path)

    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if item in CONFIG_OPTIONS and i + 1 < len(items):
            out += [item, resolved(items[i + 1])]
            i += 2
            continue
        option, equals, value = item.partition("=")
        if equals and option in CONFIG_OPTIONS[1::2]:
            out.append(f"{option}={resolved(value)}")
        elif item[:2] in ("-g", "-c") and len(item) > 2 and not item.startswith("--"):
            out.append(item[:2] + resolved(item[2:]))
        else:
            out.append(item)
        i += 1
    if notes:
        print("train.py: original MelHuBERT config layout; using the shipped configs: " + "; ".join(notes),
              file=stream or sys.stderr)
    return out
