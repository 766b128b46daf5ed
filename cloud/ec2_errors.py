"""Translate botocore failures into the cloud error tree, in this one place.

    botocore ClientError code                      -> cloud.errors
    RequestLimitExceeded, Throttling, ...           -> Throttled          (retryable)
    InternalError, Unavailable, any HTTP 5xx,
      connect/read timeouts, connection failures    -> CloudUnavailable   (retryable)
    PrivateIpAddressLimitExceeded                   -> IpLimitReached
    AttachmentLimitExceeded                         -> EniLimitReached
    InsufficientFreeAddressesInSubnet               -> SubnetExhausted
    InsufficientCidrBlocks                          -> SubnetFragmented (free addresses,
                                                       no free aligned /28; names the subnet)
    *.NotFound                                      -> NotFound
    InvalidNetworkInterface.InUse, a device index
      already taken on the instance                 -> InUse
    UnauthorizedOperation, AuthFailure,
      AccessDenied, missing credentials             -> PermissionDenied (names "ec2:<Action>")
    any other client error                          -> InvalidRequest

Messages name the action and the cause. They never carry credentials: botocore's error
text holds EC2's code and message only, and credential errors are described by kind.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
)

from cloud.errors import (
    CloudError,
    CloudUnavailable,
    EniLimitReached,
    InUse,
    InvalidRequest,
    IpLimitReached,
    NotFound,
    PermissionDenied,
    SubnetExhausted,
    SubnetFragmented,
    Throttled,
)

logger = logging.getLogger(__name__)

THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "TooManyRequestsException",
    }
)
UNAVAILABLE_CODES = frozenset(
    {"InternalError", "InternalFailure", "Unavailable", "ServiceUnavailable"}
)
PERMISSION_CODES = frozenset(
    {"UnauthorizedOperation", "AuthFailure", "AccessDenied", "AccessDeniedException"}
)
_SIMPLE: dict[str, tuple[type[CloudError], str]] = {
    "PrivateIpAddressLimitExceeded": (
        IpLimitReached,
        "the ENI holds the most IPv4 addresses its instance type allows",
    ),
    "AttachmentLimitExceeded": (
        EniLimitReached,
        "the instance holds the most ENIs its instance type allows",
    ),
    "InsufficientFreeAddressesInSubnet": (
        SubnetExhausted,
        "the subnet has too few free addresses",
    ),
    "InvalidNetworkInterface.InUse": (InUse, "the network interface is in use"),
}


SubnetOf = Callable[[], "str | None"]


def translate_error(exc: BaseException, action: str, *,
                    subnet: str | SubnetOf | None = None) -> CloudError:
    """The cloud error for a failure of EC2 ``action`` (e.g. "AssignPrivateIpAddresses").
    ``subnet`` is the subnet the call is about, or a function that finds it (called only
    for an error that names it: EC2's message for InsufficientCidrBlocks does not)."""
    if isinstance(exc, CloudError):
        return exc
    if isinstance(exc, ClientError):
        return _translate_client_error(exc, action, subnet)
    if isinstance(exc, ConnectTimeoutError):
        return CloudUnavailable(
            f"{action} failed: connecting to the EC2 endpoint timed out",
            code="ConnectTimeout",
            action=action,
        )
    if isinstance(exc, ReadTimeoutError):
        return CloudUnavailable(
            f"{action} failed: EC2 did not answer within the read timeout",
            code="ReadTimeout",
            action=action,
        )
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError)):
        return CloudUnavailable(
            f"{action} failed: cannot reach the EC2 endpoint ({type(exc).__name__})",
            code="EndpointConnectionError",
            action=action,
        )
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermissionDenied(
            f"ec2:{action} refused: no usable AWS credentials were found by boto3's "
            f"credential chain ({type(exc).__name__})",
            code="NoCredentials",
            action=action,
        )
    if isinstance(exc, ParamValidationError):
        return InvalidRequest(
            f"{action} not sent: botocore refused the parameters ({exc})",
            code="ParamValidationError",
            action=action,
        )
    if isinstance(exc, BotoCoreError):
        return CloudUnavailable(
            f"{action} failed: {type(exc).__name__}", code=type(exc).__name__, action=action
        )
    return InvalidRequest(
        f"{action} failed: unexpected {type(exc).__name__}: {exc}",
        code=type(exc).__name__,
        action=action,
    )


def _translate_client_error(exc: ClientError, action: str,
                            subnet: str | SubnetOf | None) -> CloudError:
    error = exc.response.get("Error", {}) or {}
    code = str(error.get("Code", "") or "")
    message = str(error.get("Message", "") or "")
    status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{code}: {message}" if message else code or f"HTTP {status}"

    if code in THROTTLE_CODES:
        return Throttled(
            f"{action} throttled by EC2's request rate limit ({detail})", code=code, action=action
        )
    if code == "AuthFailure":
        return PermissionDenied(
            f"ec2:{action} refused: EC2 could not validate the caller's credentials "
            f"(check the node's credentials and clock) ({detail})",
            code=code,
            action=action,
        )
    if code in PERMISSION_CODES:
        return PermissionDenied(
            f"ec2:{action} refused: the caller is not allowed to perform ec2:{action} "
            f"(grant it in the node's IAM policy) ({detail})",
            code=code,
            action=action,
        )
    if code == "InsufficientCidrBlocks":
        subnet_id = subnet() if callable(subnet) else subnet
        where = f"subnet {subnet_id}" if subnet_id else "the subnet"
        return SubnetFragmented(
            f"{action} failed: {where} has no free aligned /28 block for a prefix, though it "
            f"may still have free addresses (fragmented; a subnet CIDR reservation of type "
            f"prefix keeps blocks free) ({detail})",
            code=code,
            action=action,
        )
    if code in _SIMPLE:
        cls, cause = _SIMPLE[code]
        return cls(f"{action} failed: {cause} ({detail})", code=code, action=action)
    if code.endswith(".NotFound"):
        return NotFound(f"{action} failed: not found ({detail})", code=code, action=action)
    if code in UNAVAILABLE_CODES or status >= 500:
        return CloudUnavailable(
            f"{action} failed: EC2 is unavailable ({detail}, HTTP {status})",
            code=code or f"HTTP{status}",
            action=action,
        )
    if code == "InvalidParameterValue" and _is_device_index_taken(message):
        return InUse(
            f"{action} failed: the device index is already taken ({detail})",
            code=code,
            action=action,
        )
    return InvalidRequest(f"{action} failed: EC2 refused the request ({detail})", code=code,
                          action=action)


def _is_device_index_taken(message: str) -> bool:
    """EC2: "Instance 'i-..' already has an interface attached at device index '1'."."""
    text = message.lower()
    return "already has an interface attached" in text and "device index" in text


def outcome_of(error: CloudError) -> str:
    """The label ``on_call`` reports for a failed call: EC2's code or the failure kind."""
    return error.code or type(error).__name__
