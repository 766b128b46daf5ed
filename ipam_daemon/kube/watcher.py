"""List then watch, as an informer does: list (in pages) to get the state and its
resourceVersion, watch from there, resume from the last seen resourceVersion when a stream
ends or breaks, relist on 410 Gone. A relist is diffed against the cache, so a deletion
that happened while the stream was down is still delivered as DELETED. Events reach the
callback in order, from one thread; errors back off (bounded, doubling, reset on
success); :meth:`Watcher.stop` ends it promptly."""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

import urllib3
from kubernetes.watch.watch import iter_resp_lines

from ipam_daemon.backoff import Backoff

from .client import KubeApi, KubeError, KubeGone, KubeUnavailable, translate_error

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
EventCallback = Callable[[str, Obj], None]


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return meta.get("uid") or f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class Watcher:
    def __init__(self, api: KubeApi, list_method: Callable[..., Any], on_event: EventCallback, *,
                 name: str, selectors: dict | None = None, page_size: int = 500) -> None:
        self.api = api
        self.list_method = list_method
        self.on_event = on_event
        self.name = name
        self.selectors = dict(selectors or {})
        self.page_size = page_size
        self.cache: dict[str, Obj] = {}
        self.synced = threading.Event()
        self.stopped = threading.Event()
        self.resource_version: str | None = None
        self.relists = 0
        self.resumes = 0
        self.errors = 0
        self._lock = threading.Lock()
        self._response: Any = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> "Watcher":
        self._thread = threading.Thread(target=self.run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        with self._lock:
            response = self._response
        if response is not None:
            try:
                response.shutdown()  # wakes a read blocked on the socket
            except Exception:  # already released or closed: nothing to wake
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> list[Obj]:
        with self._lock:
            return list(self.cache.values())

    # -- loop ---------------------------------------------------------------------
    def run(self) -> None:
        backoff = Backoff(self.api.settings.backoff_min, self.api.settings.backoff_max)
        while not self.stopped.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                else:
                    self.resumes += 1
                self._watch_once()
                backoff.reset()
            except KubeGone as exc:
                logger.info("watch %s: %s; relisting", self.name, exc)
                self.resource_version = None
            except Exception as exc:  # KubeError, or a bug: the loop must outlive both
                self.errors += 1
                delay = backoff.next_delay()
                if isinstance(exc, KubeError):
                    logger.warning("watch %s: %s; retrying in %.1fs", self.name, exc, delay)
                else:
                    logger.exception("watch %s: unexpected failure; retrying in %.1fs", self.name, delay)
                self.stopped.wait(delay)

    def _relist(self) -> None:
        items: list[Obj] = []
        cont: str | None = None
        while True:
            page = self.api.list_page(self.list_method, self.selectors, self.page_size, cont)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        fresh = {object_key(o): o for o in items}
        with self._lock:
            old = self.cache
            self.cache = dict(fresh)
        self.relists += 1
        self.resource_version = meta.get("resourceVersion") or "0"
        for key, obj in old.items():
            if key not in fresh:
                self._deliver("DELETED", obj)
        for key, obj in fresh.items():
            before = old.get(key)
            if before is None:
                self._deliver("ADDED", obj)
            elif before.get("metadata", {}).get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._deliver("MODIFIED", obj)
        self.synced.set()
        logger.debug("watch %s: listed %d objects at RV %s", self.name, len(fresh), self.resource_version)

    def _watch_once(self) -> None:
        response = self.api.open_watch(self.list_method, self.selectors, self.resource_version or "0")
        with self._lock:
            self._response = response
        try:
            if self.stopped.is_set():
                return
            for line in iter_resp_lines(response):
                if self.stopped.is_set():
                    return
                if line.strip():
                    self._handle_line(line)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if self.stopped.is_set():
                return
            raise translate_error(exc, f"watch {self.name} stream") from None
        finally:
            with self._lock:
                self._response = None
            response.release_conn()

    def _handle_line(self, line: str) -> None:
        try:
            event = json.loads(line)
            kind, obj = event["type"], event["object"]
        except (ValueError, KeyError, TypeError):
            raise KubeUnavailable(f"watch {self.name}: malformed event {line[:200]!r}") from None
        if kind == "ERROR":
            code = obj.get("code", 0)
            message = f"watch {self.name}: {obj.get('reason', '')} {obj.get('message', '')}"
            if code == 410:
                raise KubeGone(message, 410)
            raise KubeUnavailable(message, code)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            self.resource_version = rv or self.resource_version
            return
        key = object_key(obj)
        with self._lock:
            if kind == "DELETED":
                self.cache.pop(key, None)
            else:
                self.cache[key] = obj
        if rv:
            self.resource_version = rv
        self._deliver(kind, obj)

    def _deliver(self, kind: str, obj: Obj) -> None:
        try:
            self.on_event(kind, obj)
        except Exception:  # a consumer bug must not kill the watch
            logger.exception("watch %s: the %s handler failed", self.name, kind)
