"""A small Kubernetes API server for tests: real HTTP/1.1 on 127.0.0.1, the real REST paths,
JSON bodies, Status errors, list chunking and chunked watch streams, so that the real
``kubernetes`` client talks to it unchanged. Test hooks change objects directly, compact the
history, end watches, inject errors and latency, take the server down, and log requests
with their RBAC verb."""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .discovery import discovery, validate_event
from .netns import open_socket_in_netns
from .patch import PatchError, apply_patch
from .selectors import SelectorError, build_matcher
from .store import RESOURCES, ApiError, ObjectStore, gone

logger = logging.getLogger(__name__)
Obj = dict[str, Any]


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    verb: str  # the RBAC verb: get, list, watch, create, update, patch, delete
    api_group: str
    resource: str  # with subresource: "nodes/status"
    namespace: str
    name: str
    user_agent: str
    status: int


@dataclass
class Fault:
    status: int
    remaining: int
    path_contains: str | None
    method: str | None

    def applies(self, method: str, path: str) -> bool:
        return (self.remaining > 0 and (self.method is None or self.method == method)
                and (self.path_contains is None or self.path_contains in path))


@dataclass(frozen=True)
class Route:
    resource: str
    namespace: str | None
    name: str
    subresource: str


def parse_route(path: str) -> Route | None:
    parts = [p for p in path.split("/") if p]
    if parts[:2] != ["api", "v1"] or len(parts) < 3:
        return None
    rest = parts[2:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if rest[0] not in RESOURCES or len(rest) > 3:
        return None
    return Route(rest[0], namespace, rest[1] if len(rest) > 1 else "", rest[2] if len(rest) > 2 else "")


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished mid-request (a killed agent) is routine, not a traceback."""
        logger.debug("fake apiserver: request from %s ended abruptly", client_address,
                     exc_info=True)


class FakeApiServer:
    """Start with :meth:`start` (or as a context manager); ``url`` is the client's host."""

    def __init__(self, token: str | None = None, start_rv: int = 1000) -> None:
        self.store = ObjectStore(start_rv)
        self.token = token
        self.requests: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.latency: list[tuple[str | None, float]] = []
        self.in_flight_delayed = 0  # requests being held by an injected delay right now
        self.down = threading.Event()
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._listeners: list[tuple[_Listener, threading.Thread]] = []
        self._netns_paths: list[str] = []
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "FakeApiServer":
        self._serve(None)
        for path in self._netns_paths:
            if os.path.exists(path):  # a namespace deleted meanwhile is not served again
                self._serve(path)
        return self

    def _serve(self, netns_path: str | None) -> None:
        """Serve on 127.0.0.1:<port>: the root namespace's, or that of ``netns_path``."""
        handler = type("Handler", (_Handler,), {"api": self})
        if netns_path is None:
            httpd = _Listener(("127.0.0.1", self.port), handler)
            self.port = httpd.server_address[1]
        else:
            sock = open_socket_in_netns(netns_path, self.port)
            httpd = _Listener(("127.0.0.1", self.port), handler, bind_and_activate=False)
            httpd.socket.close()
            httpd.socket = sock
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                  name=f"fake-apiserver-{self.port}", daemon=True)
        thread.start()
        self._listeners.append((httpd, thread))

    def listen_in_netns(self, netns_path: str) -> str:
        """Also serve on 127.0.0.1:<port> inside the network namespace at ``netns_path``
        (its loopback is brought up), now and after every :meth:`come_up`, until
        :meth:`stop`; returns the URL as seen from inside."""
        if netns_path in self._netns_paths:
            return self.url
        if not self._listeners and not self.down.is_set():
            raise RuntimeError("start the fake API server before listening in a namespace")
        if not os.path.exists(netns_path):
            raise FileNotFoundError(f"network namespace {netns_path} does not exist")
        if not self.down.is_set():
            self._serve(netns_path)
        self._netns_paths.append(netns_path)
        return self.url

    def stop(self) -> None:
        self.stopping.set()
        self.store.end_watches()
        self._close_listener()
        self._netns_paths.clear()

    def _close_listener(self) -> None:
        listeners, self._listeners = self._listeners, []
        for httpd, thread in listeners:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

    def __enter__(self) -> "FakeApiServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- test hooks ---------------------------------------------------------------
    def go_down(self) -> None:
        """Refuse new connections and cut every open one (a crashed API server)."""
        self.down.set()
        self.store.end_watches()
        self._close_listener()

    def come_up(self) -> None:
        self.down.clear()
        self.start()

    def fail_next(self, count: int, status: int = 503, path_contains: str | None = None,
                  method: str | None = None) -> None:
        with self._lock:
            self.faults.append(Fault(status, count, path_contains, method))

    def set_latency(self, seconds: float, path_contains: str | None = None) -> None:
        """Delay every matching request (0 removes the delay for that path filter)."""
        with self._lock:
            self.latency = [(p, s) for p, s in self.latency if p != path_contains]
            if seconds > 0:
                self.latency.append((path_contains, seconds))

    def compact(self) -> int:
        return self.store.compact()

    def drop_watches(self) -> None:
        self.store.end_watches()

    def create(self, resource: str, obj: Obj, namespace: str | None = None) -> Obj:
        return self.store.create(resource, obj, namespace)

    def get(self, resource: str, name: str, namespace: str | None = None) -> Obj:
        return self.store.get(resource, name, namespace)

    def list(self, resource: str, namespace: str | None = None) -> list[Obj]:
        return self.store.list(resource, namespace, lambda o: True)[1]

    def patch(self, resource: str, name: str, patch: Obj, namespace: str | None = None,
              content_type: str = "application/merge-patch+json") -> Obj:
        current = self.store.get(resource, name, namespace)
        return self.store.replace(resource, apply_patch(content_type, current, patch), namespace)

    def delete(self, resource: str, name: str, namespace: str | None = None) -> Obj:
        return self.store.delete(resource, name, namespace)

    def agent_requests(self, user_agent_prefix: str) -> list[RequestRecord]:
        with self._lock:
            return [r for r in self.requests if r.user_agent.startswith(user_agent_prefix)]

    # -- used by the handler ------------------------------------------------------
    def take_fault(self, method: str, path: str) -> int | None:
        with self._lock:
            for fault in self.faults:
                if fault.applies(method, path):
                    fault.remaining -= 1
                    return fault.status
        return None

    def delay_for(self, path: str) -> float:
        with self._lock:
            return max((s for p, s in self.latency if p is None or p in path), default=0.0)

    def wait_latency(self, path: str) -> None:
        """Hold the request for the injected delay; lifting the delay releases it early."""
        if not self.delay_for(path):
            return
        start = time.monotonic()
        with self._lock:
            self.in_flight_delayed += 1
        try:
            while not self.stopping.is_set() and time.monotonic() - start < self.delay_for(path):
                self.stopping.wait(0.02)
        finally:
            with self._lock:
                self.in_flight_delayed -= 1

    def log(self, record: RequestRecord) -> None:
        with self._lock:
            self.requests.append(record)


