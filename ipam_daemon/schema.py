"""How a configuration dataclass says what its keys are: ``knob`` gives a field its default,
its documentation and whether a running agent applies a change of it (``live``); values are
coerced from the field's type (int, float, bool, str, a tuple of strings), so there is no
list of keys by type to keep in step; ``reference`` renders the documentation of every key
(docs/configuration.md is that rendering, kept equal by a test).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

TRUE, FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def knob(default: Any, doc: str, *, live: bool = False) -> Any:
    """A configuration field: its default and what it does (one line or a few)."""
    return dataclasses.field(default=default, metadata={"doc": doc, "live": live})


class SchemaError(ValueError):
    """A value does not fit its key's type; the message names key and value."""


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def coerce(key: str, value: Any, kind: Any) -> Any:
    """A file or environment value as ``kind``, or a SchemaError naming what is wrong."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in TRUE | FALSE:
            return value.strip().lower() in TRUE
        raise SchemaError(f"{key}: expected on/off (true/false), got {value!r}")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise SchemaError(f"{key}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise SchemaError(f"{key}: expected an integer, got {value!r}") from None
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise SchemaError(f"{key}: expected a number of seconds, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise SchemaError(f"{key}: expected a number of seconds, got {value!r}") from None
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SchemaError(f"{key}: expected a list of strings, got {value!r}")
    if kind is str:
        if not isinstance(value, str):
            raise SchemaError(f"{key}: expected a string, got {value!r}")
        return value
    raise SchemaError(f"{key}: no coercion for {kind!r}")  # a schema bug, not user input


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "list of strings"
    return {bool: "on/off", int: "integer", float: "seconds", str: "string"}.get(kind, "")


def reference(sections: list[tuple[str, type, str]]) -> str:
    """Markdown: for each (title, dataclass, prefix) a table of key, type, default, live,
    and what it does."""
    out = []
    for title, cls, prefix in sections:
        out += [f"## {title}", "", "| key | type | default | live | what it does |",
                "|---|---|---|---|---|"]
        types = field_types(cls)
        for f in dataclasses.fields(cls):
            if "doc" not in f.metadata:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            shown = ", ".join(default) if isinstance(default, tuple) else default
            shown = f"`{shown}`" if shown != "" else '`""`'
            doc = " ".join(f.metadata["doc"].split())
            out.append(f"| `{prefix}{f.name}` | {_type_name(types[f.name])} | {shown} |"
                       f" {'yes' if f.metadata['live'] else 'no'} | {doc} |")
        out.append("")
    return "\n".join(out)
