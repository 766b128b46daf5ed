"""Property-based tests (hypothesis) of the CNI executable's input, run through the real
executable (the static Go shim) as a subprocess against one real agent (datapath "none":
IPAM only, socket in a temp dir) and the emulated EC2: the shim frames the input, the
agent decides.

For any environment and stdin: stdout is exactly one JSON document (the error, or the
result of a valid ADD/VERSION) or nothing (DEL/CHECK/STATUS/GC success), the exit code says
which, the error names a spec code and is never the executable's internal-error catch-all,
nothing writes a traceback, and invalid input never changes the agent's allocations.
Generated inputs: random environments and stdin (bytes, JSON of any shape), and a valid
request (checked valid below) with one mutation that must make it invalid.
"""
from __future__ import annotations

import json
import os
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab.node_io import install_shim
from cni.request import is_version
from cni.spec import SUPPORTED_VERSIONS, Code
from fuzz_common import FUZZ, SPEC_CODES, agent_holding_two
from test_agent_helpers import emulator  # noqa: F401 - fixture

NET = "fuzznet"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
NETNS = "/proc/self/ns/net"  # exists; the agent (datapath none) never enters it


@pytest.fixture(scope="module")
def agent(emulator, tmp_path_factory):  # noqa: F811 - fixture
    with agent_holding_two(tmp_path_factory.mktemp("fuzzcni"), emulator, NET) as agent:
        yield agent


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("fuzzbin"))
    install_shim(path)
    return path


def allocations(agent) -> list[tuple]:
    status, body = agent.client.get("/v1/pods")
    assert status == 200, body
    return sorted((p["network"], p["container_id"], p["ifname"], p["ip"]) for p in body)


def exec_plugin(bin_dir: str, env: dict, stdin: bytes):
    import subprocess

    return subprocess.run([os.path.join(bin_dir, "underlay")], input=stdin,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env},
                          capture_output=True, timeout=60, check=False)


def check_output(proc, command) -> dict | None:
    """The contract for any input; returns the error (or None on success)."""
    out = proc.stdout.decode("utf-8")
    assert "Traceback" not in out and b"Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        if command in ("ADD", "VERSION"):
            doc = json.loads(out)
            assert out.count("\n") == 1 and isinstance(doc, dict) and "cniVersion" in doc
        else:
            assert out == "", out
        return None
    assert proc.returncode == 1, (proc.returncode, out)
    assert out.endswith("\n") and out.count("\n") == 1, out
    err = json.loads(out)
    assert isinstance(err, dict) and set(err) <= {"cniVersion", "code", "msg", "details"}
    # the request's version echoed (spec: "the same value as provided"), or the newest
    assert err["cniVersion"] in SUPPORTED_VERSIONS or is_version(err["cniVersion"]), err
    assert type(err["code"]) is int and err["code"] in SPEC_CODES, err
    assert isinstance(err["msg"], str) and err["msg"].strip(), err
    return err


# ---- a valid request, and mutations that each make it invalid --------------------------

def valid_request(command: str, socket_path: str) -> tuple[dict, dict]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "fuzz-valid", "CNI_NETNS": NETNS,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=fuzz"}
    conf = {"cniVersion": "1.1.0", "name": NET, "type": "underlay", "socket": socket_path}
    if command == "CHECK":
        conf["prevResult"] = {"ips": [{"address": "10.0.0.9/32"}]}
    if command == "GC":
        conf["cni.dev/valid-attachments"] = [{"containerID": "keep-a", "ifname": "eth0"},
                                             {"containerID": "keep-b", "ifname": "eth0"}]
    return env, conf


JUNK = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(),
                 st.none(), st.text(max_size=30), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                   max_size=40)


def not_str(value) -> bool:
    return not isinstance(value, str)