def rbac_verb(method: str, route: Route | None, watch: bool) -> str:
    if method == "GET":
        if watch:
            return "watch"
        return "get" if route and route.name else "list"
    if method == "DELETE" and route and not route.name:
        return "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


class _Handler(BaseHTTPRequestHandler):
    api: FakeApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("fake apiserver: " + fmt, *args)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # -- plumbing -----------------------------------------------------------------
    def _serve(self, method: str) -> None:
        api = self.api
        if api.down.is_set():
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        route = parse_route(url.path)
        watch = query.get("watch", "").lower() in ("true", "1")
        status = 200
        logged = False

        def log(code: int) -> None:
            api.log(RequestRecord(
                method, url.path, tuple(sorted(query.items())), rbac_verb(method, route, watch), "",
                (route.resource + ("/" + route.subresource if route.subresource else "")) if route else url.path,
                (route.namespace or "") if route else "", route.name if route else "",
                self.headers.get("User-Agent", ""), code))

        try:
            body = self._read_body()
            api.wait_latency(url.path)
            if api.down.is_set():
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if api.token and self.headers.get("Authorization") != f"Bearer {api.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            injected = api.take_fault(method, url.path)
            if injected is not None:
                raise ApiError(injected, {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
                                          504: "Timeout"}.get(injected, "InternalError"),
                               f"injected fault {injected}")
            if watch and method == "GET" and route and not route.name:
                log(200)  # a stream is logged when it starts
                logged = True
                self._watch(route, query)
                return
            status, result = self._dispatch(method, url.path, route, query, body)
            log(status)  # before the answer: a client that got it finds it in the log
            logged = True
            self._send_json(status, result)
        except ApiError as exc:
            status = exc.code
            log(status)
            logged = True
            self._send_json(exc.code, exc.status())
        except (BrokenPipeError, ConnectionResetError):
            status = 499
            self.close_connection = True
        finally:
            if not logged:
                log(status)

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON") from None

    def _send_json(self, status: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    # -- REST ---------------------------------------------------------------------
    def _dispatch(self, method: str, path: str, route: Route | None, query: dict, body: Any) -> tuple[int, Obj]:
        store = self.api.store
        if method == "GET" and path.rstrip("/") in ("/api", "/api/v1", "/apis", "/version"):
            return 200, discovery(path.rstrip("/"))
        if route is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        kind, namespaced = RESOURCES[route.resource]
        if namespaced and route.name and route.namespace is None:
            raise ApiError(404, "NotFound", f"{route.resource} is namespaced")
        if route.subresource and (route.resource, route.subresource) != ("nodes", "status"):
            raise ApiError(404, "NotFound", f"no subresource {route.subresource} on {route.resource}")
        if method == "GET" and not route.name:
            return 200, self._list(route, kind, query)
        if method == "GET":
            return 200, store.get(route.resource, route.name, route.namespace)
        if method == "POST" and not route.name:
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", f"{kind}: the body must be a JSON object")
            if route.resource == "events":
                validate_event(body)
            return 201, store.create(route.resource, body, route.namespace)
        if method == "DELETE" and route.name:
            return 200, store.delete(route.resource, route.name, route.namespace)
        if method == "PATCH" and route.name:
            return 200, self._patch(route, body)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _patch(self, route: Route, body: Any) -> Obj:
        store = self.api.store
        content_type = self.headers.get("Content-Type", "")
        current = store.get(route.resource, route.name, route.namespace)
        try:
            patched = apply_patch(content_type, current, body)
        except PatchError as exc:
            code = 415 if "content type" in str(exc) else 422
            raise ApiError(code, "UnsupportedMediaType" if code == 415 else "Invalid", str(exc)) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        if route.subresource == "status":
            # the status subresource writes status only (spec and metadata stay)
            def keep(old: Obj, new: Obj) -> Obj:
                return {**old, "status": new.get("status", {}),
                        "metadata": {**old["metadata"], "resourceVersion": new["metadata"].get("resourceVersion")}}
        else:
            def keep(old: Obj, new: Obj) -> Obj:
                return {**new, "status": old.get("status", {})} if "status" in old else new
        return store.replace(route.resource, patched, route.namespace, mutate=keep)

    def _list(self, route: Route, kind: str, query: dict) -> Obj:
        store = self.api.store
        try:
            match = build_matcher(query.get("fieldSelector"), query.get("labelSelector"))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        token = query.get("continue")
        if token:
            rv, items = store.load_snapshot(token.split(":")[0])
            offset = int(token.split(":")[1])
        else:
            rv, items = store.list(route.resource, route.namespace, match)
            offset = 0
        limit = int(query.get("limit") or 0)
        meta: Obj = {"resourceVersion": str(rv)}
        page = items[offset:]
        if limit and len(page) > limit:
            snap = token.split(":")[0] if token else store.save_snapshot(rv, items)
            page = page[:limit]
            meta["continue"] = f"{snap}:{offset + limit}"
            meta["remainingItemCount"] = len(items) - offset - limit
        return {"kind": f"{kind}List", "apiVersion": "v1", "metadata": meta, "items": page}

    def _watch(self, route: Route, query: dict) -> int:
        api, store = self.api, self.api.store
        try:
            match = build_matcher(query.get("fieldSelector"), query.get("labelSelector"))
        except SelectorError as exc:
            raise ApiError(400, "BadRequest", str(exc)) from None
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("true", "1")
        in_ns = (lambda o: route.namespace is None or o["metadata"].get("namespace") == route.namespace)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        since_text = query.get("resourceVersion") or "0"
        with store.cond:
            generation = store.generation
            if since_text == "0":
                cursor, items = store.rv, [o for o in store.list(route.resource, route.namespace, match)[1]]
                initial = [("ADDED", o) for o in items]
            else:
                cursor, initial = int(since_text), []
        for kind, obj in initial:
            self._chunk({"type": kind, "object": obj})
        while True:
            with store.cond:
                if store.generation != generation or api.stopping.is_set():
                    break
                try:
                    changes = store.changes_after(route.resource, cursor)
                except ApiError:
                    self._chunk({"type": "ERROR", "object": gone(cursor, store.compacted).status()})
                    break
                if not changes:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        if bookmarks:
                            self._chunk({"type": "BOOKMARK", "object": {
                                "kind": RESOURCES[route.resource][0], "apiVersion": "v1",
                                "metadata": {"resourceVersion": str(store.rv)}}})
                        break
                    store.cond.wait(min(left, 0.5))
                    continue
            for change in changes:
                cursor = change.rv
                was = change.old is not None and in_ns(change.old) and match(change.old)
                now = in_ns(change.new) and match(change.new)
                if change.type == "DELETED":
                    kind = "DELETED" if was else ""
                elif now:
                    kind = "MODIFIED" if was else "ADDED"
                else:
                    kind = "DELETED" if was else ""  # the object left the selector
                if kind:
                    self._chunk({"type": kind, "object": change.new})
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return 200

    def _chunk(self, event: Obj) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
