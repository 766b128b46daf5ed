"""Property-based tests (hypothesis) of the agent's socket API: one real agent process
(datapath "none", socket in a temp dir) against the emulated EC2, spoken to in raw HTTP.

For generated bodies (bytes, JSON of any shape, valid requests with one breaking mutation
and unknown fields), paths and headers: the answer is a 4xx with a JSON body carrying a CNI
code and a message (never a 500 or the agent's internal-error code, never a traceback),
and the allocations the agent holds do not change.

Request framing stays well-formed HTTP/1.1 with ASCII header values here; broken framing
(bad request line, unknown method, over-long header, non-ASCII Content-Length) has its own
table in tests/test_agent_api_framing.py.
"""
from __future__ import annotations

import http.client
import json
import socket
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni.spec import API_VERSION, SUPPORTED_VERSIONS
from fuzz_common import FUZZ, SPEC_CODES, agent_holding_two
from test_agent_helpers import emulator  # noqa: F401 - fixture

NET = "fuzzapi"
ROUTES = {"POST": ("/v1/attach", "/v1/detach", "/v1/check", "/v1/gc"),
          "GET": ("/v1/status", "/v1/pool", "/v1/enis", "/v1/pods")}


@pytest.fixture(scope="module")
def agent(emulator, tmp_path_factory):  # noqa: F811 - fixture
    with agent_holding_two(tmp_path_factory.mktemp("fuzzapi"), emulator, NET) as agent:
        yield agent


def allocations(agent) -> list[tuple]:
    status, body = agent.client.get("/v1/pods")
    assert status == 200, body
    return sorted((p["network"], p["container_id"], p["ifname"], p["ip"]) for p in body)


