"""The fake API server's object store: objects by resource, one monotonically increasing
resourceVersion (as etcd's revision), an event history that watches replay from, a
compaction point (older watches get 410 Gone) and list snapshots for limit/continue."""
from __future__ import annotations

import copy
import datetime
import itertools
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

Obj = dict[str, Any]

# resource -> (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "pods": ("Pod", True),
    "nodes": ("Node", False),
    "configmaps": ("ConfigMap", True),
    "events": ("Event", True),
    "namespaces": ("Namespace", False),
}


class ApiError(Exception):
    """Answered as a Kubernetes Status object."""

    def __init__(self, code: int, reason: str, message: str, *, kind: str = "", name: str = "") -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message
        self.kind, self.name = kind, name

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": self.message, "reason": self.reason, "code": self.code}
        if self.kind or self.name:
            body["details"] = {"name": self.name, "kind": self.kind}
        return body


def gone(since: int, oldest: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {since} ({oldest})")


@dataclass(frozen=True)
class Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: str
    old: Obj | None
    new: Obj


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class ObjectStore:
    def __init__(self, start_rv: int = 1000) -> None:
        self.cond = threading.Condition()
        self.rv = start_rv
        self.compacted = start_rv
        self.history: list[Change] = []
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {r: {} for r in RESOURCES}
        self.snapshots: dict[str, tuple[int, list[Obj]]] = {}
        self.generation = 0  # bumped to end every open watch
        self._ids = itertools.count(1)

    # -- helpers ------------------------------------------------------------------
    def _bucket(self, resource: str) -> dict[tuple[str, str], Obj]:
        if resource not in self.objects:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({resource})")
        return self.objects[resource]

    def _record(self, kind: str, resource: str, old: Obj | None, new: Obj) -> None:
        self.history.append(Change(self.rv, kind, resource, old, copy.deepcopy(new)))
        self.cond.notify_all()

    def _key(self, resource: str, namespace: str | None, name: str) -> tuple[str, str]:
        return ((namespace or "default") if RESOURCES[resource][1] else "", name)

    # -- writes -------------------------------------------------------------------
    def create(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        with self.cond:
            bucket = self._bucket(resource)
            obj = copy.deepcopy(obj)
            kind, namespaced = RESOURCES[resource]
            meta = obj.setdefault("metadata", {})
            if not meta.get("name"):
                prefix = meta.get("generateName")
                if not prefix:
                    raise ApiError(422, "Invalid", f"{kind}: metadata.name: Required value", kind=kind)
                meta["name"] = f"{prefix}{uuid.uuid4().hex[:5]}"
            if namespaced:
                ns = namespace or meta.get("namespace") or "default"
                if meta.get("namespace") and meta["namespace"] != ns:
                    raise ApiError(400, "BadRequest", "the namespace of the object does not match the namespace on the request")
                meta["namespace"] = ns
            key = self._key(resource, meta.get("namespace"), meta["name"])
            if key in bucket:
                raise ApiError(409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists',
                               kind=resource, name=meta["name"])
            self.rv += 1
            meta["uid"] = meta.get("uid") or str(uuid.uuid4())
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("creationTimestamp", now_rfc3339())
            obj["kind"], obj["apiVersion"] = kind, "v1"
            if resource == "pods":
                if not (obj.get("spec") or {}).get("containers"):
                    raise ApiError(422, "Invalid", f'Pod "{meta["name"]}" is invalid: spec.containers: '
                                   "Required value", kind=kind, name=meta["name"])
                obj.setdefault("status", {}).setdefault("phase", "Pending")
            bucket[key] = obj
            self._record("ADDED", resource, None, obj)
            return copy.deepcopy(obj)

    def replace(self, resource: str, obj: Obj, namespace: str | None = None,
                mutate: Callable[[Obj, Obj], Obj] | None = None) -> Obj:
        """Store ``obj`` (or ``mutate(old, obj)``) over the current object, new RV."""
        with self.cond:
            bucket = self._bucket(resource)
            name = obj.get("metadata", {}).get("name", "")
            key = self._key(resource, namespace or obj.get("metadata", {}).get("namespace"), name)
            old = bucket.get(key)
            if old is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', kind=resource, name=name)
            new = copy.deepcopy(obj)
            if mutate is not None:
                new = mutate(old, new)
            sent_rv = new.get("metadata", {}).get("resourceVersion")
            if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": '
                               "the object has been modified; please apply your changes to the latest "
                               "version and try again", kind=resource, name=name)
            meta = new.setdefault("metadata", {})
            for fixed in ("name", "namespace", "uid", "creationTimestamp"):
                if fixed in old["metadata"]:
                    meta[fixed] = old["metadata"][fixed]
            new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return copy.deepcopy(old)  # no-op writes do not bump the RV, as on a real server
            self.rv += 1
            meta["resourceVersion"] = str(self.rv)
            bucket[key] = new
            self._record("MODIFIED", resource, old, new)
            return copy.deepcopy(new)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> Obj:
        with self.cond:
            bucket = self._bucket(resource)
            key = self._key(resource, namespace, name)
            old = bucket.pop(key, None)
            if old is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', kind=resource, name=name)
            self.rv += 1
            gone_obj = copy.deepcopy(old)
            gone_obj["metadata"]["resourceVersion"] = str(self.rv)
            self._record("DELETED", resource, old, gone_obj)
            return gone_obj

    # -- reads --------------------------------------------------------------------
    def get(self, resource: str, name: str, namespace: str | None = None) -> Obj:
        with self.cond:
            obj = self._bucket(resource).get(self._key(resource, namespace, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', kind=resource, name=name)
            return copy.deepcopy(obj)

    def list(self, resource: str, namespace: str | None, match: Callable[[Obj], bool]) -> tuple[int, list[Obj]]:
        with self.cond:
            items = [copy.deepcopy(o) for (ns, _), o in sorted(self._bucket(resource).items())
                     if (namespace is None or ns == namespace) and match(o)]
            return self.rv, items

    def changes_after(self, resource: str, since: int) -> list[Change]:
        """Changes with RV > ``since``; 410 Gone if history before it was compacted."""
        if since < self.compacted:
            raise gone(since, self.compacted)
        return [c for c in self.history if c.rv > since and c.resource == resource]

    # -- list snapshots (limit / continue) -----------------------------------------
    def save_snapshot(self, rv: int, items: list[Obj]) -> str:
        token = f"snap{next(self._ids)}"
        with self.cond:
            self.snapshots[token] = (rv, items)
        return token

    def load_snapshot(self, token: str) -> tuple[int, list[Obj]]:
        with self.cond:
            if token not in self.snapshots:
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                               "consistent list result. You can start a new list without the continue "
                               "parameter.")
            return self.snapshots[token]

    # -- test hooks ---------------------------------------------------------------
    def compact(self) -> int:
        with self.cond:
            self.compacted = self.rv
            self.history.clear()
            self.snapshots.clear()
            return self.compacted

    def end_watches(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def all_objects(self, resource: str) -> Iterable[Obj]:
        with self.cond:
            return [copy.deepcopy(o) for o in self._bucket(resource).values()]
