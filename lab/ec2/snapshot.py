"""A JSON-ready picture of the emulated cloud's state, read from moto's backend: what the
VPC fabric follows (which ENI holds which IP and which /28 prefixes, where it is attached,
route tables, source/destination check) and what invariant checks inspect."""
from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def take_snapshot(backend: Any) -> dict[str, Any]:
    """Call with the strict layer's lock held, so the picture is consistent."""
    return {
        "vpcs": [{"id": v.id, "cidr": v.cidr_block} for v in backend.vpcs.values()],
        "subnets": [describe_subnet(s) for s in iterate_subnets(backend)],
        "instances": [describe_instance(i) for i in iterate_instances(backend)],
        "enis": [describe_eni(e, backend.tags.get(e.id, {})) for e in backend.enis.values()],
        "route_tables": [describe_route_table(t) for t in backend.route_tables.values()],
    }


def iterate_subnets(backend: Any) -> list[Any]:
    return [s for by_az in backend.subnets.values() for s in by_az.values()]


def iterate_instances(backend: Any) -> list[Any]:
    return [i for r in backend.reservations.values() for i in r.instances]


def describe_subnet(subnet: Any) -> dict[str, Any]:
    reservations = [{"id": r.id, "cidr": str(r.cidr), "type": r.reservation_type}
                    for r in getattr(subnet, "_cidr_reservations", ())]
    return {"id": subnet.id, "vpc_id": subnet.vpc_id, "cidr": subnet.cidr_block,
            "availability_zone": subnet.availability_zone, "cidr_reservations": reservations}


def describe_instance(instance: Any) -> dict[str, Any]:
    return {
        "id": instance.id,
        "instance_type": instance.instance_type,
        "state": instance.state,
        "private_ip": instance.private_ip,
        "private_dns": instance.private_dns_name,
        "subnet_id": instance.subnet_id,
        "enis": {str(index): eni.id for index, eni in sorted(instance.nics.items())},
    }


def eni_addresses(eni: Any) -> list[str]:
    """The ENI's IPv4 addresses, primary first."""
    primary = [a["PrivateIpAddress"] for a in eni.private_ip_addresses if a.get("Primary")]
    rest = [a["PrivateIpAddress"] for a in eni.private_ip_addresses if not a.get("Primary")]
    return primary + rest


def eni_prefixes(eni: Any) -> list[str]:
    """The ENI's IPv4 /28 prefixes, in the order assigned. The strict layer keeps them on
    moto's ENI object (``ipv4_prefixes``), where moto's answers also find them."""
    return [p["Ipv4Prefix"] for p in getattr(eni, "ipv4_prefixes", None) or ()]


def describe_eni(eni: Any, tags: dict[str, str]) -> dict[str, Any]:
    return {
        "id": eni.id,
        "mac": eni.mac_address,
        "subnet_id": eni.subnet.id,
        "vpc_id": eni.subnet.vpc_id,
        "status": eni.status,
        "instance_id": eni.instance.id if eni.instance else None,
        "device_index": eni.device_index if eni.instance else None,
        "attachment_id": eni.attachment_id,
        "delete_on_termination": bool(eni.delete_on_termination),
        "primary_ip": eni.private_ip_address,
        "ips": eni_addresses(eni),
        "prefixes": eni_prefixes(eni),
        "source_dest_check": bool(eni.source_dest_check),
        "security_groups": sorted(g.id for g in eni.group_set),
        "tags": dict(tags),
    }


def describe_route_table(table: Any) -> dict[str, Any]:
    routes = []
    for route in table._routes.values():
        if not route.destination_cidr_block:
            continue
        routes.append({
            "destination": route.destination_cidr_block,
            "local": bool(route.local),
            "eni_id": route.interface.id if route.interface else None,
            "instance_id": route.instance.id if route.instance else None,
            "gateway_id": route.gateway.id if route.gateway else None,
        })
    return {"id": table.id, "vpc_id": table.vpc_id, "routes": routes}
