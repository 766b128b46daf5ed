"""Per-instance-type network limits: ENIs per instance and IPv4 addresses per ENI
(primary included), from moto's DescribeInstanceTypes data, with a small table of EC2's
published numbers as a fallback for types moto lacks; and whether a type is built on the
Nitro system, which prefix delegation needs (DescribeInstanceTypes' Hypervisor "nitro"; bare
metal types have none and count by family)."""
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


# Families built on the Nitro system (EC2's documentation), used when moto names no
# hypervisor for a type: m5, c5, t3 and the newer families are; t2, m4, c4, m3, m1 are not
# (Xen). Prefix delegation is refused on the others.
NITRO_FAMILIES = frozenset({
    "a1", "c5", "c5a", "c5ad", "c5d", "c5n", "c6a", "c6g", "c6gd", "c6gn", "c6i", "c6id",
    "c6in", "c7a", "c7g", "c7gd", "c7gn", "c7i", "m5", "m5a", "m5ad", "m5d", "m5dn", "m5n",
    "m5zn", "m6a", "m6g", "m6gd", "m6i", "m6id", "m6idn", "m6in", "m7a", "m7g", "m7gd", "m7i",
    "r5", "r5a", "r5ad", "r5b", "r5d", "r5dn", "r5n", "r6a", "r6g", "r6gd", "r6i", "r6id",
    "r7a", "r7g", "r7gd", "r7i", "t3", "t3a", "t4g", "x2gd", "z1d",
})


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


def hypervisor_of(instance_type: str) -> str:
    """"nitro" or "xen" as DescribeInstanceTypes reports it; for a type moto names no
    hypervisor for (bare metal, or unknown to moto), "nitro" when its family is in
    NITRO_FAMILIES, else "xen"."""
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    named = INSTANCE_TYPES.get(instance_type, {}).get("Hypervisor")
    if named in ("nitro", "xen"):
        return str(named)
    return "nitro" if instance_type.split(".")[0] in NITRO_FAMILIES else "xen"


def is_nitro(instance_type: str) -> bool:
    return hypervisor_of(instance_type) == "nitro"
