"""CNI specification types and the agent socket protocol, shared by the executable and the
agent. Standard library only: the executable imports this module and nothing heavier.

Socket protocol (HTTP/1.1 + JSON over the agent's unix socket), version ``API_VERSION``.
Every request body carries ``"api": API_VERSION``; the agent answers a request of an
older version it still supports (one step back) and refuses a newer one with code 1, except
a detach: ``/v1/detach`` is also accepted one version ahead (API_VERSION + 1), so that a
newer executable's DEL during a rollout still releases what an older agent holds (its
fields, network/container_id/ifname/netns, stay the same across versions).

    POST /v1/attach   AttachRequest  -> 200 {"result": <CNI result>}
    POST /v1/detach   DetachRequest  -> 200 {}
    POST /v1/check    CheckRequest   -> 200 {}
    POST /v1/gc       GcRequest      -> 200 {"released": [{"containerID", "ifname"}]}
    GET  /v1/status                  -> 200 StatusReply
    any failure                      -> 4xx/5xx ErrorReply {"code", "msg", "details"}

The TypedDicts of the CNI wire types and of this protocol (NetConf, Result, AttachRequest,
...) are defined in ``cni.spec_wire`` and re-exported here on first use (PEP 562), so that
importing this module does not load ``typing``: the executable's budget is about 25 ms.
"""
from __future__ import annotations

from enum import IntEnum

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni.spec_wire import *  # noqa: F403 - the names re-exported below

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


class CniError(Exception):
    """An error that becomes a CNI error JSON (``{cniVersion, code, msg, details}``)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str = "1.0.0") -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


_WIRE_TYPES = frozenset((
    "Interface", "IpConfig", "RouteEntry", "Result", "NetConf", "Attachment", "AttachRequest",
    "DetachRequest", "CheckRequest", "GcRequest", "StatusReply", "ErrorReply",
))


def __getattr__(name: str) -> Any:
    """Lazy re-export of the wire TypedDicts from ``cni.spec_wire``."""
    if name in _WIRE_TYPES:
        from cni import spec_wire

        return getattr(spec_wire, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
