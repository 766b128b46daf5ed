"""The agent's local API: HTTP/1.1 + JSON over a unix socket (mode 0600, parent directory
0700), protocol in ``cni.spec``. Debuggable with ``curl --unix-socket``.

``POST /v1/cni`` carries one whole CNI invocation from the host executable (the CNI_*
environment and stdin) and answers what to print and the exit code
(``cni.invocation.run_invocation``). The invocation reaches the service through the same
router as the older per-operation endpoints (``/v1/attach``, ``/v1/detach``, ...), which
stay for executables of the previous release: an upgrade never strands a DEL.

Requests are size-limited (413), parsed and validated into frozen calls naming the bad
field (400, code 7 or 2), and every failure becomes an ``ErrorReply`` with a CNI code in
one place (``_error_reply``). Nothing changes state before validation succeeds.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import sqlite3
import stat
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from cni.invocation import Answer, run_invocation
from cni.spec import API_VERSION, SUPPORTED_VERSIONS, CniError, Code

from ipam_daemon.errors import kind_of
from ipam_daemon.service import AttachCall, CheckCall, DetachCall, Service
from ipam_daemon.store import AllocationKey, PodInfo

logger = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
# POST /v1/cni carries the netconf (at most 1 MiB, the executable's limit) as a JSON
# string, which may escape each byte into up to 6.
MAX_CNI_BODY = 8 * 1024 * 1024
CNI_ENDPOINT = "/v1/cni"
MAX_DRAIN = 1024 * 1024  # oversized bodies up to this are read and dropped before the 413
MAX_FIELD = 512


class RequestError(CniError):
    """A malformed request; becomes HTTP 400 (413 for size)."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(code, msg)
        self.status = status


def _string(body: dict, name: str, *, required: bool = True, empty_ok: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise RequestError(Code.INVALID_CONFIG, f"field {name!r} is required")
        return ""
    if not isinstance(value, str):
        raise RequestError(Code.INVALID_CONFIG, f"field {name!r} must be a string,"
                           f" got {type(value).__name__}")
    if not value and required and not empty_ok:
        raise RequestError(Code.INVALID_CONFIG, f"field {name!r} must not be empty")
    if len(value) > MAX_FIELD or "\x00" in value:
        raise RequestError(Code.INVALID_CONFIG, f"field {name!r} is too long or has NUL bytes")
    return value


def _check_api(body: dict, *, newer_ok: bool = False) -> None:
    """API_VERSION and one back; a DEL (``newer_ok``) also one ahead: during a rollout a
    newer executable's DEL must still release what this agent holds."""
    api = body.get("api")
    if not isinstance(api, int) or isinstance(api, bool):
        raise RequestError(Code.INVALID_CONFIG, f"field 'api' must be an integer"
                           f" (this agent speaks {API_VERSION})")
    if newer_ok and api == API_VERSION + 1:
        return
    if api > API_VERSION or api < API_VERSION - 1:
        raise RequestError(Code.INCOMPATIBLE_VERSION, f"api version {api} not supported"
                           f" (this agent speaks {API_VERSION - 1}..{API_VERSION})")


def _key(body: dict) -> AllocationKey:
    return AllocationKey(_string(body, "network"), _string(body, "container_id"),
                         _string(body, "ifname"))


def parse_attach(body: dict) -> AttachCall:
    _check_api(body)
    version = _string(body, "cni_version")
    if version not in SUPPORTED_VERSIONS:
        raise RequestError(Code.INCOMPATIBLE_VERSION, f"cni_version {version!r} not supported"
                           f" (supported: {', '.join(SUPPORTED_VERSIONS)})")
    mtu = body.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)
                            or not 576 <= mtu <= 9001):
        raise RequestError(Code.INVALID_CONFIG, f"field 'mtu' must be 576..9001, got {mtu!r}")
    pod = PodInfo(_string(body, "pod_namespace", required=False),
                  _string(body, "pod_name", required=False),
                  _string(body, "pod_uid", required=False), _string(body, "netns"))
    # "mode" is what release 0.1.0's executable sends; the agent's datapath setting decides
    return AttachCall(version, _key(body), pod.netns, _string(body, "mode", required=False),
                      pod, mtu)


