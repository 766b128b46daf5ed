"""The CNI executable (the static Go shim) run exactly as a runtime runs it (exec, CNI_*
environment, stdin) inside a node of the emulated VPC whose agent (veth datapath) is live:
bad input is refused with the right spec code and a message naming the problem, and no
state changes (the agent's allocations, the node's links, addresses, routes and rules, the
pod namespace, the socket directory); VERSION/STATUS/ADD/DEL/CHECK/GC without an agent.

The shim answers a few of these itself (what it cannot frame: non-UTF-8 CNI_* values, an
unknown CNI_COMMAND, stdin over 1 MiB, not a UTF-8 JSON object, a socket that is not an
absolute path); the agent answers the rest, with the same codes and messages."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Iterator

import pytest
from cni_fixtures import (  # noqa: F401 - fixtures
    cni_bin_dir, make_netns, run_plugin, shim_binary, short_tmp, socket_recorder,
)

from lab.harness import Cluster, LabNode
from lab.node_io import query_agent, wait_until

CID = "4f1c0ffee0123456789abcdef"
NAME = "h4net"
ATTACHMENTS = [{"containerID": CID, "ifname": "eth0"}]


def conf(sock: str, **extra) -> dict:
    out = {"cniVersion": "1.0.0", "name": NAME, "type": "underlay", "socket": sock}
    for key, value in extra.items():
        if value is DROP:
            out.pop(key, None)
        else:
            out[key] = value
    return out


DROP = object()
ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": CID, "CNI_IFNAME": "eth0"}
DEL_ENV = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": CID, "CNI_IFNAME": "eth0"}
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
        "ips": [{"address": "10.0.0.5/32", "interface": 0}]}

# (id, env (NETNS added unless given), stdin (dict -> JSON with the socket), code, must name)
BAD_INPUT = [
    ("no-command", {"CNI_COMMAND": None}, {}, 4, "CNI_COMMAND"),
    ("unknown-command", {"CNI_COMMAND": "FROB"}, {}, 4, "'FROB'"),
    ("lowercase-command", {"CNI_COMMAND": "add"}, {}, 4, "'add'"),
    ("add-no-containerid", {"CNI_CONTAINERID": None}, {}, 4, "CNI_CONTAINERID"),
    ("add-no-netns", {"CNI_NETNS": None}, {}, 4, "CNI_NETNS"),
    ("add-no-ifname", {"CNI_IFNAME": None}, {}, 4, "CNI_IFNAME"),
    ("del-no-containerid", {**DEL_ENV, "CNI_CONTAINERID": None}, {}, 4, "CNI_CONTAINERID"),
    ("check-no-netns", {"CNI_COMMAND": "CHECK", "CNI_NETNS": None}, {"prevResult": PREV},
     4, "CNI_NETNS"),
    ("containerid-bad-chars", {"CNI_CONTAINERID": "ab/c d"}, {}, 4, "CNI_CONTAINERID"),
    ("ifname-too-long", {"CNI_IFNAME": "e" * 16}, {}, 4, "CNI_IFNAME"),
    ("ifname-slash", {"CNI_IFNAME": "a/b"}, {}, 4, "CNI_IFNAME"),
    # valid for the kernel, not a name the datapath wires: refused before an address is
    # borrowed (it used to be 105 after the borrow, and its rollback leaked the address)
    ("ifname-not-ascii", {"CNI_IFNAME": "eth\u00e9"}, {}, 4, "CNI_IFNAME 'eth\u00e9'"),
    ("ifname-16-bytes", {"CNI_IFNAME": "\u00e9" * 8}, {}, 4, "CNI_IFNAME"),
    ("netns-relative", {"CNI_NETNS": "var/run/netns/x"}, {}, 4, "CNI_NETNS"),
    ("cni-args-no-equals", {"CNI_ARGS": "K8S_POD_NAME"}, {}, 4, "CNI_ARGS"),
    ("cni-args-unknown-key", {"CNI_ARGS": "K8S_POD_NAME=p;FOO=1"}, {}, 4, "FOO"),
    ("cni-args-two-equals", {"CNI_ARGS": "K8S_POD_NAME=a=b"}, {}, 4, "'K8S_POD_NAME=a=b'"),
    ("cni-args-ignoreunknown-not-bool", {"CNI_ARGS": "IgnoreUnknown=yes;FOO=1"}, {}, 4,
     "IgnoreUnknown 'yes'"),
    ("cni-args-not-utf8", {"CNI_ARGS": b"K8S_POD_NAME=\xff\xfe\xed"}, {}, 4, "CNI_ARGS"),
    ("ifname-not-utf8", {"CNI_IFNAME": b"eth\xff"}, {}, 4, "CNI_IFNAME"),
    ("version-unsupported", {}, {"cniVersion": "0.3.1"}, 1, "0.3.1"),
    ("version-newer", {}, {"cniVersion": "2.0.0"}, 1, "2.0.0"),
    ("version-missing", {}, {"cniVersion": DROP}, 1, "cniVersion"),
    ("version-wrong-type", {}, {"cniVersion": 1.0}, 7, "cniVersion"),
    ("json-malformed", {}, b'{"cniVersion": "1.0.0",', 6, "not valid JSON"),
    ("json-empty", {}, b"", 6, "no network configuration"),
    ("json-array", {}, b'["cniVersion"]', 6, "JSON object"),
    ("json-not-utf8", {}, b'{"cniVersion": "1.0.0", "name": "\xff\xfe"}', 6, "UTF-8"),
    ("stdin-oversized", {}, {"pad": "x" * (1 << 20)}, 6, "larger than 1048576 bytes"),
    ("name-missing", {}, {"name": DROP}, 7, "name"),
    ("name-bad-chars", {}, {"name": "bad name!"}, 7, "'bad name!'"),
    ("type-wrong", {}, {"type": "bridge"}, 7, "'bridge'"),
    ("mode-unknown", {}, {"mode": "macvtap"}, 7, "mode 'macvtap'"),
    ("mtu-string", {}, {"mtu": "9001"}, 7, "mtu must be an integer"),
    ("mtu-bool", {}, {"mtu": True}, 7, "mtu must be an integer"),
    ("mtu-range", {}, {"mtu": 10}, 7, "mtu 10"),
    ("socket-relative", {}, {"socket": "agent.sock"}, 7, "socket 'agent.sock'"),
    ("socket-number", {}, {"socket": 5}, 7, "socket must be a string"),
    ("timeout-negative", {}, {"timeout": -1}, 7, "timeout"),
    ("prevresult-not-object", {}, {"prevResult": "x"}, 7, "prevResult must be an object"),
    ("prevresult-ips-not-list", {}, {"prevResult": {"ips": {}}}, 7, "prevResult.ips"),
    ("runtimeconfig-list", {}, {"runtimeConfig": []}, 7, "runtimeConfig"),
    ("ipam-section", {}, {"ipam": {"type": "host-local"}}, 2, 'ipam {"type": "host-local"}'),
    ("check-no-prevresult", {"CNI_COMMAND": "CHECK"}, {}, 7, "prevResult is required"),
    ("add-netns-missing", {"CNI_NETNS": "/run/netns/h4-no-such-ns"}, {}, 3,
     "CNI_NETNS /run/netns/h4-no-such-ns does not exist"),
    ("check-netns-missing", {"CNI_COMMAND": "CHECK", "CNI_NETNS": "/run/netns/h4-none"},
     {"prevResult": PREV}, 3, "/run/netns/h4-none"),
    ("gc-no-attachments", {"CNI_COMMAND": "GC"}, {"cniVersion": "1.1.0"}, 7,
     "cni.dev/valid-attachments is required"),
    ("gc-attachments-object", {"CNI_COMMAND": "GC"},
     {"cniVersion": "1.1.0", "cni.dev/valid-attachments": {}}, 7, "must be a list"),
    ("gc-attachment-string", {"CNI_COMMAND": "GC"},
     {"cniVersion": "1.1.0", "cni.dev/valid-attachments": ["x"]}, 7,
     "cni.dev/valid-attachments[0]"),
    ("gc-attachment-no-ifname", {"CNI_COMMAND": "GC"},
     {"cniVersion": "1.1.0", "cni.dev/valid-attachments": [ATTACHMENTS[0], {"containerID": "a"}]},
     7, "cni.dev/valid-attachments[1].ifname"),
    ("gc-attachment-id-number", {"CNI_COMMAND": "GC"},
     {"cniVersion": "1.1.0", "cni.dev/valid-attachments": [{"containerID": 5, "ifname": "e"}]},
     7, "[0].containerID"),
    ("gc-no-cni-path", {"CNI_COMMAND": "GC", "CNI_PATH": None},
     {"cniVersion": "1.1.0", "cni.dev/valid-attachments": []}, 4, "CNI_PATH"),
    ("gc-version-1.0.0", {"CNI_COMMAND": "GC"},
     {"cni.dev/valid-attachments": ATTACHMENTS}, 1, "does not allow GC"),
    ("status-version-0.4.0", {"CNI_COMMAND": "STATUS"}, {"cniVersion": "0.4.0"}, 1,
     "does not allow STATUS"),
    ("gc-legacy-key-not-list", {"CNI_COMMAND": "GC"},
     {"cniVersion": "1.1.0", "cni.dev/attachments": "all"}, 7, "cni.dev/attachments must be"),
    ("version-cmd-malformed", {"CNI_COMMAND": "VERSION"}, b"{", 6, "not valid JSON"),
    ("version-cmd-bad-version", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "one"}', 7,
     "'one'"),
    ("version-cmd-env-not-utf8", {"CNI_COMMAND": "VERSION", "CNI_ARGS": b"K8S_POD_NAME=\xff"},
     b'{"cniVersion": "1.0.0"}', 4, "CNI_ARGS is not valid UTF-8"),
]


def _stdin(spec, sock: str) -> bytes:
    if isinstance(spec, bytes):
        return spec
    return json.dumps(conf(sock, **spec)).encode()


def _env(overrides: dict, netns: str) -> dict:
    env = {**ADD_ENV, "CNI_NETNS": f"/run/netns/{netns}", "CNI_PATH": "/nonexistent"}
    if overrides.get("CNI_COMMAND") == "DEL":
        env.pop("CNI_NETNS")
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _error(proc) -> dict:
    assert b"Traceback" not in proc.stdout + proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line: {proc.stdout!r}"
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def node() -> Iterator[LabNode]:
    """One node of the emulated VPC with a live veth agent holding one pod (``keep``),
    which a wrongly accepted DEL or GC would release."""
    with Cluster(nodes=1, instance_type="t3.small") as cluster:
        node = cluster.nodes[0]
        cluster.run_agent(node, {"warm_ips": 1, "batch_size": 1})
        cluster.add_pod(node, "keep")
        assert wait_until(lambda: query_agent(node.socket_path, "/v1/pool")[1]["available"]
                          >= 1, 30), "the pool did not refill"
        yield node


def _node_state(node: LabNode, pod: str, sock_dir: str) -> tuple:
    """What a wrongly accepted request would change (IPv4 only: IPv6 link-local addresses
    finish duplicate address detection by themselves)."""
    def ip(netns: str, *args: str) -> str:
        return subprocess.run(["ip", "-n", netns, "-o", *args], capture_output=True,
                              text=True, check=True).stdout

    def links(netns: str) -> list[str]:
        return sorted(line.split(":")[1].strip() for line in ip(netns, "link").splitlines())

    status, pods = query_agent(node.socket_path, "/v1/pods")
    assert status == 200, pods
    missing = [p for p in ("/run/netns/h4-no-such-ns", "/run/netns/h4-none") if os.path.exists(p)]
    return (sorted((p["container_id"], p["ifname"], p["ip"]) for p in pods),
            links(node.netns), ip(node.netns, "-4", "addr"),
            ip(node.netns, "-4", "route", "show", "table", "all"), ip(node.netns, "rule"),
            links(pod), ip(pod, "-4", "addr"), ip(pod, "-4", "route"),
            sorted(os.listdir(sock_dir)), missing)


@pytest.mark.parametrize("env_over,stdin,code,names",
                         [case[1:] for case in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_is_refused_with_code_and_reason(node, shim_binary, make_netns,
                                                   env_over, stdin, code, names):
    pod = make_netns("h4bad")
    sock_dir = os.path.dirname(node.socket_path)
    before = _node_state(node, pod, sock_dir)
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **_env(env_over, pod)}
    proc = subprocess.run(["ip", "netns", "exec", node.netns, shim_binary],
                          input=_stdin(stdin, node.socket_path), env=env, capture_output=True,
                          timeout=30, check=False)
    err = _error(proc)
    assert proc.returncode == 1
    assert err["code"] == code, err
    assert names in err["msg"], err
    assert err["cniVersion"] == _error_version(stdin)
    assert _node_state(node, pod, sock_dir) == before


def _error_version(stdin) -> str:
    """Spec: the error's cniVersion is "the same value as provided by the configuration";
    the newest we speak when there is no version string to echo (or stdin is too large to
    read)."""
    data = _stdin(stdin, "/s")
    try:
        asked = json.loads(data.decode()).get("cniVersion")
    except (ValueError, AttributeError):
        asked = None
    if len(data) > 1 << 20 or not (isinstance(asked, str)
                                   and re.fullmatch(r"\d+\.\d+\.\d+", asked)):
        return "1.1.0"
    return asked


def _exec_on_node(node: LabNode, shim: str, env: dict, stdin: dict
                  ) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", node.netns, shim],
                          input=json.dumps(stdin).encode(),
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
                          capture_output=True, timeout=60, check=False)


def _pod_link(pod: str, ifname: str) -> dict:
    out = subprocess.run(["ip", "-n", pod, "-j", "link", "show", ifname], capture_output=True,
                         text=True, check=True).stdout
    link = json.loads(out)[0]
    return {"ifindex": link["ifindex"], "mac": link["address"]}


def _held(node: LabNode, cid: str) -> list[tuple[str, str]]:
    return [(p["ifname"], p["ip"]) for p in query_agent(node.socket_path, "/v1/pods")[1]
            if p["container_id"] == cid]


def test_add_again_answers_the_same_and_never_touches_a_wired_pod(node, shim_binary,
                                                                   make_netns):
    """A second ADD of an attachment that is wired returns the first result and leaves the
    pod's interface as it is (a retried ADD never cuts a running pod off). Once its wiring
    is damaged, ADD again is the spec's "interface already exists" error naming what
    differs, and still touches nothing. DEL then releases it, prints nothing, and succeeds
    again when repeated."""
    pod = make_netns("h4twice")
    cid = "twice" + CID
    env = {**ADD_ENV, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_PATH": "/nonexistent"}
    stdin = conf(node.socket_path)
    del_env = {**env, "CNI_COMMAND": "DEL"}
    try:
        first = _exec_on_node(node, shim_binary, env, stdin)
        assert first.returncode == 0, first.stdout
        address = json.loads(first.stdout)["ips"][0]["address"].split("/")[0]
        link = _pod_link(pod, "eth0")

        again = _exec_on_node(node, shim_binary, env, stdin)
        assert again.returncode == 0, again.stdout
        assert json.loads(again.stdout) == json.loads(first.stdout)
        assert _pod_link(pod, "eth0") == link  # not re-created
        assert _held(node, cid) == [("eth0", address)]

        subprocess.run(["ip", "-n", node.netns, "rule", "del", "priority", "512", "to",
                        address], check=True, timeout=30)
        broken = _exec_on_node(node, shim_binary, env, stdin)
        err = _error(broken)
        assert broken.returncode != 0 and err["code"] == 105, broken.stdout
        assert "eth0 already exists" in err["msg"] and "priority 512" in err["msg"], err
        assert err["cniVersion"] == "1.0.0"
        assert _pod_link(pod, "eth0") == link
        assert _held(node, cid) == [("eth0", address)]
    finally:
        deleted = _exec_on_node(node, shim_binary, del_env, stdin)
    assert (deleted.returncode, deleted.stdout) == (0, b""), deleted.stdout
    assert _held(node, cid) == []
    deleted = _exec_on_node(node, shim_binary, del_env, stdin)
    assert (deleted.returncode, deleted.stdout) == (0, b""), deleted.stdout


def test_add_into_a_namespace_whose_interface_name_is_taken_fails_and_holds_nothing(
        node, shim_binary, make_netns):
    """Spec (ADD): "If an interface of the requested name already exists in the container,
    the CNI plugin MUST return with an error." An eth0 that is not ours stays as it was."""
    pod = make_netns("h4taken")
    subprocess.run(["ip", "-n", pod, "link", "add", "eth0", "type", "veth", "peer", "name",
                    "other0"], check=True, timeout=30)
    link = _pod_link(pod, "eth0")
    cid = "taken" + CID
    env = {**ADD_ENV, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_PATH": "/nonexistent"}
    before = query_agent(node.socket_path, "/v1/pods")[1]
    proc = _exec_on_node(node, shim_binary, env, conf(node.socket_path))
    err = _error(proc)
    assert proc.returncode != 0 and "eth0" in err["msg"], err
    assert _pod_link(pod, "eth0") == link
    assert query_agent(node.socket_path, "/v1/pods")[1] == before


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_version_answers_in_the_version_asked(cni_bin_dir, version):
    proc = run_plugin(cni_bin_dir, {"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": version}))
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout) == {"cniVersion": version,
                                       "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    assert proc.stderr == b""


def test_version_without_stdin_answers_newest(cni_bin_dir):
    proc = run_plugin(cni_bin_dir, {"CNI_COMMAND": "VERSION"}, b"")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


@pytest.fixture
def missing_sock(short_tmp) -> str:
    return os.path.join(short_tmp, "agent.sock")


def test_status_without_agent_is_50(cni_bin_dir, missing_sock):
    stdin = json.dumps(conf(missing_sock, cniVersion="1.1.0"))
    proc = run_plugin(cni_bin_dir, {"CNI_COMMAND": "STATUS"}, stdin)
    err = _error(proc)
    assert proc.returncode != 0 and err["code"] == 50
    assert missing_sock in err["msg"] and err["cniVersion"] == "1.1.0"


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_without_agent_is_11(cni_bin_dir, missing_sock, make_netns, version):
    pod = make_netns("h4add")
    env = {**ADD_ENV, "CNI_NETNS": f"/run/netns/{pod}",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;X=1"}
    proc = run_plugin(cni_bin_dir, env, json.dumps(conf(missing_sock, cniVersion=version)))
    err = _error(proc)
    assert proc.returncode != 0 and err["code"] == 11 and err["cniVersion"] == version
    assert "agent unreachable" in err["msg"] and missing_sock in err["msg"]


def test_check_and_gc_without_agent_are_11(cni_bin_dir, missing_sock, make_netns):
    pod = make_netns("h4chk")
    check_env = {**ADD_ENV, "CNI_COMMAND": "CHECK", "CNI_NETNS": f"/run/netns/{pod}"}
    proc = run_plugin(cni_bin_dir, check_env, json.dumps(conf(missing_sock, prevResult=PREV)))
    assert proc.returncode != 0 and _error(proc)["code"] == 11
    gc = conf(missing_sock, cniVersion="1.1.0", **{"cni.dev/valid-attachments": ATTACHMENTS})
    proc = run_plugin(cni_bin_dir, {"CNI_COMMAND": "GC"}, json.dumps(gc))
    assert proc.returncode != 0 and _error(proc)["code"] == 11


@pytest.mark.parametrize("netns", ["", "/run/netns/h4-gone"])
def test_del_without_agent_succeeds_silently(cni_bin_dir, missing_sock, netns):
    env = {**DEL_ENV, "CNI_NETNS": netns}
    proc = run_plugin(cni_bin_dir, env, json.dumps(conf(missing_sock, prevResult=PREV)))
    assert proc.returncode == 0 and proc.stdout == b""
    assert b"reported as done" in proc.stderr and b"Traceback" not in proc.stderr
    assert not os.path.exists(missing_sock)


def test_stale_socket_file_counts_as_agent_down(cni_bin_dir, short_tmp, make_netns):
    path = os.path.join(short_tmp, "agent.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # the file exists, nobody listens: connect is refused
    stale.close()
    pod = make_netns("h4stl")
    proc = run_plugin(cni_bin_dir, {**ADD_ENV, "CNI_NETNS": f"/run/netns/{pod}"},
                      json.dumps(conf(path)))
    err = _error(proc)
    assert err["code"] == 11 and "refused" in err["msg"]
    proc = run_plugin(cni_bin_dir, DEL_ENV, json.dumps(conf(path)))
    assert proc.returncode == 0 and proc.stdout == b""


def test_agent_that_never_answers_times_out(cni_bin_dir, short_tmp, make_netns):
    """A hung agent: ADD fails with 11 after the configured timeout, and DEL does not
    pretend success (the agent may be half-way through it)."""
    path = os.path.join(short_tmp, "agent.sock")
    hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hung.bind(path)
        hung.listen(8)  # accepts into the backlog, never answers
        pod = make_netns("h4hng")
        proc = run_plugin(cni_bin_dir, {**ADD_ENV, "CNI_NETNS": f"/run/netns/{pod}"},
                          json.dumps(conf(path, timeout=0.3)))
        err = _error(proc)
        assert err["code"] == 11 and "did not answer" in err["msg"], err
        proc = run_plugin(cni_bin_dir, DEL_ENV, json.dumps(conf(path, timeout=0.3)))
        err = _error(proc)
        assert proc.returncode != 0 and err["code"] == 11 and "did not answer" in err["msg"]
    finally:
        hung.close()


def test_agent_closing_without_an_answer(cni_bin_dir, socket_recorder, make_netns):
    """Something accepts and reads the request, then hangs up: ADD is 11 naming it, and
    DEL is an error too (the request did arrive)."""
    pod = make_netns("h4cls")
    stdin = json.dumps(conf(socket_recorder.path))
    proc = run_plugin(cni_bin_dir, {**ADD_ENV, "CNI_NETNS": f"/run/netns/{pod}"}, stdin)
    err = _error(proc)
    assert err["code"] == 11 and "not HTTP" in err["msg"], err
    request = socket_recorder.connections[0]
    assert request.startswith(b"POST /v1/cni HTTP/1.1\r\n")
    frame = json.loads(request.partition(b"\r\n\r\n")[2])  # the invocation, as it came
    assert frame == {"env": {**ADD_ENV, "CNI_NETNS": f"/run/netns/{pod}"}, "stdin": stdin}
    proc = run_plugin(cni_bin_dir, DEL_ENV, stdin)
    assert proc.returncode != 0 and _error(proc)["code"] == 11
