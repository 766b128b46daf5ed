"""EC2's id formats, checked before any other rule: a parameter naming an ENI, subnet,
instance, route table, ENI attachment or security group must be its prefix followed by 8 to
17 lowercase hex digits (EC2's short and long id formats are 8 and 17; lengths between are
let through as not found, a choice), else EC2's ``*.Malformed`` error
for that kind of id, as the EC2 API reference's error codes spell them
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html). moto
answers a malformed id as not found. A well-formed id that does not exist stays a NotFound
for the call's own check. Filter values and CreateTags' resource ids are not checked here.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lab.ec2.wire import ApiRequest, Refusal

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdKind:
    prefix: str
    code: str
    what: str


ENI = IdKind("eni-", "InvalidNetworkInterfaceId.Malformed", "network interface")
ATTACHMENT = IdKind("eni-attach-", "InvalidNetworkInterfaceAttachmentId.Malformed",
                    "network interface attachment")
SUBNET = IdKind("subnet-", "InvalidSubnetID.Malformed", "subnet")
INSTANCE = IdKind("i-", "InvalidInstanceID.Malformed", "instance")
ROUTE_TABLE = IdKind("rtb-", "InvalidRouteTableId.Malformed", "route table")
GROUP = IdKind("sg-", "InvalidGroupId.Malformed", "security group")

# wire parameter (".N" for a list) -> kind; any action that carries the parameter
ID_PARAMETERS: dict[str, IdKind] = {
    "NetworkInterfaceId": ENI,
    "NetworkInterfaceId.N": ENI,
    "AttachmentId": ATTACHMENT,
    "Attachment.AttachmentId": ATTACHMENT,
    "SubnetId": SUBNET,
    "SubnetId.N": SUBNET,
    "InstanceId": INSTANCE,
    "InstanceId.N": INSTANCE,
    "RouteTableId": ROUTE_TABLE,
    "RouteTableId.N": ROUTE_TABLE,
    "SecurityGroupId.N": GROUP,
}

# actions whose parameters of these names are something else, or ids of another service
NOT_CHECKED = frozenset({"CreateTags", "DeleteTags", "DescribeTags"})

_HEX_ID = re.compile(r"[0-9a-f]{8,17}")


def parameter_name(key: str) -> str:
    """``SubnetId.3`` -> ``SubnetId.N``; other keys unchanged."""
    head, _, tail = key.rpartition(".")
    return f"{head}.N" if head and tail.isdigit() else key


def is_well_formed(value: str, kind: IdKind) -> bool:
    return value.startswith(kind.prefix) and _HEX_ID.fullmatch(value[len(kind.prefix):]) is not None


def check_id_formats(request: ApiRequest) -> None:
    """Refuse the first malformed id the request names, with its kind's Malformed code."""
    if request.action in NOT_CHECKED:
        return
    for key, value in request.params:
        kind = ID_PARAMETERS.get(parameter_name(key))
        if kind is None or not value or is_well_formed(value, kind):
            continue
        raise Refusal(kind.code, f"Invalid id: {value!r} (expecting a {kind.what} id of the "
                                 f"form {kind.prefix}xxxxxxxxxxxxxxxxx)")
