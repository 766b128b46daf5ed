"""Fixtures and helpers for the CNI tests: the host executable (the static Go shim, built
from cni/shim when stale) in a CNI bin dir, the libcni client (built once per session),
network namespaces that are always removed, and a listener that records whether anything
reached an agent socket.

Import into a test module with ``from cni_fixtures import ...`` (tests/ is on sys.path).

The libcni client (lab/libcni) is built offline in GOPATH mode against Debian's libcni
1.1.2, by ``lab.node_io.build_libcni_client``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from lab.node_io import build_libcni_client, build_shim, install_shim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_PLUGINS = "/usr/lib/cni"
GOPATH = "/usr/share/gocode"


def unique(prefix: str) -> str:
    """A short unique name (<= 15 chars for links) so parallel helpers never collide."""
    return f"{prefix}{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def libcni_client() -> str:
    return build_libcni_client()


@pytest.fixture(scope="session")
def shim_binary() -> str:
    """The built host executable (``make shim``)."""
    return build_shim()


@pytest.fixture
def cni_bin_dir(tmp_path) -> str:
    """A CNI bin dir holding only the ``underlay`` executable; CNI_PATH adds the reference
    plugins after it."""
    bin_dir = str(tmp_path / "bin")
    install_shim(bin_dir)
    return bin_dir


def cni_path(bin_dir: str) -> str:
    return f"{bin_dir}:{REFERENCE_PLUGINS}"


def run_plugin(bin_dir: str, env: dict[str, str], stdin: bytes | str,
               timeout: float = 30) -> subprocess.CompletedProcess:
    """Exec the plugin exactly as a runtime does: only the CNI_* environment and stdin."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    base = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    return subprocess.run([os.path.join(bin_dir, "underlay")], input=data, env={**base, **env},
                          capture_output=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class LibcniRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def run_libcni(client: str, command: str, conflist: str, *args: str, cni_path_: str,
               cache_dir: str, netns_exec: str | None = None, env: dict | None = None,
               timeout: float = 60) -> LibcniRun:
    """``libcni-client COMMAND CONFLIST [NETNS CID IFNAME [ARGS]]``, optionally run inside
    the named network namespace (the node) with ``ip netns exec``."""
    argv = [client, command, conflist, *args]
    if netns_exec:
        argv = ["ip", "netns", "exec", netns_exec, *argv]
    full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_PATH": cni_path_,
                "LIBCNI_CACHE_DIR": cache_dir, **(env or {})}
    proc = subprocess.run(argv, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return LibcniRun(proc.returncode, proc.stdout, proc.stderr)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          check=check)


@pytest.fixture
def make_netns() -> Iterator:
    """``make_netns(prefix)`` -> name of a new namespace; all are deleted afterwards."""
    made: list[str] = []

    def make(prefix: str = "h4ns") -> str:
        name = unique(prefix)
        _ip("netns", "add", name)
        made.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        return name

    try:
        yield make
    finally:
        errors = []
        for name in reversed(made):
            proc = _ip("netns", "del", name, check=False)
            if proc.returncode != 0:
                errors.append(f"{name}: {proc.stderr.strip()}")
        assert not errors, f"could not delete namespaces: {errors}"


def list_netns() -> set[str]:
    return {line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line}


@dataclass
class SocketRecorder:
    """A unix socket listener that only records connections: it proves that nothing was
    sent to the agent (a bad request must be refused before reaching it)."""

    path: str
    connections: list[bytes] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> "SocketRecorder":
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    self.connections.append(conn.recv(65536))
                except OSError:
                    self.connections.append(b"")

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        if self._sock:
            self._sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A short temporary directory: unix socket paths must stay under 108 bytes."""
    path = tempfile.mkdtemp(prefix="h4cni-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def socket_recorder(short_tmp) -> Iterator[SocketRecorder]:
    rec = SocketRecorder(os.path.join(short_tmp, "agent.sock")).start()
    try:
        yield rec
    finally:
        rec.stop()
