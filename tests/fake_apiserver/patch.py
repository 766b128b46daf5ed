"""The three PATCH flavours the API server accepts for built-in types.

- JSON merge patch (RFC 7386, ``application/merge-patch+json``): maps merge, ``null``
  deletes, lists are replaced.
- Strategic merge patch (``application/strategic-merge-patch+json``): as merge patch, but
  lists that Kubernetes declares with ``patchStrategy: merge`` are merged element by element
  on their merge key (node conditions by ``type``, taints by ``key``...); ``$patch: delete``
  in an element removes it, ``$patch: replace`` in a map replaces it.
- JSON patch (RFC 6902, ``application/json-patch+json``): add, remove, replace, test, copy,
  move on JSON pointers.
Errors raise :class:`PatchError` (the server answers 422/400 and changes nothing)."""
from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("spec", "taints"): "key",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "volumes"): "name",
    ("metadata", "ownerReferences"): "uid",
}


class PatchError(ValueError):
    pass


def apply_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def apply_strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # $setElementOrder, $retainKeys: ordering hints we do not need
        sub = path + (key,)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and sub in MERGE_KEYS:
            result[key] = _merge_list(result.get(key) or [], value, MERGE_KEYS[sub], sub)
        else:
            merged = apply_strategic_merge_patch(result.get(key), value, sub)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(current: list, patch: list, merge_key: str, path: tuple[str, ...]) -> list:
    out = [copy.deepcopy(item) for item in current]
    for element in patch:
        if not isinstance(element, dict) or merge_key not in element:
            raise PatchError(f"{'.'.join(path)}: every element needs the merge key {merge_key!r}")
        idx = next((i for i, e in enumerate(out)
                    if isinstance(e, dict) and e.get(merge_key) == element[merge_key]), None)
        if element.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append({k: copy.deepcopy(v) for k, v in element.items() if not k.startswith("$")})
        else:
            out[idx] = apply_strategic_merge_patch(out[idx], element, path)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], op: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        try:
            node = node[int(part)] if isinstance(node, list) else node[part]
        except (KeyError, IndexError, ValueError, TypeError):
            raise PatchError(f"{op}: path segment {part!r} does not exist") from None
    return node, parts[-1]


def _get(doc: Any, path: str, op: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, op)
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchError(f"{op}: {path!r} does not exist") from None


def _remove(doc: Any, path: str, op: str) -> Any:
    parent, last = _parent(doc, _pointer(path), op)
    try:
        return parent.pop(int(last) if isinstance(parent, list) else last)
    except (KeyError, IndexError, ValueError, TypeError):
        raise PatchError(f"{op}: {path!r} does not exist") from None


def _add(doc: Any, path: str, value: Any, op: str) -> None:
    parent, last = _parent(doc, _pointer(path), op)
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if not 0 <= index <= len(parent):
            raise PatchError(f"{op}: index {last} out of range at {path!r}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise PatchError(f"{op}: {path!r} has no container")


def apply_json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("a JSON patch is a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise PatchError(f"malformed JSON patch operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op == "add":
            _add(doc, path, copy.deepcopy(operation.get("value")), op)
        elif op == "remove":
            _remove(doc, path, op)
        elif op == "replace":
            _remove(doc, path, op)
            _add(doc, path, copy.deepcopy(operation.get("value")), op)
        elif op == "test":
            if _get(doc, path, op) != operation.get("value"):
                raise PatchError(f"test: value at {path!r} differs")
        elif op in ("copy", "move"):
            value = copy.deepcopy(_get(doc, operation.get("from", ""), op))
            if op == "move":
                _remove(doc, operation["from"], op)
            _add(doc, path, value, op)
        else:
            raise PatchError(f"unknown JSON patch op {op!r}")
    return doc


def apply_patch(content_type: str, target: dict, patch: Any) -> dict:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/merge-patch+json":
        return apply_merge_patch(target, patch)
    if kind == "application/strategic-merge-patch+json":
        if not isinstance(patch, dict):
            raise PatchError("a strategic merge patch is a JSON object")
        return apply_strategic_merge_patch(target, patch)
    if kind == "application/json-patch+json":
        return apply_json_patch(target, patch)
    raise PatchError(f"unsupported patch content type {content_type!r}")
