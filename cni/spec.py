"""CNI specification types and the agent socket protocol, shared by the agent and its
clients (the host executable's Go shim speaks the ``/v1/cni`` part of it).

Socket protocol (HTTP/1.1 + JSON over the agent's unix socket).

The host executable sends each CNI invocation whole and prints the answer as it is:

    POST /v1/cni      CniInvocation  -> 200 CniAnswer {"exit", "stdout", "stderr"}

The per-operation endpoints below are what the executable of release 0.1.0 called (and
what the tests, the bench and ``/v1/cni`` itself use inside the agent); they stay so that
an upgrade never strands a DEL. Their bodies carry ``"api": API_VERSION``; the agent
answers a request of an older version it still supports (one step back) and refuses a
newer one with code 1, except a detach: ``/v1/detach`` is also accepted one version ahead
(API_VERSION + 1), so that a newer client's DEL during a rollout still releases what an
older agent holds (its fields, network/container_id/ifname/netns, stay the same).

    POST /v1/attach   AttachRequest  -> 200 {"result": <CNI result>}
    POST /v1/detach   DetachRequest  -> 200 {}
    POST /v1/check    CheckRequest   -> 200 {}
    POST /v1/gc       GcRequest      -> 200 {"released": [{"containerID", "ifname"}]}
    GET  /v1/status                  -> 200 StatusReply
    any failure                      -> 4xx/5xx ErrorReply {"code", "msg", "details"}

No ``from __future__ import annotations`` here: with string annotations ``TypedDict``
cannot see ``NotRequired`` and would count every key as required.
"""
from enum import IntEnum
from typing import Any, NotRequired, TypedDict

API_VERSION = 1
SUPPORTED_VERSIONS = ("0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/underlay/agent.sock"
PLUGIN_TYPE = "underlay"
MODES = ("veth", "ipvlan")


class Code(IntEnum):
    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENV = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_AVAILABLE = 50
    NOT_AVAILABLE_LIMITED = 51
    # Plugin-specific codes (>= 100).
    SUBNET_EXHAUSTED = 100
    ENI_LIMIT_REACHED = 101
    CLOUD_THROTTLED = 102
    NO_CAPACITY = 103
    CLOUD_PERMISSION_DENIED = 104
    DATAPATH_FAILURE = 105
    CHECK_FAILED = 106
    AGENT_INTERNAL = 107
    SUBNET_FRAGMENTED = 108  # prefix mode: free addresses, but no free aligned /28
    PREFIXES_UNSUPPORTED = 109  # prefix mode on an instance type that is not Nitro


class CniError(Exception):
    """An error that becomes a CNI error JSON (``{cniVersion, code, msg, details}``)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = "1.0.0") -> "dict[str, Any]":
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# ---- CNI wire types -------------------------------------------------------------------

class Interface(TypedDict):
    name: str
    mac: NotRequired[str]
    mtu: NotRequired[int]
    sandbox: NotRequired[str]


class IpConfig(TypedDict):
    address: str  # CIDR
    gateway: NotRequired[str]
    interface: NotRequired[int]


class RouteEntry(TypedDict):
    dst: str
    gw: NotRequired[str]


class Result(TypedDict):
    cniVersion: str
    interfaces: NotRequired[list[Interface]]
    ips: NotRequired[list[IpConfig]]
    routes: NotRequired[list[RouteEntry]]
    dns: NotRequired[dict[str, Any]]


class NetConf(TypedDict):
    cniVersion: str
    name: str
    type: str
    socket: NotRequired[str]
    mode: NotRequired[str]
    mtu: NotRequired[int]
    timeout: NotRequired[float]
    prevResult: NotRequired[Result]
    runtimeConfig: NotRequired[dict[str, Any]]


# ---- agent socket protocol ------------------------------------------------------------

class CniInvocation(TypedDict):
    env: dict[str, str]  # the CNI_* variables, UTF-8
    stdin: str  # the network configuration as the runtime wrote it (UTF-8, <= 1 MiB)


class CniAnswer(TypedDict):
    exit: int
    stdout: str  # the result or error JSON, or nothing
    stderr: str


class Attachment(TypedDict):
    containerID: str
    ifname: str


class AttachRequest(TypedDict):
    api: int
    cni_version: str
    network: str
    container_id: str
    ifname: str
    netns: str
    mode: str
    mtu: NotRequired[int]
    pod_namespace: NotRequired[str]
    pod_name: NotRequired[str]
    pod_uid: NotRequired[str]
    prev_result: NotRequired[Result]


class DetachRequest(TypedDict):
    api: int
    network: str
    container_id: str
    ifname: str
    netns: NotRequired[str]  # may be empty: DEL without a netns still releases the IP
    pod_namespace: NotRequired[str]
    pod_name: NotRequired[str]


class CheckRequest(TypedDict):
    api: int
    cni_version: str
    network: str
    container_id: str
    ifname: str
    netns: str
    prev_result: NotRequired[Result]


class GcRequest(TypedDict):
    api: int
    network: str
    valid_attachments: list[Attachment]


class StatusReply(TypedDict):
    ready: bool
    available: int
    code: NotRequired[int]
    msg: NotRequired[str]


class ErrorReply(TypedDict):
    code: int
    msg: str
    details: NotRequired[str]
