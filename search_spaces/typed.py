"""Typed construction of frozen dataclasses from JSON/YAML values, failing loudly.

Used by `ArchConfig` (architectures) and `nas.config` (search configs): unknown keys, wrong types
and missing required fields raise `TypeCheckError` naming the dotted path of the bad value, in the
manner of nanoGPT's configurator. Standard library only.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, TypeVar, Union

__all__ = ["TypeCheckError", "from_dict", "to_dict"]

T = TypeVar("T")


class TypeCheckError(ValueError):
    """A value does not fit the dataclass it is read into; the message names its dotted path."""


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{text} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and value is not None:
            try:
                return _convert(options[0], value, path)
            except TypeCheckError as e:  # a specific reason (a section's, a finite number) stays
                if not str(e).startswith(f"{path} must be {_type_name(options[0])}, got"):
                    raise
            raise TypeCheckError(f"{path} must be {_type_name(tp)}, got {_describe(value)}")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, path)
            except TypeCheckError:
                continue
        raise TypeCheckError(f"{path} must be {_type_name(tp)}, got {_describe(value)}")
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            options = ", ".join(repr(a) for a in allowed)
            raise TypeCheckError(f"{path} must be one of {options}, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeCheckError(f"{path} must be {_type_name(tp)}, got {_describe(value)}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise TypeCheckError(
                f"{path} must be a mapping with string keys, got {_describe(value)}"
            )
        _, value_tp = typing.get_args(tp)
        return {k: _convert(value_tp, v, f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeCheckError(f"{path} must be true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeCheckError(f"{path} must be an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeCheckError(f"{path} must be a number, got {_describe(value)}")
        if isinstance(value, int) and abs(value) > 2**53:
            raise TypeCheckError(f"{path} is too large a number: {_describe(value)}")
        if not math.isfinite(value):  # YAML's .nan and .inf, JSON's NaN and Infinity
            raise TypeCheckError(f"{path} must be a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TypeCheckError(f"{path} must be a string, got {_describe(value)}")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in value):  # NUL breaks every path
            raise TypeCheckError(f"{path} must not hold control characters, got {value!r:.60}")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise TypeCheckError(f"{path} is not valid text (a lone surrogate)") from None
        return value
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # a bug in a dataclass, not input


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass `cls` from `data`, checking keys and types recursively.

    `path` prefixes the dotted names in error messages (for example the config file's section).
    """
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise TypeCheckError(f"{where} must be a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        name = f"{path}.{key}" if path else str(key)
        raise TypeCheckError(f"unknown key '{name}'{hint}; allowed keys: {', '.join(fields)}")
    kwargs = {}
    for name, field in fields.items():
        sub = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise TypeCheckError(f"missing required key '{sub}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        if isinstance(e, TypeCheckError):
            raise
        message = str(e)
        if path and not message.startswith(f"{path}."):
            message = f"{path}: {message}"
        raise TypeCheckError(message) from None


def to_dict(obj: Any) -> Any:
    """Dataclass → plain JSON values (tuples become lists, nested dataclasses dicts). A field
    whose metadata says `omit_default` is left out while it holds its default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if not (f.metadata.get("omit_default") and getattr(obj, f.name) == f.default)
        }
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
