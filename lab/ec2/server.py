"""``EmulatedCloud``: moto's EC2 behind the strict layer, served over HTTP on 127.0.0.1 by a
threaded WSGI server in background threads of this process.

Each emulator uses its own random moto account id, so several emulators in one process do
not see each other's state; ``stop()`` drops that account's EC2 state.

Only moto's EC2 app is mounted (no ``/moto-api``, no other services), and moto makes no
outbound calls in this mode: nothing leaves the machine. Clients use any credentials
(tests use "testing"); the emulator never checks or logs them.
"""
from __future__ import annotations

import ctypes
import logging
import os
import random
import socket
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

from lab.ec2.control import ControlApp, EmulatorControl
from lab.ec2.settings import EmulatorSettings
from lab.ec2.snapshot import take_snapshot
from lab.ec2.strict import RuntimeKnobs, StrictLayer
from lab.ec2.faults import CallCounter, FaultInjector, TokenBuckets

logger = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
LISTEN_BACKLOG = 128
IDLE_CONNECTION_TIMEOUT = 300.0


def _create_backend_app() -> Any:
    from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app

    return create_backend_app("ec2"), MotoRequestHandler


def _quiet_handler(base: type) -> type:
    class QuietHandler(base):  # type: ignore[misc, valid-type]
        timeout = IDLE_CONNECTION_TIMEOUT  # a silent client cannot hold a thread forever

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            logger.debug("%s %s", self.requestline, code)

    return QuietHandler


def _listening_socket(port: int, address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class EmulatedCloud:
    """The embedded emulated EC2. Use ``EmulatedCloud.start()``; also a context manager."""

    def __init__(self, *, port: int, region: str, settings: EmulatorSettings) -> None:
        self.region = region
        self.settings = settings
        self.account_id = "".join(random.choice("0123456789") for _ in range(12))
        self._stopping = threading.Event()
        self._servers: list[tuple[BaseWSGIServer, threading.Thread]] = []
        self._netns_endpoints: dict[str, str] = {}
        self._subscribers: list[Any] = []
        self.knobs = RuntimeKnobs(
            buckets=TokenBuckets(settings.buckets, settings.buckets_enabled),
            faults=FaultInjector(settings.seed),
            counts=CallCounter(),
            attach_latency=settings.attach_latency,
            route_table_limit=settings.route_table_limit,
            timeout_fault_seconds=settings.timeout_fault_seconds,
            seed=settings.seed,
            rules_off=settings.rules_off,
        )
        moto_app, self._handler = _create_backend_app()
        control_app = ControlApp(self.knobs, self._take_snapshot, region)
        self.layer = StrictLayer(moto_app, account_id=self.account_id, region=region,
                                 knobs=self.knobs, control_app=control_app,
                                 stopping=self._stopping)
        sock = _listening_socket(port)
        self.port = sock.getsockname()[1]
        self._serve_socket(sock)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.control = EmulatorControl(self.endpoint)

    @classmethod
    def start(cls, *, port: int = 0, region: str = "us-east-1",
              settings: EmulatorSettings | None = None) -> "EmulatedCloud":
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {port}")
        cloud = cls(port=port, region=region, settings=settings or EmulatorSettings())
        logger.info("emulated EC2 serving on %s (region %s)", cloud.endpoint, region)
        return cloud

    def _serve_socket(self, sock: socket.socket) -> None:
        try:
            server = make_server("127.0.0.1", self.port if hasattr(self, "port") else 0,
                                 self._serve_and_notify, threaded=True,
                                 request_handler=_quiet_handler(self._handler),
                                 fd=sock.fileno())
        finally:
            sock.close()  # the server holds its own duplicate of the descriptor
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                  name=f"emulated-ec2-{self.port}", daemon=True)
        thread.start()
        self._servers.append((server, thread))

    def _serve_and_notify(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            return self.layer(environ, start_response)
        finally:
            if not environ.get("PATH_INFO", "").startswith("/_emulator/"):
                for callback in list(self._subscribers):
                    try:
                        callback()
                    except Exception:  # a follower's bug must not break the EC2 answer
                        logger.exception("change subscriber %r failed", callback)

    def subscribe(self, callback: Any) -> None:
        """Call ``callback()`` (quick, no arguments) after every EC2 call, once moto holds
        its result and before the answer is sent (Describe calls too: the follower compares
        state itself). The VPC fabric wakes on it."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Any) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def snapshot(self) -> dict:
        """The state picture of snapshot.py, in-process (no HTTP round trip)."""
        return self._take_snapshot()

    def _take_snapshot(self) -> dict:
        from moto.ec2.models import ec2_backends

        with self.layer.lock:
            return take_snapshot(ec2_backends[self.account_id][self.region])

    def listen_in_netns(self, netns_path: str) -> str:
        """Also serve on 127.0.0.1:<port> inside the network namespace at ``netns_path``
        (its loopback is brought up); returns the endpoint as seen from inside."""
        if netns_path in self._netns_endpoints:
            return self._netns_endpoints[netns_path]
        if not os.path.exists(netns_path):
            raise FileNotFoundError(f"network namespace {netns_path} does not exist")
        self._serve_socket(open_socket_in_netns(netns_path, self.port))
        self._netns_endpoints[netns_path] = self.endpoint
        logger.info("emulated EC2 also serving inside %s", netns_path)
        return self.endpoint

    def stop(self) -> None:
        self._stopping.set()
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)
        self._servers.clear()
        self._netns_endpoints.clear()
        from moto.ec2.models import ec2_backends

        ec2_backends.pop(self.account_id, None)

    def __enter__(self) -> "EmulatedCloud":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def open_socket_in_netns(netns_path: str, port: int, address: str = "127.0.0.1") -> socket.socket:
    """A listening TCP socket on ``address:port`` inside the namespace at ``netns_path``
    (its loopback brought up), made by a short-lived thread that alone enters it."""
    made: dict[str, Any] = {}
    thread = threading.Thread(target=_open_socket_in_netns,
                              args=(netns_path, port, made, address), daemon=True)
    thread.start()
    thread.join(timeout=10)
    if "error" in made:
        raise OSError(f"cannot listen on {address}:{port} in {netns_path}: {made['error']}")
    if "socket" not in made:
        raise TimeoutError(f"opening a socket in {netns_path} did not finish")
    return made["socket"]


def _open_socket_in_netns(netns_path: str, port: int, out: dict[str, Any],
                          address: str = "127.0.0.1") -> None:
    """Runs in its own short-lived thread: only this thread enters the namespace."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns: {os.strerror(err)}")
        finally:
            os.close(fd)
        _bring_loopback_up()
        out["socket"] = _listening_socket(port, address)
    except Exception as exc:  # reported to the caller
        out["error"] = exc


def _bring_loopback_up() -> None:
    """ioctl SIOCSIFFLAGS on ``lo`` in the current thread's namespace (no subprocess)."""
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(probe, siocgifflags, request))[1]
        if not flags & iff_up:
            fcntl.ioctl(probe, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))
