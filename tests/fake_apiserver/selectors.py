"""Kubernetes field and label selectors, as the API server parses them.

Field selectors: ``a=b``, ``a==b``, ``a!=b`` joined by commas, on the fields the real server
indexes for pods and nodes (``metadata.name``, ``metadata.namespace``, ``spec.nodeName``,
``status.phase``, ``spec.unschedulable``). Label selectors: equality (``k=v``, ``k==v``,
``k!=v``), existence (``k``, ``!k``) and sets (``k in (a,b)``, ``k notin (a,b)``).
A selector the real server would reject raises :class:`SelectorError` (HTTP 400)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

Obj = dict[str, Any]

FIELDS: dict[str, tuple[str, ...]] = {
    "metadata.name": ("metadata", "name"),
    "metadata.namespace": ("metadata", "namespace"),
    "spec.nodeName": ("spec", "nodeName"),
    "status.phase": ("status", "phase"),
    "spec.unschedulable": ("spec", "unschedulable"),
}


class SelectorError(ValueError):
    """The selector is malformed or names a field the server does not support."""


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()


def _field_value(obj: Obj, path: tuple[str, ...]) -> str:
    node: Any = obj
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    if node is None:
        return "false" if path == ("spec", "unschedulable") else ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(text: str) -> Callable[[Obj], bool]:
    reqs: list[tuple[tuple[str, ...], bool, str]] = []
    for term in filter(None, (t.strip() for t in text.split(","))):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|!=|=)\s*(.*)", term)
        if not m:
            raise SelectorError(f"invalid field selector term {term!r}")
        key, op, value = m.groups()
        if key not in FIELDS:
            raise SelectorError(f'field label not supported: "{key}"')
        reqs.append((FIELDS[key], op != "!=", value))
    return lambda obj: all((_field_value(obj, p) == v) == eq for p, eq, v in reqs)


_LABEL_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nk>[\w./-]+)"
    r"|(?P<sk>[\w./-]+)\s+(?P<sop>in|notin)\s*\((?P<vals>[^)]*)\)"
    r"|(?P<ek>[\w./-]+)\s*(?P<eop>==|!=|=)\s*(?P<ev>[\w.-]*)"
    r"|(?P<xk>[\w./-]+))\s*(?:,|$)")


def parse_label_selector(text: str) -> Callable[[Obj], bool]:
    reqs: list[Requirement] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _LABEL_TERM.match(text, pos)
        if not m or m.end() == pos:
            raise SelectorError(f"invalid label selector {text!r} at offset {pos}")
        pos = m.end()
        if m["nk"]:
            reqs.append(Requirement(m["nk"], "!exists"))
        elif m["sk"]:
            vals = tuple(v.strip() for v in m["vals"].split(",") if v.strip())
            reqs.append(Requirement(m["sk"], m["sop"], vals))
        elif m["ek"]:
            reqs.append(Requirement(m["ek"], "!=" if m["eop"] == "!=" else "=", (m["ev"],)))
        else:
            reqs.append(Requirement(m["xk"], "exists"))

    def matches(obj: Obj) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        for r in reqs:
            have = r.key in labels
            value = labels.get(r.key)
            if r.op == "exists":
                ok = have
            elif r.op == "!exists":
                ok = not have
            elif r.op == "=":
                ok = have and value == r.values[0]
            elif r.op == "!=":
                ok = not have or value != r.values[0]
            elif r.op == "in":
                ok = have and value in r.values
            else:
                ok = not have or value not in r.values
            if not ok:
                return False
        return True

    return matches


def build_matcher(field_selector: str | None, label_selector: str | None) -> Callable[[Obj], bool]:
    by_field = parse_field_selector(field_selector or "")
    by_label = parse_label_selector(label_selector or "")
    return lambda obj: by_field(obj) and by_label(obj)
