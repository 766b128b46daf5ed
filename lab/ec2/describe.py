"""DescribeNetworkInterfaces filters that moto lacks or gets wrong, answered by the layer:
it matches them itself against moto's ENIs and hands moto a ``network-interface-id``
filter with the matching ids instead. moto answers ``attachment.device-index``,
``addresses.primary``, ``private-dns-name`` and ``availability-zone-id`` (all in the EC2
API reference's filter list) with HTTP 500, its ``private-ip-address`` matches only the
primary address, and its ``attachment.instance-owner-id`` matches unattached ENIs too."""
from __future__ import annotations

import fnmatch
import logging
from typing import Any, Callable

from lab.ec2.snapshot import eni_addresses
from lab.ec2.wire import ApiRequest

logger = logging.getLogger(__name__)

NO_SUCH_ENI = "eni-00000000000000000"


def _attachment_values(eni: Any, value: Callable[[Any], str]) -> list[str]:
    return [value(eni)] if eni.instance is not None else []


LAYER_FILTERS: dict[str, Callable[[Any], list[str]]] = {
    "attachment.device-index": lambda e: _attachment_values(e, lambda x: str(x.device_index)),
    "attachment.status": lambda e: ["attached" if e.instance is not None else "detached"],
    "attachment.instance-owner-id": lambda e: _attachment_values(
        e, lambda x: getattr(x.instance, "owner_id", None) or x.owner_id),
    "attachment.delete-on-termination": lambda e: _attachment_values(
        e, lambda x: "true" if x.delete_on_termination else "false"),
    "status": lambda e: [e.status],
    "mac-address": lambda e: [e.mac_address],
    "private-ip-address": eni_addresses,
    "addresses.private-ip-address": eni_addresses,
    "addresses.primary": lambda e: ["true"] + (["false"] if len(eni_addresses(e)) > 1 else []),
    "private-dns-name": lambda e: [n for n in [getattr(e, "private_dns_name", None)] if n],
    "availability-zone-id": lambda e: [e.subnet.availability_zone_id],
    "source-dest-check": lambda e: ["true" if e.source_dest_check else "false"],
}


def matches(values_held: list[str], patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(held, pattern) for held in values_held for pattern in patterns)


def check_describe_network_interfaces(request: ApiRequest,
                                      backend: Any) -> list[tuple[str, str]] | None:
    """The request to hand moto instead, or None when moto can answer it as is."""
    filters = request.filters()
    ours = {name: values for name, values in filters.items() if name in LAYER_FILTERS}
    if not ours:
        return None
    ids = [eni.id for eni in list(backend.enis.values())
           if all(matches(LAYER_FILTERS[name](eni), values) for name, values in ours.items())]
    rest = {name: values for name, values in filters.items() if name not in ours}
    if "network-interface-id" in rest:
        ids = [i for i in ids if matches([i], rest["network-interface-id"])]
    rest["network-interface-id"] = ids or [NO_SUCH_ENI]
    params = request.without("Filter")
    for index, (name, values) in enumerate(rest.items(), start=1):
        params.append((f"Filter.{index}.Name", name))
        params += [(f"Filter.{index}.Value.{j}", v) for j, v in enumerate(values, start=1)]
    return params
