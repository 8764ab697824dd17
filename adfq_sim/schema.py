"""YAML into typed schemas: frozen dataclasses filled from mappings, every error naming its field.

Shared by the experiment config and the accelerator spec, so both fail the same way: unknown keys get a
did-you-mean, wrong types name the expected type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from adfq_sim.errors import UserInputError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {type(None): "null", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`; return it in the schema's form."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except UserInputError:
                continue
        raise UserInputError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserInputError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    ok = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        dict: isinstance(value, dict),
    }[tp]
    if not ok:
        raise UserInputError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return float(value) if tp is float else value


def build_dataclass(cls: type, data: Any, where: str) -> Any:
    """A frozen-dataclass schema filled from a YAML mapping: unknown keys (with a did-you-mean) and wrong
    types are UserInputErrors naming the field (`where` is its dotted path)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserInputError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            guess = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean '{guess[0]}'?)" if guess else f" (known keys: {', '.join(known)})"
            raise UserInputError(f"{path}: unknown key{hint}")
        values[key] = _coerce(value, hints[key], path)
    return cls(**values)


def check_choice(value: str, choices: typing.Iterable[str], where: str) -> None:
    """`value` must be one of `choices`; otherwise a UserInputError naming `where`, with a did-you-mean."""
    choices = list(choices)
    if value not in choices:
        guess = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f"did you mean '{guess[0]}'?" if guess else f"expected one of: {', '.join(choices)}"
        raise UserInputError(f"{where}: unknown value {value!r} ({hint})")


def read_yaml_mapping(path: Path, what: str) -> dict:
    """The YAML mapping in `path` (empty file: {}); a missing or unreadable file, bytes that are not UTF-8
    or bad YAML is a UserInputError naming the file.

    The bytes are decoded as UTF-8 here rather than by `read_text` (the locale's encoding) or by PyYAML
    (which would take a leading 0xff 0xfe for UTF-16): configs and specs are UTF-8 text everywhere."""
    if not path.is_file():
        raise UserInputError(f"{what} file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.reader.ReaderError as exc:  # a control character: its str() spans two lines
        line = text.count("\n", 0, exc.position) + 1
        raise UserInputError(f"{path}: line {line} not valid YAML (character U+{exc.character:04X}: {exc.reason})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserInputError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserInputError(f"{path}: the {what} must be a YAML mapping")
    return raw
