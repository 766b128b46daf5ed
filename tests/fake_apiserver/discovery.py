"""Discovery documents (/api, /api/v1, /apis, /version) and the checks the real server makes
on an Event before storing it."""
from __future__ import annotations

from typing import Any

from .store import ApiError

Obj = dict[str, Any]

API_RESOURCES = [
    {"name": "pods", "namespaced": True, "kind": "Pod", "verbs": ["create", "delete", "get", "list", "watch"]},
    {"name": "nodes", "namespaced": False, "kind": "Node", "verbs": ["get", "list", "patch", "watch"]},
    {"name": "nodes/status", "namespaced": False, "kind": "Node", "verbs": ["get", "patch"]},
    {"name": "configmaps", "namespaced": True, "kind": "ConfigMap", "verbs": ["create", "get", "list", "watch"]},
    {"name": "events", "namespaced": True, "kind": "Event", "verbs": ["create", "list"]},
]


def validate_event(body: Obj) -> None:
    involved = body.get("involvedObject") or {}
    for key, value in (("involvedObject.kind", involved.get("kind")), ("involvedObject.name", involved.get("name")),
                       ("reason", body.get("reason")), ("type", body.get("type"))):
        if not value:
            raise ApiError(422, "Invalid", f"Event: {key}: Required value")
    if body["type"] not in ("Normal", "Warning"):
        raise ApiError(422, "Invalid", f"Event: type: Unsupported value: {body['type']!r}")


def discovery(path: str) -> Obj:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
    if path == "/apis":
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    if path == "/version":
        return {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "gitCommit": "0" * 40,
                "gitTreeState": "clean", "buildDate": "2024-08-13T00:00:00Z", "goVersion": "go1.22.5",
                "compiler": "gc", "platform": "linux/amd64"}
    return {"kind": "APIResourceList", "groupVersion": "v1",
            "resources": [{**r, "singularName": "", "name": r["name"]} for r in API_RESOURCES]}