def parse_detach(body: dict) -> DetachCall:
    _check_api(body, newer_ok=True)
    return DetachCall(_key(body), _string(body, "netns", required=False))


def parse_check(body: dict) -> CheckCall:
    _check_api(body)
    _string(body, "cni_version")
    prev = body.get("prev_result") or {}
    if not isinstance(prev, dict):
        raise RequestError(Code.INVALID_CONFIG, "field 'prev_result' must be an object")
    ips = prev.get("ips") or []
    if not isinstance(ips, list) or not all(isinstance(i, dict) for i in ips):
        raise RequestError(Code.INVALID_CONFIG, "field 'prev_result.ips' must be a list")
    prev_ips = tuple(str(i.get("address", "")).split("/")[0] for i in ips)
    return CheckCall(_key(body), _string(body, "netns"), prev_ips)


def parse_gc(body: dict) -> tuple[str, set[tuple[str, str]]]:
    _check_api(body)
    network = _string(body, "network")
    valid = body.get("valid_attachments")
    if not isinstance(valid, list):
        raise RequestError(Code.INVALID_CONFIG, "field 'valid_attachments' must be a list")
    out = set()
    for index, item in enumerate(valid):
        if not isinstance(item, dict) or not isinstance(item.get("containerID"), str) \
                or not isinstance(item.get("ifname"), str):
            raise RequestError(Code.INVALID_CONFIG, f"field 'valid_attachments[{index}]' must"
                               " be {containerID: str, ifname: str}")
        out.add((item["containerID"], item["ifname"]))
    return network, out


def parse_invocation(body: dict) -> tuple[dict[str, str], bytes]:
    """The executable's frame: ``{"env": {CNI_*: str}, "stdin": str}``."""
    env = body.get("env")
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                            for k, v in env.items()):
        raise RequestError(Code.DECODE_FAILURE, "field 'env' must be an object of strings")
    stdin = body.get("stdin")
    if not isinstance(stdin, str):
        raise RequestError(Code.DECODE_FAILURE, "field 'stdin' must be a string")
    return {k: v for k, v in env.items() if k.startswith("CNI_")}, stdin.encode()


def route_request(service: Service, method: str, path: str,
                  body: dict | None) -> tuple[int, Any]:
    """Answer one API request: (HTTP status, reply). The socket handler and the CNI
    invocations of ``/v1/cni`` both come through here."""
    try:
        if method == "GET":
            routes = {"/v1/status": service.status, "/v1/pool": service.pool_summary,
                      "/v1/enis": service.enis_view, "/v1/pods": service.pods_view}
            route = routes.get(path)
            if route is None:
                raise RequestError(Code.INVALID_CONFIG, f"no such endpoint: GET {path}", 404)
            return 200, route()
        routes = {
            "/v1/attach": lambda b: {"result": service.attach(parse_attach(b))},
            "/v1/detach": lambda b: service.detach(parse_detach(b)) or {},
            "/v1/check": lambda b: service.check(parse_check(b)) or {},
            "/v1/gc": lambda b: {"released": service.gc(*parse_gc(b))},
            CNI_ENDPOINT: lambda b: _invoke(service, *parse_invocation(b)),
        }
        route = routes.get(path)
        if route is None:
            raise RequestError(Code.INVALID_CONFIG, f"no such endpoint: {method} {path}", 404)
        return 200, route(body or {})
    except BaseException as exc:  # noqa: BLE001 - mapped in one place
        return _error_reply(exc)


def _invoke(service: Service, env: dict[str, str], stdin: bytes) -> dict:
    answer: Answer = run_invocation(
        env, stdin, lambda method, path, body: route_request(service, method, path, body))
    return {"exit": answer.exit, "stdout": answer.stdout, "stderr": answer.stderr}


def _error_reply(exc: BaseException) -> tuple[int, dict]:
    """Every failure -> (HTTP status, ErrorReply), in one place."""
    if isinstance(exc, RequestError):
        return exc.status, {"code": exc.code, "msg": exc.msg}
    if isinstance(exc, sqlite3.Error):
        logger.error("state store failed: %s", exc)
        return 503, {"code": int(Code.IO_FAILURE), "msg": f"agent state store failed: {exc}"
                     " (check the state directory's disk)"}
    if isinstance(exc, CniError):
        status = kind_of(exc.code).http_status
        reply = {"code": exc.code, "msg": exc.msg}
        if exc.details:
            reply["details"] = exc.details
        return status, reply
    logger.exception("internal error", exc_info=exc)
    return 500, {"code": int(Code.AGENT_INTERNAL), "msg": f"agent internal error:"
                 f" {type(exc).__name__}: {exc}"}


