"""The agent's two HTTP listeners, one handler:

- the status endpoint, loopback only (``status_address:status_port``, 127.0.0.1:61680):
  ``/v1/pool`` totals and per-ENI counts, ``/v1/enis`` ENIs and their addresses,
  ``/v1/pods`` allocations, plus ``/healthz`` and ``/readyz``;
- the metrics listener (``metrics_address:metrics_port``, port 61678, bindable on the
  node's address so Prometheus can scrape it): ``/metrics`` (Prometheus text), plus
  ``/healthz`` and ``/readyz`` for the kubelet's probes. The introspection paths are not
  served there: pod names and addresses stay on the node.

``/healthz`` answers ``{"ok": true, "version": ...}`` as soon as the process serves;
``/readyz`` is 200 only after the first reconcile. Read-only; nothing here carries
credentials (none are ever held by the service)."""
from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ipam_daemon.metrics import CONTENT_TYPE, Metrics
from ipam_daemon.service import Service
from ipam_daemon.version import VERSION

logger = logging.getLogger(__name__)

HEALTH = frozenset({"/healthz", "/readyz"})
INTROSPECTION = frozenset({"/v1/pool", "/v1/enis", "/v1/pods"})
METRICS = frozenset({"/metrics"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StatusServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("%s: " + format, self.server.name, *args)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        service = self.server.service()
        path = self.path.split("?", 1)[0]
        if path not in self.server.paths:
            self._json(404, {"msg": f"no such endpoint on the {self.server.name}: {path}"})
            return
        try:
            if path == "/healthz":
                self._json(200, {"ok": True, "version": VERSION})
            elif path == "/readyz":
                ready = service is not None and service.pool.reconciled.is_set()
                self._json(200 if ready else 503, {"ready": ready, "version": VERSION})
            elif path == "/metrics":
                self._send(200, self.server.metrics.render(), CONTENT_TYPE)
            elif service is None:
                self._json(503, {"msg": "agent starting: node not discovered yet"})
            elif path == "/v1/pool":
                self._json(200, service.pool_summary())
            elif path == "/v1/enis":
                self._json(200, service.enis_view())
            elif path == "/v1/pods":
                self._json(200, service.pods_view())
        except Exception as exc:  # noqa: BLE001 - the status page must answer
            logger.exception("%s %s failed", self.server.name, path)
            self._json(500, {"msg": f"{type(exc).__name__}: {exc}"})


class StatusServer(ThreadingHTTPServer):
    """One listener serving ``paths`` (a union of HEALTH, INTROSPECTION, METRICS)."""

    daemon_threads = True

    def __init__(self, address: str, port: int, service: Callable[[], Service | None],
                 metrics: Metrics, *, paths: frozenset[str] = HEALTH | INTROSPECTION,
                 name: str = "status endpoint") -> None:
        self.service = service  # None until the node is discovered
        self.metrics = metrics
        self.paths = paths
        self.name = name
        if ":" in address:
            self.address_family = socket.AF_INET6
        super().__init__((address, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()
        host = self.server_address[0]
        logger.info("%s on http://%s:%d", self.name, f"[{host}]" if ":" in host else host,
                    self.port)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def start_listeners(status: tuple[str, int], metrics_at: tuple[str, int],
                    service: Callable[[], Service | None],
                    metrics: Metrics) -> tuple[StatusServer, StatusServer]:
    """The loopback status endpoint and the metrics listener, both serving; if the second
    cannot bind, the first is closed again and the error names the address."""
    status_server = StatusServer(*status, service, metrics)
    try:
        metrics_server = StatusServer(*metrics_at, service, metrics, paths=HEALTH | METRICS,
                                      name="metrics listener")
    except OSError as exc:
        status_server.server_close()
        raise RuntimeError(f"metrics listener: cannot listen on {metrics_at[0]}:{metrics_at[1]}"
                           f" (metrics_address/metrics_port): {exc.strerror or exc}") from None
    status_server.start()
    metrics_server.start()
    return status_server, metrics_server
