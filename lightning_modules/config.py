"""Typed, checked access to the sections of the YAML files of ``train.py`` and its modes.

Every error names the file and the dotted key (``prune.num_heads_each_step``) and says what was
expected; YAML 1.1's habit of reading ``1e-4`` as a string is undone for numbers.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping, Optional, Sequence


class ConfigError(ValueError):
    """A bad value in a mode's yaml; the message names the file and the key."""


def nearest(name: str, candidates: Iterable[str]) -> Optional[str]:
    """The candidate closest to a misspelt ``name`` (difflib ratio >= 0.6), or None."""
    matches = difflib.get_close_matches(name, list(candidates), n=1)
    return matches[0] if matches else None


def reject_unknown_keys(values: Mapping[str, Any], known: Iterable[str], path: str, section: str) -> None:
    """ConfigError for the first key of ``section`` outside ``known``, naming the nearest valid key."""
    known = sorted(known)
    for key in values:
        if key not in known:
            guess = nearest(str(key), known)
            hint = f"; did you mean '{section}.{guess}'?" if guess else f"; valid keys: {', '.join(known)}"
            raise ConfigError(f"{path}: unknown key '{section}.{key}'{hint}")


class Section:
    """Typed access to one yaml section (``prune``, ``factorize``, ``loss_param`` ...)."""

    def __init__(self, data: Mapping[str, Any], name: str, path: str, required: bool = True) -> None:
        value = data.get(name)
        if value is None:
            if required:
                raise ConfigError(f"{path}: missing section '{name}'")
            value = {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: section '{name}' must be a mapping, got {type(value).__name__}")
        self.values = dict(value)
        self.name = name
        self.path = path

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: key '{self.key(key)}' {problem}")

    def has(self, key: str) -> bool:
        return self.values.get(key) is not None

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        value = self.values.get(key)
        if value is None:
            if required:
                raise ConfigError(f"{self.path}: missing key '{self.key(key)}'")
            return default
        return value

    def integer(self, key: str, default: Optional[int] = None, minimum: Optional[int] = None, required: bool = False) -> Optional[int]:
        value = self.get(key, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise self.fail(key, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value!r}")
        return int(value)

    def number(self, key: str, default: Optional[float] = None, minimum: Optional[float] = None,
               maximum: Optional[float] = None, required: bool = False) -> Optional[float]:
        value = self.get(key, default, required)
        if value is None:
            return None
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise self.fail(key, f"must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, f"must be a number, got {value!r}")
        if maximum is None and minimum is not None and value < minimum:
            raise self.fail(key, f"must be at least {minimum}, got {value!r}")
        if maximum is not None and (value > maximum or (minimum is not None and value < minimum)):
            raise self.fail(key, f"must be in [{minimum}, {maximum}], got {value!r}")
        return float(value)

    def choice(self, key: str, choices: Sequence[str], default: Optional[str] = None) -> str:
        value = self.get(key, default, required=default is None)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def boolean(self, key: str, default: bool = False) -> bool:
        value = self.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def int_or_list(self, key: str, required: bool = True) -> int | list[int]:
        value = self.get(key, required=required)
        if isinstance(value, list):
            if not value or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
                raise self.fail(key, f"must be a non-negative integer or a list of them, got {value!r}")
            return [int(v) for v in value]
        return int(self.integer(key, required=required))  # type: ignore[arg-type]

    def paths(self, key: str, required: bool = False) -> list[str]:
        value = self.get(key, None, required)
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(key, f"must be a non-empty list of file paths, got {value!r}")
        return list(value)


class DottedConfig:
    """``section.key`` access over a whole YAML file, delegating to :class:`Section`."""

    def __init__(self, data: Mapping[str, Any], path: str) -> None:
        self.data = data
        self.path = path

    def section(self, name: str, required: bool = True) -> Section:
        return Section(self.data, name, self.path, required=required)

    def _split(self, key: str, required: bool) -> tuple[Section, str]:
        section, name = key.split(".", 1)
        return self.section(section, required=required), name

    def get(self, key: str, default: Any = None, required: bool = False) -> Any:
        section, name = self._split(key, required)
        return section.get(name, default, required)

    def integer(self, key: str, default: Optional[int] = None, minimum: Optional[int] = None, required: bool = False) -> Optional[int]:
        section, name = self._split(key, required)
        return section.integer(name, default, minimum, required)

    def number(self, key: str, default: Optional[float] = None, minimum: Optional[float] = None, required: bool = False) -> Optional[float]:
        section, name = self._split(key, required)
        return section.number(name, default, minimum, required=required)

    def boolean(self, key: str, default: bool = False) -> bool:
        section, name = self._split(key, False)
        return section.boolean(name, default)

    def paths(self, key: str, required: bool = False) -> list[str]:
        section, name = self._split(key, required)
        return section.paths(name, required)