# What the standard library's own refusals (bad request line, unsupported method or
# version, oversized header) mean as CNI codes.
_FRAMING_CODES = {501: Code.INVALID_CONFIG}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A garbage request line must still get a status line, not an HTTP/0.9 bare body.
    default_request_version = "HTTP/1.1"
    server: "UnixHTTPServer"

    def send_error(self, code: int, message: str | None = None,
                   explain: str | None = None) -> None:
        """The server's own refusals as the same JSON error as every other failure."""
        self.close_connection = True
        cni_code = _FRAMING_CODES.get(code, Code.DECODE_FAILURE)
        msg = f"malformed request: {message or HTTPStatus(code).phrase}"
        if code == 501:
            msg = f"unsupported method {self.command!r}: use GET or POST"
        # every refusal here is the client's doing: answer it as a 4xx
        status = {501: 405, 505: 400}.get(code, code)
        self._send(status, {"code": int(cni_code), "msg": msg})

    def parse_request(self) -> bool:
        """The standard library folds a leading "//" of the path into "/" (an open-redirect
        guard for web servers), which would let "//v1/detach" release a pod; the agent
        routes exactly the path on the request line instead."""
        if not super().parse_request():
            return False
        words = self.requestline.split()
        if len(words) >= 2:
            self.path = words[1]
        return True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        logger.debug("socket: " + format, *args)

    def _send(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):
            self.close_connection = True
            raise RequestError(Code.DECODE_FAILURE, "a Content-Length header is required", 411)
        size = int(length)
        limit = MAX_CNI_BODY if self.path == CNI_ENDPOINT else MAX_BODY
        if size > limit:
            self.close_connection = True
            if size <= MAX_DRAIN:  # let the client finish sending, so it reads our answer
                left = size
                while left > 0:
                    chunk = self.rfile.read(min(65536, left))
                    if not chunk:
                        break
                    left -= len(chunk)
            raise RequestError(Code.INVALID_CONFIG, f"request body of {size} bytes exceeds"
                               f" the {limit} byte limit", 413)
        raw = self.rfile.read(size)
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(Code.DECODE_FAILURE, f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise RequestError(Code.DECODE_FAILURE, "request body must be a JSON object")
        try:  # \udcxx escapes decode to lone surrogates that no store or kernel accepts
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RequestError(Code.DECODE_FAILURE, "request body has a string that is not "
                               "valid Unicode (a lone surrogate escape)") from None
        return body

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        try:
            body = self._body()  # read first: an unread body would corrupt the connection
        except BaseException as exc:  # noqa: BLE001 - mapped in one place
            self._send(*_error_reply(exc))
            return
        self._send(*route_request(self.server.service, "POST", self.path, body))

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._send(*route_request(self.server.service, "GET", self.path, None))


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128

    def __init__(self, path: str, service: Service) -> None:
        self.service = service
        self.path = path
        directory = Path(path).parent
        if not directory.exists():
            directory.mkdir(parents=True, mode=0o700)
        _remove_stale_socket(path)
        old_umask = os.umask(0o177)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        self._thread: threading.Thread | None = None

    def get_request(self):
        request, _ = super().get_request()
        request.settimeout(30.0)  # a stuck client cannot hold a thread forever
        return request, ("unix", 0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="agent-socket", daemon=True)
        self._thread.start()
        logger.info("serving the agent API on %s", self.path)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _remove_stale_socket(path: str) -> None:
    """A socket left by a killed agent is replaced; a live agent's is not stolen; anything
    that is not a socket is refused."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"socket_path {path} exists and is not a socket; refusing to"
                           " replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        logger.info("removed stale socket %s", path)
        return
    finally:
        probe.close()
    raise RuntimeError(f"socket_path {path}: another agent is serving on it")