def exchange(path: str, raw: bytes, method: str) -> tuple[int, str, bytes]:
    """One request on a fresh connection, raw bytes out, a parsed HTTP response back."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10.0)
    try:
        sock.connect(path)
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        sock.close()


def request(method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, length: str | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + (body or b"")


def check_error(status: int, content_type: str, body: bytes) -> dict:
    assert b"Traceback" not in body, body
    assert 400 <= status < 500, (status, body[:300])
    assert content_type == "application/json", (status, content_type, body[:300])
    reply = json.loads(body)
    assert isinstance(reply, dict) and set(reply) <= {"code", "msg", "details"}, reply
    assert type(reply["code"]) is int and reply["code"] in SPEC_CODES, reply
    assert isinstance(reply["msg"], str) and reply["msg"].strip(), reply
    return reply


# ---- valid bodies, and mutations that each make them invalid ----------------------------

def valid_body(route: str) -> dict:
    key = {"api": API_VERSION, "network": NET, "container_id": "fuzz-valid", "ifname": "eth0"}
    if route == "/v1/attach":
        return {**key, "cni_version": "1.1.0", "netns": "/proc/self/ns/net", "mode": "veth",
                "pod_namespace": "default", "pod_name": "fuzz"}
    if route == "/v1/detach":
        return {**key, "container_id": "keep-a"}  # valid: it would release keep-a
    if route == "/v1/check":
        return {**key, "cni_version": "1.1.0", "netns": "/proc/self/ns/net",
                "prev_result": {"ips": [{"address": "10.0.0.9/32"}]}}
    return {"api": API_VERSION, "network": NET, "valid_attachments": []}  # would release all


JUNK = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.booleans(),
                 st.none(), st.text(max_size=20), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
# "mode" of an attach is optional: release 0.1.0's executable sends it, the agent's own
# datapath setting decides
REQUIRED = {"/v1/attach": ("network", "container_id", "ifname", "cni_version", "netns"),
            "/v1/detach": ("network", "container_id", "ifname"),
            "/v1/check": ("network", "container_id", "ifname", "cni_version", "netns"),
            "/v1/gc": ("network",)}


@st.composite
def broken_bodies(draw):
    route = draw(st.sampled_from(ROUTES["POST"]))
    body = valid_body(route)
    kinds = ["api", "required", "long_field", "nul_field"]
    kinds += {"/v1/attach": ["cni_version", "mtu", "optional_type"],
              "/v1/check": ["prev_result"], "/v1/gc": ["attachments"]}.get(route, [])
    kind = draw(st.sampled_from(kinds))
    field = draw(st.sampled_from(REQUIRED[route]))
    if kind == "api":
        body["api"] = draw(st.one_of(
            JUNK.filter(lambda v: isinstance(v, bool) or not isinstance(v, int)),
            # one ahead is accepted for a detach (rollouts): two ahead never is
            st.integers(-2**70, API_VERSION - 2), st.integers(API_VERSION + 2, 2**70)))
        if body["api"] is None and draw(st.booleans()):
            del body["api"]
    elif kind == "required":
        value = draw(st.one_of(st.just(""), JUNK.filter(lambda v: not isinstance(v, str))))
        if value is None and draw(st.booleans()):
            del body[field]
        else:
            body[field] = value
    elif kind == "long_field":
        body[field] = "a" * draw(st.integers(513, 60_000))
    elif kind == "nul_field":
        body[field] = draw(st.text(max_size=10)) + "\x00" + draw(st.text(max_size=10))
    elif kind == "cni_version":
        body["cni_version"] = draw(st.text(max_size=12).filter(
            lambda v: v not in SUPPORTED_VERSIONS and v))
    elif kind == "mtu":
        body["mtu"] = draw(st.one_of(st.integers(-2**70, 575), st.integers(9002, 2**70),
                                     JUNK.filter(lambda v: v is not None and (
                                         isinstance(v, bool) or not isinstance(v, int)))))
    elif kind == "optional_type":
        name = draw(st.sampled_from(("pod_namespace", "pod_name", "pod_uid")))
        body[name] = draw(JUNK.filter(lambda v: v is not None and not isinstance(v, str)))
    elif kind == "prev_result":
        body["prev_result"] = draw(st.one_of(
            JUNK.filter(lambda v: bool(v) and not isinstance(v, dict)),
            st.fixed_dictionaries({"ips": JUNK.filter(lambda v: bool(v) and
                                                      not isinstance(v, list))}),
            st.fixed_dictionaries({"ips": st.lists(JUNK.filter(
                lambda v: not isinstance(v, dict)), min_size=1, max_size=3)})))
    elif kind == "attachments":
        body["valid_attachments"] = draw(st.one_of(
            JUNK.filter(lambda v: not isinstance(v, list)),
            st.lists(st.one_of(JUNK.filter(lambda v: not isinstance(v, dict)),
                               st.fixed_dictionaries({"containerID": JUNK.filter(
                                   lambda v: not isinstance(v, str))}),
                               st.just({"containerID": "keep-a"})), min_size=1, max_size=3)))
        if draw(st.booleans()) and not isinstance(body["valid_attachments"], list):
            del body["valid_attachments"]
    unknown = draw(st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8)
                                   .map(lambda k: "x_" + k), JUNK, max_size=4))
    body.update(unknown)
    return route, kind, json.dumps(body).encode()


# ---- tests ---------------------------------------------------------------------------------

def test_the_valid_bodies_really_change_state(agent):
    """Guards the mutation test: the unmutated attach allocates and its detach releases."""
    sock = agent.config["socket_path"]
    before = allocations(agent)
    status, _, body = exchange(sock, request("POST", "/v1/attach",
                                             json.dumps(valid_body("/v1/attach")).encode()),
                               "POST")
    assert status == 200 and json.loads(body)["result"]["ips"], body
    assert len(allocations(agent)) == len(before) + 1
    detach = {**valid_body("/v1/detach"), "container_id": "fuzz-valid"}
    status, _, body = exchange(sock, request("POST", "/v1/detach", json.dumps(detach).encode()),
                               "POST")
    assert status == 200, body
    assert allocations(agent) == before


def test_mutated_bodies_get_a_json_error_and_change_nothing(agent):
    before = allocations(agent)
    sock = agent.config["socket_path"]
    seen: list[str] = []

    @FUZZ
    @given(case=broken_bodies())
    def run(case):
        route, kind, raw = case
        seen.append(kind)
        status, ctype, body = exchange(sock, request("POST", route, raw), "POST")
        check_error(status, ctype, body)
        assert allocations(agent) == before, (route, kind, raw[:300])

    run()
    assert len(seen) >= 100 and len(set(seen)) >= 8


RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    st.recursive(JUNK, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
    .map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.text(max_size=12).filter(lambda k: k != "api"), JUNK, max_size=6)
    .map(lambda v: json.dumps(v).encode()))


def test_random_bodies_get_a_json_error_and_change_nothing(agent):
    before = allocations(agent)
    sock = agent.config["socket_path"]
    answered: list[int] = []

    @FUZZ
    @given(route=st.sampled_from(ROUTES["POST"]), raw=RAW_BODIES)
    def run(route, raw):
        answered.append(1)
        check_error(*exchange(sock, request("POST", route, raw), "POST"))
        assert allocations(agent) == before, (route, raw[:300])

    run()
    assert len(answered) >= 100


PATH_CHARS = string.ascii_letters + string.digits + "/._-~%?=&"
HEADER_NAMES = st.text(string.ascii_letters + "-", min_size=1, max_size=20).filter(
    lambda n: n.lower() not in ("content-length", "host", "transfer-encoding", "expect"))
HEADER_VALUES = st.text(string.ascii_letters + string.digits + " ;=,/-", max_size=40).map(
    str.strip)


def test_unknown_paths_and_odd_headers_get_a_json_error(agent):
    before = allocations(agent)
    sock = agent.config["socket_path"]
    answered: list[int] = []

    @FUZZ
    @given(method=st.sampled_from(("GET", "POST")),
           path=st.text(PATH_CHARS, max_size=40).map(lambda p: "/" + p),
           headers=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=5),
           length=st.one_of(st.none(), st.sampled_from(("", "abc", "-1", "1e3", "0x10")),
                            # past the drain limit: refused without reading what follows
                            st.integers((1 << 20) + 1, 10**12).map(str)))
    def run(method, path, headers, length):
        if path in ROUTES[method]:
            path += "x"
        answered.append(1)
        body = b'{"api": 1}' if method == "POST" else None
        raw = request(method, path, body, headers, None if method == "GET" else length)
        check_error(*exchange(sock, raw, method))
        assert allocations(agent) == before, (method, path, headers, length)

    run()
    assert len(answered) >= 100


@pytest.mark.parametrize("size", [64 * 1024 + 1, 900 * 1024])
def test_an_oversized_body_gets_413_and_changes_nothing(agent, size):
    before = allocations(agent)
    body = dict(valid_body("/v1/attach"), x_pad="p" * size)
    status, ctype, reply = exchange(agent.config["socket_path"],
                                    request("POST", "/v1/attach", json.dumps(body).encode()),
                                    "POST")
    assert status == 413 and check_error(status, ctype, reply)["msg"].startswith("request body")
    assert allocations(agent) == before


def test_a_huge_declared_length_is_refused_without_reading_it(agent):
    before = allocations(agent)
    status, ctype, reply = exchange(agent.config["socket_path"],
                                    request("POST", "/v1/gc", b"", length=str(2**40)), "POST")
    assert status == 413 and check_error(status, ctype, reply)
    assert allocations(agent) == before
