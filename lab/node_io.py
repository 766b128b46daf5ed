"""The harness's small I/O helpers: the libcni test client and the host CNI executable
(both Go, built once), the CNI files, GETs on an agent's unix socket, and a stoppable
wait."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cni.conflist import ConflistOptions, render_conflist_json
from ipam_daemon.client import AgentClient

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LIBCNI_SRC = REPO / "lab" / "libcni"  # a minimal runtime over Debian's libcni (Go)
LIBCNI_BIN = REPO / "build" / "libcni-client"
SHIM_SRC = REPO / "cni" / "shim"
SHIM_BIN = REPO / "build" / "underlay"  # what `make shim` builds
PYPROJECT = REPO / "pyproject.toml"  # the version string's one home
GOPATH = "/usr/share/gocode"  # Debian's golang-github-appc-cni-dev
AGENT_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_EC2_METADATA_DISABLED": "true"}
_SOCKET_TIMEOUT = 10.0

_shim_lock = threading.Lock()


def build_shim(out: Path = SHIM_BIN) -> str:
    """The host CNI executable, built with ``cni/shim/build.sh`` and pyproject's version
    (as the Makefile does) when it is missing or older than its sources."""
    with _shim_lock:
        sources = [p for p in SHIM_SRC.iterdir() if p.is_file()] + [PYPROJECT]
        if out.exists() and out.stat().st_mtime >= max(p.stat().st_mtime for p in sources):
            return str(out)
        version = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
        proc = subprocess.run([str(SHIM_SRC / "build.sh"), str(out), version],
                              capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"building the host CNI executable failed:\n{proc.stderr}")
        return str(out)


def install_shim(bin_dir: Path | str) -> str:
    """Copy the executable into ``bin_dir`` as ``underlay`` (mode 0755), as an installer
    would; returns its path."""
    src = build_shim()
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, "underlay")
    tmp = f"{path}.{os.getpid()}.tmp"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


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


def write_cni_files(workdir: Path) -> tuple[str, str]:
    """Install the ``underlay`` executable into ``<workdir>/bin`` and write the conflist
    (portmap and bandwidth off: the harness passes no capability arguments); returns both
    paths."""
    bin_dir = workdir / "bin"
    conflist = workdir / "05-underlay.conflist"
    install_shim(bin_dir)
    conflist.write_text(render_conflist_json(ConflistOptions(portmap=False, bandwidth=False)))
    return str(bin_dir), str(conflist)


def query_agent(socket_path: str, path: str, timeout: float = _SOCKET_TIMEOUT) -> tuple[int, Any]:
    """GET ``path`` on the agent's socket; (HTTP status, decoded JSON body)."""
    client = AgentClient(socket_path, timeout)
    try:
        return client.get(path)
    finally:
        client.close()


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
