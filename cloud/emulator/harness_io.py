"""The harness's small I/O helpers: the libcni test client (built once), the CNI files
(written by the ``cni`` package in a child process: ``cloud`` does not import ``cni``),
GETs on an agent's unix socket, and a stoppable wait."""
from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
LIBCNI_SRC = REPO / "tests" / "libcni"
LIBCNI_BIN = LIBCNI_SRC / "bin" / "libcni-client"
GOPATH = "/usr/share/gocode"  # Debian's golang-github-appc-cni-dev
AGENT_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_EC2_METADATA_DISABLED": "true"}
_SOCKET_TIMEOUT = 10.0

_WRITE_CNI_FILES = """
import sys
from cni.conflist import ConflistOptions, render_conflist_json
from cni.launcher import write_plugin_launcher
bin_dir, conflist, mode = sys.argv[1:4]
write_plugin_launcher(bin_dir)
with open(conflist, "w") as f:
    f.write(render_conflist_json(ConflistOptions(mode=mode, portmap=False, bandwidth=False)))
"""


def build_libcni_client(out: Path = LIBCNI_BIN) -> str:
    """The libcni client binary, built offline in GOPATH mode if it is not there yet."""
    if out.exists():
        return str(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GO111MODULE="off", GOPATH=GOPATH, GOFLAGS="", CGO_ENABLED="0",
               GOCACHE=str(out.parent / ".gocache"))
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    proc = subprocess.run(["go", "build", "-o", str(tmp), "."], cwd=LIBCNI_SRC, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"building the libcni client failed:\n{proc.stderr}")
    os.replace(tmp, out)
    return str(out)


def write_cni_files(workdir: Path, mode: str) -> tuple[str, str]:
    """Write the ``underlay`` launcher into ``<workdir>/bin`` and the conflist (portmap and
    bandwidth off: the harness passes no capability arguments); returns both paths."""
    bin_dir = workdir / "bin"
    conflist = workdir / "10-underlay.conflist"
    proc = subprocess.run([sys.executable, "-c", _WRITE_CNI_FILES, str(bin_dir), str(conflist),
                           mode], capture_output=True, text=True, timeout=60, check=False,
                          cwd=str(REPO))
    if proc.returncode != 0:
        raise RuntimeError(f"writing the CNI launcher and conflist failed:\n{proc.stderr}")
    return str(bin_dir), str(conflist)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def query_agent(socket_path: str, path: str, timeout: float = _SOCKET_TIMEOUT) -> tuple[int, Any]:
    """GET ``path`` on the agent's socket; (HTTP status, decoded JSON body)."""
    conn = _UnixConnection(socket_path, timeout)
    try:
        conn.request("GET", path)
        reply = conn.getresponse()
        raw = reply.read()
    finally:
        conn.close()
    try:
        return reply.status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return reply.status, raw.decode("utf-8", "replace")


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05,
               stop: threading.Event | None = None) -> bool:
    """Poll ``condition`` until it holds (True), ``timeout`` passes or ``stop`` is set."""
    stop = stop or threading.Event()
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        stop.wait(step)
    return False


_OUTSIDE_SERVER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(1)
server.settimeout(float(sys.argv[3]))
print("ready", flush=True)
conn, peer = server.accept()
print(peer[0], flush=True)
conn.close()
"""


def probe_source_outside(outside_netns: str, client_netns: str, address: str, port: int,
                         timeout: float) -> str:
    """A one-shot TCP listener on ``address:port`` in the outside namespace; connect from
    ``client_netns`` and return the peer address the listener saw."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside_netns, sys.executable, "-c", _OUTSIDE_SERVER, address,
         str(port), str(timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None and server.stderr is not None
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"outside listener failed: {server.stderr.read().strip()}")
        subprocess.run(["ip", "netns", "exec", client_netns, "busybox", "nc", "-w", "2", address,
                        str(port)], stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=timeout, check=False)
        seen = server.stdout.readline().strip()
        if not seen:
            raise RuntimeError(f"no connection from {client_netns} reached {address}:{port}: "
                               f"{server.stderr.read().strip()}")
        return seen
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
