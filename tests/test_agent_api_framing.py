"""The agent's socket API answers broken HTTP framing with the same JSON error (a 4xx and a
CNI code) as any other bad request, never the standard library's HTML page or a 500."""
from __future__ import annotations

import json
import socket

import pytest
from test_fuzz_agent_api import agent, emulator  # noqa: F401 - fixtures

from ipam_daemon.client import AgentClient


SURROGATE = b'{"api": 1, "network": "n", "container_id": "c\\udcff", "ifname": "eth0"}'


def send_raw(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@pytest.mark.parametrize("data,names", [
    (b"POST /v1/attach HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n{}", "Content-Length"),
    (b"PUT /v1/attach HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", "'PUT'"),
    (b"garbage\r\n\r\n", "malformed request"),
    (b"POST /v1/attach HTTP/9.0\r\nContent-Length: 2\r\n\r\n{}", "malformed request"),
    (b"POST /v1/attach HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "malformed request"),
    (b"POST /v1/detach HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(SURROGATE), SURROGATE),
     "not valid Unicode"),
], ids=["superscript-length", "put", "garbage-line", "http-9", "long-header", "surrogate"])
def test_framing_errors_are_json_client_errors(agent, data, names):
    before = AgentClient(agent.config["socket_path"]).get("/v1/pods")
    reply = send_raw(agent.config["socket_path"], data)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), reply[:200]
    assert 400 <= int(head.split()[1]) < 500, reply[:200]
    assert b"application/json" in head, reply[:200]
    error = json.loads(body)
    assert isinstance(error["code"], int) and names in error["msg"], error
    assert AgentClient(agent.config["socket_path"]).get("/v1/pods") == before


@pytest.mark.parametrize("path", ["//v1/pods", "///v1/pool", "/v1//pods", "/v1/pods/",
                                  "//v1/detach"])
def test_a_path_that_is_nearly_an_endpoint_is_not_one(agent, path):
    """The standard library folds a leading "//" into "/" (an open-redirect guard for web
    servers); the agent answers exactly the endpoint asked for, so "//v1/pods" is refused
    like any other unknown path and names what the client sent."""
    method = "POST" if path.endswith("detach") else "GET"
    body = b'{"api": 1, "network": "fuzzapi", "container_id": "keep-a", "ifname": "eth0"}'
    data = f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n".encode()
    data += (b"Content-Length: %d\r\n\r\n%s" % (len(body), body)) if method == "POST" else b"\r\n"
    before = AgentClient(agent.config["socket_path"]).get("/v1/pods")
    head, _, reply = send_raw(agent.config["socket_path"], data).partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 404, (head, reply[:200])
    assert f"no such endpoint: {method} {path}" in json.loads(reply)["msg"], reply
    assert AgentClient(agent.config["socket_path"]).get("/v1/pods") == before
