"""Per-instance-type network limits: ENIs per instance and IPv4 addresses per ENI
(primary included), from moto's DescribeInstanceTypes data, with a small table of EC2's
published numbers as a fallback for types moto lacks."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lab.ec2.wire import Refusal

logger = logging.getLogger(__name__)

# (ENIs, IPv4 per ENI) from EC2's documentation, used only when moto has no data
FALLBACK_LIMITS = {
    "t3.micro": (2, 2),
    "t3.small": (3, 4),
    "t3.medium": (3, 6),
    "m5.large": (3, 10),
    "m5.xlarge": (4, 15),
    "c5.4xlarge": (8, 30),
    "m5.24xlarge": (15, 50),
}


@dataclass(frozen=True)
class TypeLimits:
    instance_type: str
    max_enis: int
    ips_per_eni: int


def limits_for(instance_type: str) -> TypeLimits:
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    info = INSTANCE_TYPES.get(instance_type, {}).get("NetworkInfo")
    if info and info.get("MaximumNetworkInterfaces") and info.get("Ipv4AddressesPerInterface"):
        return TypeLimits(instance_type, int(info["MaximumNetworkInterfaces"]),
                          int(info["Ipv4AddressesPerInterface"]))
    if instance_type in FALLBACK_LIMITS:
        enis, ips = FALLBACK_LIMITS[instance_type]
        return TypeLimits(instance_type, enis, ips)
    raise Refusal("InvalidParameterValue",
                  f"The instance type '{instance_type}' is not known to the emulator")
