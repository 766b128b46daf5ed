"""Parsing of one invocation, in-process: any environment and any stdin either parse into a
Request or fail with a CniError carrying a spec code and a message; nothing else escapes."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cni.request import Request, parse_cni_args, parse_request
from cni.spec import CniError

KEYS = ["cniVersion", "name", "type", "socket", "mode", "mtu", "timeout", "prevResult",
        "runtimeConfig", "ipam", "cni.dev/valid-attachments", "other"]
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 70000) | st.floats(allow_nan=False)
    | st.sampled_from(["1.0.0", "0.4.0", "1.1.0", "underlay", "veth", "ipvlan", "/run/x.sock",
                       "n", ""]) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["containerID", "ifname", "ips", "interfaces", "address"]), inner,
        max_size=3),
    max_leaves=8)
CONFS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)
ENVS = st.fixed_dictionaries({}, optional={
    "CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC", "x", ""]),
    "CNI_CONTAINERID": st.sampled_from(["abc", "a b", "", "-x", "c0ffee"]),
    "CNI_NETNS": st.sampled_from(["/run/netns/x", "rel", ""]),
    "CNI_IFNAME": st.sampled_from(["eth0", "", "a/b", "x" * 16]),
    "CNI_ARGS": st.sampled_from(["", "K8S_POD_NAME=a", "IgnoreUnknown=1;X=1", "X=1", "bad",
                                 "=v"]),
})
STDINS = CONFS.map(lambda c: json.dumps(c).encode()) | st.binary(max_size=40)


@settings(max_examples=200, deadline=None)
@given(env=ENVS, stdin=STDINS)
def test_any_input_parses_or_fails_with_a_spec_error(env, stdin):
    try:
        req = parse_request(env, stdin)
    except CniError as err:
        assert err.code in (1, 2, 3, 4, 6, 7), err.code
        assert err.msg
        return
    assert isinstance(req, Request) and req.command in ("ADD", "DEL", "CHECK", "VERSION",
                                                        "STATUS", "GC")


def test_cni_args_keep_known_pod_fields():
    pod = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u;"
                         "K8S_POD_INFRA_CONTAINER_ID=c;SOMETHING=else")
    assert pod == {"pod_namespace": "ns", "pod_name": "p", "pod_uid": "u",
                   "infra_container_id": "c"}


def test_a_valid_add_parses_completely():
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p",
           "CNI_IFNAME": "eth0", "CNI_ARGS": "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}
    conf = {"cniVersion": "1.1.0", "name": "net", "type": "underlay", "mode": "ipvlan",
            "mtu": 1500, "timeout": 5, "socket": "/tmp/a.sock", "runtimeConfig": {},
            "capabilities": {"x": True}, "args": {}}
    req = parse_request(env, json.dumps(conf).encode())
    assert req == Request("ADD", "1.1.0", "c1", "/run/netns/p", "eth0",
                          {"pod_namespace": "ns", "pod_name": "p"}, "net", "/tmp/a.sock",
                          "ipvlan", 1500, 5.0, None, None)