@st.composite
def broken_requests(draw, socket_path: str):
    command = draw(st.sampled_from(("ADD", "CHECK", "DEL", "GC", "STATUS")))
    env, conf = valid_request(command, socket_path)
    needs = {"ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
             "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
             "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}.get(command, ())
    kinds = ["no_command", "bad_command", "cni_version", "name", "type", "ipam", "socket",
             "mode", "mtu", "timeout", "stdin_not_object", "stdin_bytes", "huge_value"]
    if needs:
        kinds += ["missing_env", "container_id", "ifname", "cni_args"]
    if command in ("ADD", "CHECK"):
        kinds += ["netns_relative", "netns_missing"]
    if command == "CHECK":
        kinds += ["no_prev_result", "prev_result"]
    if command == "GC":
        kinds += ["attachments"]
    kind = draw(st.sampled_from(kinds))
    stdin = None
    if kind == "no_command":
        del env["CNI_COMMAND"]
    elif kind == "bad_command":
        env["CNI_COMMAND"] = draw(ENV_TEXT.filter(lambda s: s and s not in COMMANDS))
    elif kind == "missing_env":
        name = draw(st.sampled_from(needs))
        if draw(st.booleans()):
            del env[name]
        else:
            env[name] = ""
    elif kind == "container_id":
        env["CNI_CONTAINERID"] = draw(ENV_TEXT.filter(
            lambda s: s and (s[0] in "_.-" or any(c not in string.ascii_letters + string.digits
                                                  + "_.-" for c in s))))
    elif kind == "ifname":
        env["CNI_IFNAME"] = draw(st.one_of(
            st.sampled_from((".", "..", "eth/0", "a:b", "e th", "x" * 16)),
            ENV_TEXT.filter(lambda s: len(s) > 15)))
    elif kind == "cni_args":
        env["CNI_ARGS"] = draw(st.one_of(
            ENV_TEXT.filter(lambda s: s and any(not i.partition("=")[1] or
                                                not i.partition("=")[0] for i in s.split(";"))),
            st.sampled_from(("Unknown=1", "K8S_POD_NAME=a;Other=b", "=x", ";"))))
    elif kind == "netns_relative":
        env["CNI_NETNS"] = draw(ENV_TEXT.filter(lambda s: s and not s.startswith("/")))
    elif kind == "netns_missing":
        missing = st.text(string.ascii_lowercase, min_size=1, max_size=12).map(
            lambda s: "/proc/self/ns/" + s).filter(lambda p: not os.path.exists(p))
        env["CNI_NETNS"] = draw(missing)
    elif kind == "cni_version":
        conf["cniVersion"] = draw(st.one_of(JUNK.filter(lambda v: v not in SUPPORTED_VERSIONS),
                                            st.just("9.9.9")))
        if conf["cniVersion"] is None or draw(st.booleans()):
            del conf["cniVersion"]
    elif kind == "name":
        value = draw(st.one_of(JUNK.filter(not_str), st.sampled_from(("", "-x", "a b", "ä"))))
        conf["name"] = value
    elif kind == "type":
        conf["type"] = draw(JUNK.filter(lambda v: v != "underlay"))
    elif kind == "ipam":
        conf["ipam"] = draw(JUNK)
    elif kind == "socket":
        conf["socket"] = draw(st.one_of(JUNK.filter(lambda v: not_str(v) and v is not None),
                                        st.sampled_from(("", "relative.sock"))))
    elif kind == "mode":
        conf["mode"] = draw(JUNK.filter(lambda v: v not in ("veth", "ipvlan")))
        if conf["mode"] is None:
            conf["mode"] = 7
    elif kind == "mtu":
        conf["mtu"] = draw(st.one_of(st.integers(-2**70, 575), st.integers(9002, 2**70),
                                     JUNK.filter(lambda v: v is not None and
                                                 (isinstance(v, bool) or
                                                  not isinstance(v, int)))))
    elif kind == "timeout":
        conf["timeout"] = draw(st.one_of(st.floats(max_value=0.0), st.floats(min_value=300.5),
                                         st.sampled_from((float("nan"), "10", True, [1]))))
    elif kind == "no_prev_result":
        del conf["prevResult"]
    elif kind == "prev_result":
        conf["prevResult"] = draw(st.one_of(
            JUNK.filter(lambda v: v is not None and not isinstance(v, dict)),
            st.fixed_dictionaries({"ips": JUNK.filter(lambda v: not isinstance(v, list))}),
            st.fixed_dictionaries({"dns": JUNK.filter(lambda v: not isinstance(v, dict))})))
    elif kind == "attachments":
        conf["cni.dev/valid-attachments"] = draw(st.one_of(
            JUNK.filter(lambda v: not isinstance(v, list)),
            st.lists(JUNK.filter(lambda v: not isinstance(v, dict)), min_size=1, max_size=3),
            st.just([{"containerID": "keep-a"}]), st.just([{"containerID": "", "ifname": 1}])))
        if draw(st.booleans()) and not isinstance(conf["cni.dev/valid-attachments"], list):
            del conf["cni.dev/valid-attachments"]
    elif kind == "stdin_not_object":
        stdin = json.dumps(draw(JUNK.filter(lambda v: not isinstance(v, dict))),
                           allow_nan=True).encode()
    elif kind == "stdin_bytes":
        stdin = draw(st.binary(max_size=200).filter(lambda b: not _is_json_object(b)))
    elif kind == "huge_value":
        conf[draw(st.sampled_from(("cniVersion", "type", "mode")))] = "v" * 100_000
    extra = draw(st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8)
                                 .map(lambda k: "x-" + k), JUNK, max_size=3))
    conf.update(extra)
    if stdin is None:
        stdin = json.dumps(conf, allow_nan=True).encode()
    return command, kind, env, stdin


