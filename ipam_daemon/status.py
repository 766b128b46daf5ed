"""The pool-status endpoint on loopback (``status_address:status_port``):

    /v1/pool  totals (capacity, assigned, warm, cooling) and per-ENI counts
    /v1/enis  ENIs and their addresses      /v1/pods  allocations
    /healthz  the process serves            /readyz   200 only after the first reconcile
    /metrics  Prometheus text (pool gauges, borrow latency, cloud calls/errors by action)

Read-only; nothing here carries credentials (none are ever held by the service)."""
from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from collections.abc import Callable
from typing import Any

from ipam_daemon.metrics import CONTENT_TYPE, Metrics
from ipam_daemon.service import Service

logger = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "StatusServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("status: " + format, *args)

    def _send(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        service, metrics = self.server.service(), self.server.metrics
        path = self.path.split("?", 1)[0]
        try:
            if path == "/healthz":
                self._json(200, {"ok": True})
            elif path == "/readyz":
                ready = service is not None and service.pool.reconciled.is_set()
                self._json(200 if ready else 503, {"ready": ready})
            elif path == "/metrics":
                self._send(200, metrics.render(), CONTENT_TYPE)
            elif service is None:
                self._json(503, {"msg": "agent starting: node not discovered yet"})
            elif path == "/v1/pool":
                self._json(200, service.pool_summary())
            elif path == "/v1/enis":
                self._json(200, service.enis_view())
            elif path == "/v1/pods":
                self._json(200, service.pods_view())
            else:
                self._json(404, {"msg": f"no such endpoint: {path}"})
        except Exception as exc:  # noqa: BLE001 - the status page must answer
            logger.exception("status %s failed", path)
            self._json(500, {"msg": f"{type(exc).__name__}: {exc}"})


class StatusServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: str, port: int, service: Callable[[], Service | None],
                 metrics: Metrics) -> None:
        self.service = service  # None until the node is discovered
        self.metrics = metrics
        super().__init__((address, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="status", daemon=True)
        self._thread.start()
        logger.info("status endpoint on http://%s:%d", self.server_address[0], self.port)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
