"""The agent's errors in one table keyed by CNI code: for each, the HTTP status the socket
answers with, the Kubernetes event reason (if the error is worth an event), whether the
condition passes by itself (retryable: the runtime's retry, or the pool's next try, may
succeed), and the words that start its message. Cloud errors carry their CNI code
(``cloud.errors``, ``cni_code``), so a cloud failure becomes a CNI error in one lookup.

    CniError(code, msg) --ERRORS[code]--> HTTP status, event Reason, retryable, summary
    CloudError.cni_code --^

Event reasons are a fixed vocabulary (``Reason``) users filter on
(``kubectl get events --field-selector reason=SubnetExhausted``); reasons that do not come
from a code (configuration edits, a full route table) are in it too.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from cloud.errors import CloudError
from cni.spec import CniError, Code


class Reason(str, enum.Enum):
    SUBNET_EXHAUSTED = "SubnetExhausted"
    SUBNET_FRAGMENTED = "SubnetFragmented"  # prefix mode: no free aligned /28 in the subnet
    PREFIXES_UNSUPPORTED = "PrefixDelegationUnsupported"  # prefix mode on a non-Nitro type
    ENI_LIMIT_REACHED = "ENILimitReached"
    CLOUD_THROTTLED = "CloudThrottled"
    CLOUD_PERMISSION_DENIED = "CloudPermissionDenied"
    AGENT_NOT_READY = "AgentNotReady"
    ROUTE_TABLE_FULL = "RouteTableFull"  # vpc-route mode: the node's route cannot be added
    CONFIG_REJECTED = "ConfigRejected"  # an edited ConfigMap is invalid: the old one is kept
    CONFIG_NEEDS_RESTART = "ConfigNeedsRestart"  # changed keys apply only after a restart


@dataclass(frozen=True)
class ErrorKind:
    http_status: int
    reason: Reason | None
    retryable: bool
    summary: str

    def message(self, detail: str) -> str:
        return f"{self.summary}: {detail}" if detail else self.summary


ERRORS: dict[Code, ErrorKind] = {
    Code.INCOMPATIBLE_VERSION: ErrorKind(400, None, False, "incompatible version"),
    Code.UNSUPPORTED_FIELD: ErrorKind(400, None, False, "unsupported field"),
    Code.UNKNOWN_CONTAINER: ErrorKind(400, None, False, "unknown container"),
    Code.INVALID_ENV: ErrorKind(400, None, False, "invalid environment"),
    Code.IO_FAILURE: ErrorKind(400, None, False, "I/O failure"),
    Code.DECODE_FAILURE: ErrorKind(400, None, False, "cannot decode"),
    Code.INVALID_CONFIG: ErrorKind(400, None, False, "invalid network configuration"),
    Code.TRY_AGAIN_LATER: ErrorKind(503, Reason.AGENT_NOT_READY, True, "try again later"),
    Code.NOT_AVAILABLE: ErrorKind(503, None, True, "not available"),
    Code.NOT_AVAILABLE_LIMITED: ErrorKind(503, None, True, "no address to give"),
    Code.SUBNET_EXHAUSTED: ErrorKind(500, Reason.SUBNET_EXHAUSTED, True, "subnet exhausted"),
    Code.ENI_LIMIT_REACHED: ErrorKind(500, Reason.ENI_LIMIT_REACHED, False,
                                      "ENI limit reached"),
    Code.CLOUD_THROTTLED: ErrorKind(503, Reason.CLOUD_THROTTLED, True, "cloud API throttled"),
    Code.NO_CAPACITY: ErrorKind(500, None, True, "no free address"),
    Code.CLOUD_PERMISSION_DENIED: ErrorKind(500, Reason.CLOUD_PERMISSION_DENIED, False,
                                            "cloud permission denied"),
    Code.DATAPATH_FAILURE: ErrorKind(500, None, False, "datapath failure"),
    Code.CHECK_FAILED: ErrorKind(500, None, False, "check failed"),
    Code.AGENT_INTERNAL: ErrorKind(500, None, False, "agent internal error"),
    Code.SUBNET_FRAGMENTED: ErrorKind(500, Reason.SUBNET_FRAGMENTED, True,
                                      "subnet fragmented (no free aligned /28 prefix)"),
    Code.PREFIXES_UNSUPPORTED: ErrorKind(500, Reason.PREFIXES_UNSUPPORTED, False,
                                         "prefix delegation unsupported"),
}


def kind_of(code: int) -> ErrorKind:
    """The entry for a code; a code outside the table is treated as an internal error."""
    try:
        return ERRORS[Code(code)]
    except ValueError:
        return ERRORS[Code.AGENT_INTERNAL]


def reason_for(code: int) -> Reason | None:
    return kind_of(code).reason


def error_from_cloud(exc: CloudError, detail: str = "") -> CniError:
    """A cloud failure as the CNI error it means, its message starting with the table's
    words and naming the action and the cloud's own message."""
    kind = kind_of(exc.cni_code)
    action = f" on {exc.action}" if exc.action else ""
    return CniError(exc.cni_code, kind.message(f"{detail or exc}{action}"))