def _is_json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


# ---- the tests ---------------------------------------------------------------------------

def test_the_valid_base_request_really_allocates(agent, bin_dir):
    """Guards the mutation test: unmutated, the base ADD succeeds and is seen, DEL undoes it."""
    before = allocations(agent)
    env, conf = valid_request("ADD", agent.config["socket_path"])
    add = exec_plugin(bin_dir, env, json.dumps(conf).encode())
    check_output(add, "ADD")
    assert add.returncode == 0 and json.loads(add.stdout)["ips"]
    assert len(allocations(agent)) == len(before) + 1
    env["CNI_COMMAND"] = "DEL"
    check_output(exec_plugin(bin_dir, env, json.dumps(conf).encode()), "DEL")
    assert allocations(agent) == before


def test_mutated_requests_fail_cleanly_and_change_nothing(agent, bin_dir):
    before = allocations(agent)
    seen: list[str] = []

    @FUZZ
    @given(case=broken_requests(agent.config["socket_path"]))
    def run(case):
        command, kind, env, stdin = case
        seen.append(kind)
        proc = exec_plugin(bin_dir, env, stdin)
        err = check_output(proc, command)
        assert err is not None, (kind, env, stdin[:200], proc.stdout)
        assert allocations(agent) == before, (kind, env, stdin[:200])

    run()
    assert len(seen) >= 100 and len(set(seen)) > 15  # ran, and spread over the mutations


RANDOM_ENV = st.dictionaries(
    st.sampled_from(("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS",
                     "CNI_PATH")),
    st.one_of(st.sampled_from(COMMANDS), ENV_TEXT,
              st.binary(max_size=30).filter(lambda b: b"\x00" not in b)),
    max_size=6)
RANDOM_STDIN = st.one_of(
    st.binary(max_size=300),
    st.recursive(JUNK, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                               st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4)),
                 max_leaves=12).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "cniVersion": st.one_of(st.sampled_from(SUPPORTED_VERSIONS), JUNK),
        "name": st.one_of(st.just(NET), JUNK), "type": st.one_of(st.just("underlay"), JUNK),
        "socket": JUNK, "mtu": JUNK, "prevResult": JUNK}).map(
            lambda d: json.dumps(d, allow_nan=True).encode()))


def test_random_input_gets_one_well_formed_answer_and_changes_nothing(agent, bin_dir):
    before = allocations(agent)
    answered: list[int] = []

    @FUZZ
    @given(env=RANDOM_ENV, stdin=RANDOM_STDIN)
    def run(env, stdin):
        answered.append(1)
        proc = exec_plugin(bin_dir, env, stdin)
        command = env.get("CNI_COMMAND")
        err = check_output(proc, command if isinstance(command, str) else None)
        if err is None:  # success only where the spec allows it with no state to change
            assert command in ("VERSION", "DEL", "STATUS"), (env, stdin[:200], proc.stdout)
        assert allocations(agent) == before, (env, stdin[:200])

    run()
    assert len(answered) >= 100


def test_version_answers_for_any_known_version(bin_dir):
    for version in SUPPORTED_VERSIONS:
        proc = exec_plugin(bin_dir, {"CNI_COMMAND": "VERSION"},
                           json.dumps({"cniVersion": version}).encode())
        check_output(proc, "VERSION")
        assert json.loads(proc.stdout) == {"cniVersion": version,
                                           "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_oversized_stdin_is_refused_without_state_change(agent, bin_dir):
    before = allocations(agent)
    env, conf = valid_request("ADD", agent.config["socket_path"])
    conf["x-pad"] = "p" * (1 << 20)
    err = check_output(exec_plugin(bin_dir, env, json.dumps(conf).encode()), "ADD")
    assert err["code"] == Code.DECODE_FAILURE and "larger than" in err["msg"]
    assert allocations(agent) == before
