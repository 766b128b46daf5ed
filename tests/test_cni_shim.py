"""The host executable itself (cni/shim, Go): a static file that needs nothing of the node
but the agent's socket, which it proves by running in a chroot holding only itself and
that socket's directory; it speaks the agent's versions, turns every agent answer it cannot
use into a CNI error naming the socket, and every failure of its own into a CNI error JSON
(never a Go trace)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cni_fixtures import cni_bin_dir, run_plugin, shim_binary, short_tmp  # noqa: F401

from lab.harness import Cluster
from lab.node_io import query_agent
from cni.spec import SUPPORTED_VERSIONS

PT_INTERP, PT_DYNAMIC = 3, 2
MAX_SIZE = 4_000_000  # bytes: the aim for a shim that only frames one request
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


def program_headers(path: str) -> list[int]:
    """The p_type of every ELF64 program header (little-endian)."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not an ELF64 LE file"
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def test_the_executable_is_static_and_small(shim_binary):
    described = subprocess.run(["file", "-b", shim_binary], capture_output=True, text=True,
                               check=True, timeout=30).stdout
    assert "statically linked" in described, described
    headers = program_headers(shim_binary)
    assert headers and PT_INTERP not in headers and PT_DYNAMIC not in headers
    assert os.path.getsize(shim_binary) < MAX_SIZE


def test_it_speaks_the_agents_versions(cni_bin_dir):
    proc = run_plugin(cni_bin_dir, {"CNI_COMMAND": "VERSION"}, b"")
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)


@pytest.fixture
def chroot_node() -> Iterator[tuple[Cluster, Path, str]]:
    """A node whose agent (veth datapath) puts its socket inside a chroot directory that
    holds only the executable; and a pod namespace."""
    with Cluster(nodes=1, instance_type="t3.small") as cluster:
        node = cluster.nodes[0]
        root = node.workdir / "chroot"
        root.mkdir()
        (root / "underlay").write_bytes(Path(cluster.cni_bin_dir, "underlay").read_bytes())
        (root / "underlay").chmod(0o755)
        cluster.run_agent(node, {"warm_ips": 1, "batch_size": 1,
                                 "socket_path": str(root / "run" / "underlay" / "agent.sock")})
        pod = f"{cluster.prefix}-pchroot"
        assert cluster.record is not None
        cluster.record.add_netns(pod)
        subprocess.run(["ip", "netns", "add", pod], check=True, timeout=30)
        yield cluster, root, pod


def test_runs_in_a_chroot_holding_only_itself_and_the_socket_dir(chroot_node):
    cluster, root, pod = chroot_node
    node = cluster.nodes[0]
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert listing == ["run", "run/underlay", "run/underlay/agent.sock", "underlay"]
    netconf = {"cniVersion": "1.0.0", "name": "underlay", "type": "underlay",
               "socket": "/run/underlay/agent.sock", "mode": "veth"}
    pod_env = {"CNI_CONTAINERID": "chroot-ctr", "CNI_NETNS": f"/run/netns/{pod}",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/",
               "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=chrooted"}

    def run(env: dict, conf: dict) -> subprocess.CompletedProcess:
        # only the executable and the socket exist in there: no libc, no shell, no /proc
        return subprocess.run(["ip", "netns", "exec", node.netns, CHROOT, str(root),
                               "/underlay"], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=60, check=False)

    version = run({"CNI_COMMAND": "VERSION"}, {"cniVersion": "1.0.0"})
    assert version.returncode == 0, version.stdout + version.stderr
    assert json.loads(version.stdout)["cniVersion"] == "1.0.0"

    add = run({**pod_env, "CNI_COMMAND": "ADD"}, netconf)
    assert add.returncode == 0, add.stdout + add.stderr
    result = json.loads(add.stdout)
    address = result["ips"][0]["address"]
    shown = cluster.exec_in(pod, ["ip", "-o", "addr", "show", "dev", "eth0"]).stdout
    assert address in shown
    agent_socket = str(root / "run/underlay/agent.sock")
    status, pods = query_agent(agent_socket, "/v1/pods")
    assert status == 200 and [(p["container_id"], p["name"], p["ip"] + "/32") for p in pods] \
        == [("chroot-ctr", "chrooted", address)]
    assert cluster.exec_in(pod, ["busybox", "ping", "-c", "1", "-W", "2", node.primary_ip],
                           check=False).returncode == 0

    check = run({**pod_env, "CNI_COMMAND": "CHECK"}, {**netconf, "prevResult": result})
    assert check.returncode == 0 and check.stdout == b"", check.stdout + check.stderr

    delete = run({**pod_env, "CNI_COMMAND": "DEL"}, {**netconf, "prevResult": result})
    assert delete.returncode == 0 and delete.stdout == b"", delete.stdout + delete.stderr
    cluster.wait_reaped(node)
    assert "eth0" not in cluster.exec_in(pod, ["ip", "-o", "link"]).stdout
    status, pods = query_agent(agent_socket, "/v1/pods")
    assert status == 200 and pods == []


