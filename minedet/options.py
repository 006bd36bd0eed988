"""Typed options from plain mappings: a dataclass built from a dict (a config section, a method's options, a
detector's ``model.extra``), an unknown key or a value of the wrong type one :class:`MinedetError` line naming it.

The one parser of every options dataclass: the config (:mod:`minedet.config`), the method registry
(:mod:`minedet.registry`) and the detector builder (:mod:`minedet.models.build`) read their mappings through it.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, get_type_hints

from minedet.errors import MinedetError


def suggest_key(key: str, known: list[str]) -> str:
    """The end of an "unknown key" message: the nearest known key, or the known keys when none is near."""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(sorted(known))}"


def from_dict(cls: type, values: dict, *, where: str, file: str | None = None) -> Any:
    """Build dataclass ``cls`` from ``values``; an unknown key is a MinedetError naming the nearest key."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise MinedetError(f"section {where!r} must be a mapping, got {type(values).__name__}", file=file)
    names = [f.name for f in dataclasses.fields(cls)]
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise MinedetError(f"unknown key {where}.{key}{suggest_key(str(key), names)}", file=file)
        sub = hints[key]
        if dataclasses.is_dataclass(sub):
            value = from_dict(sub, value, where=f"{where}.{key}", file=file)
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}", file)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str, file: str | None) -> Any:
    """Light type checking of scalars (int given for float is fine; a string for a number is not)."""
    text = str(hint)
    if value is None:
        if "None" in text or hint is Any:
            return None
        raise MinedetError(f"{where} must not be empty", file=file)
    if (hint is bool or text in ("bool | None", "typing.Optional[bool]")) and not isinstance(value, bool):
        raise MinedetError(f"{where} must be true or false, got {value!r}", file=file)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise MinedetError(f"{where} must be an integer, got {value!r}", file=file)
    if hint is float or text in ("float | None", "typing.Optional[float]"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MinedetError(f"{where} must be a number, got {value!r}", file=file)
        return float(value)
    return value
