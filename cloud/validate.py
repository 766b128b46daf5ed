"""Input checks at the cloud boundary: bad input is refused with a message that names the
action, the argument and the bad value, before any request is sent (so no state changes).
"""
from __future__ import annotations

import ipaddress
import logging

from cloud.errors import InvalidRequest
from cloud.types import PREFIX_LEN

logger = logging.getLogger(__name__)


def require_id(value: object, prefix: str, what: str, action: str) -> None:
    """``value`` must be an EC2 id with ``prefix`` ("eni-", "subnet-", ...)."""
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) <= len(prefix):
        raise InvalidRequest(
            f"{action}: {what} must look like '{prefix}...', got {value!r}", action=action
        )


def require_ids(
    values: object, prefix: str, what: str, action: str, *, allow_empty: bool = False
) -> list[str]:
    """A list (not a bare string) of ids with ``prefix``; non-empty unless allowed."""
    if (
        isinstance(values, str)
        or not isinstance(values, (list, tuple))
        or not (values or allow_empty)
    ):
        raise InvalidRequest(
            f"{action}: {what}s must be a {'' if allow_empty else 'non-empty '}list, "
            f"got {values!r}",
            action=action,
        )
    for value in values:
        require_id(value, prefix, what, action)
    return list(values)


def require_ipv4(value: object, action: str) -> None:
    try:
        ipaddress.IPv4Address(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise InvalidRequest(f"{action}: {value!r} is not an IPv4 address",
                             action=action) from None


def require_cidr(value: object, action: str) -> str:
    """The canonical form of an IPv4 CIDR whose host bits are zero."""
    try:
        return str(ipaddress.IPv4Network(value))  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise InvalidRequest(
            f"{action}: {value!r} is not an IPv4 CIDR with host bits zero", action=action
        ) from None


def require_count(value: object, minimum: int, what: str, action: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidRequest(
            f"{action}: {what} must be an integer >= {minimum}, got {value!r}", action=action
        )
    return value


def require_prefix(value: object, action: str) -> str:
    """The canonical form of an IPv4 /28 prefix aligned on 16 (as EC2 delegates them)."""
    network = require_cidr(value, action)
    if not network.endswith(f"/{PREFIX_LEN}"):
        raise InvalidRequest(
            f"{action}: {value!r} is not an IPv4 /{PREFIX_LEN} prefix", action=action
        )
    return network