class CannedAgent:
    """A unix socket server that reads one whole request and answers ``reply`` bytes."""

    def __init__(self, path: str, reply: bytes) -> None:
        self.path, self.reply = path, reply
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                conn.sendall(self.reply)

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)


def http_reply(status: str, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/proc/self/ns/net",
           "CNI_IFNAME": "eth0"}


@pytest.mark.parametrize("reply,code,names", [
    (http_reply("200 OK", b'{"result": {}}'), 11, "that is not an answer to /v1/cni"),
    (http_reply("200 OK", b"not json"), 11, "that is not an answer to /v1/cni"),
    (b"SSH-2.0-OpenSSH\r\n\r\n", 11, "not HTTP/1.x"),
    # an agent of release 0.1.0, which has no /v1/cni: its refusal, as it gave it
    (http_reply("404 Not Found", b'{"code": 7, "msg": "no such endpoint: POST /v1/cni"}'),
     7, "no such endpoint: POST /v1/cni"),
    (http_reply("500 Internal Server Error", b"{}"), 107, "agent answered HTTP 500"),
], ids=["200-without-answer", "200-not-json", "not-http", "old-agent-404", "500-empty"])
def test_agent_answers_it_cannot_use_become_cni_errors(cni_bin_dir, short_tmp, reply, code,
                                                       names):
    path = os.path.join(short_tmp, "agent.sock")
    agent = CannedAgent(path, reply)
    try:
        conf = {"cniVersion": "1.0.0", "name": "n", "type": "underlay", "socket": path}
        proc = run_plugin(cni_bin_dir, ADD_ENV, json.dumps(conf))
    finally:
        agent.close()
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == code and names in err["msg"], err
    assert err["cniVersion"] == "1.0.0" and b"goroutine" not in proc.stderr


def test_the_agents_answer_is_printed_as_it_is(cni_bin_dir, short_tmp):
    """stdout, stderr and the exit code are the agent's, byte for byte."""
    path = os.path.join(short_tmp, "agent.sock")
    answer = {"exit": 3, "stdout": '{"anything": "\\u00e9"}\n', "stderr": "a note\n"}
    agent = CannedAgent(path, http_reply("200 OK", json.dumps(answer).encode()))
    try:
        conf = {"cniVersion": "1.0.0", "name": "n", "type": "underlay", "socket": path}
        proc = run_plugin(cni_bin_dir, ADD_ENV, json.dumps(conf))
    finally:
        agent.close()
    assert (proc.returncode, proc.stdout.decode(), proc.stderr.decode()) == \
        (3, answer["stdout"], answer["stderr"])


def test_unreadable_stdin_is_an_io_error_not_a_trace(cni_bin_dir, short_tmp):
    fd = os.open(short_tmp, os.O_RDONLY)  # reading a directory fails with EISDIR
    try:
        proc = subprocess.run([os.path.join(cni_bin_dir, "underlay")], stdin=fd,
                              env=ADD_ENV, capture_output=True, timeout=30, check=False)
    finally:
        os.close(fd)
    err = json.loads(proc.stdout)
    assert proc.returncode == 1 and err["code"] == 5, err
    assert "reading the network configuration on stdin failed" in err["msg"]
    assert proc.stderr == b""


def test_version_flag_names_the_build(shim_binary):
    proc = subprocess.run([shim_binary, "--version"], capture_output=True, text=True,
                          timeout=30, check=True)
    assert proc.stdout.startswith("underlay ")
