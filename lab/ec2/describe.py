"""DescribeNetworkInterfaces and DescribeInstances filters that moto lacks or gets wrong,
answered by the layer: it matches them itself against moto's ENIs (instances) and hands moto
a ``network-interface-id`` (``instance-id``) filter with the matching ids instead. moto
answers ``attachment.device-index``, ``addresses.primary``, ``private-dns-name``,
``availability-zone-id`` and ``group-name`` of ENIs and the ``network-interface.*`` filters
of instances (all in the EC2 API reference's filter lists) with HTTP 500, its
``private-ip-address`` matches only the primary address, and its
``attachment.instance-owner-id`` matches unattached ENIs too."""
from __future__ import annotations

import fnmatch
import logging
from typing import Any, Callable

from lab.ec2.snapshot import eni_addresses, iterate_instances
from lab.ec2.wire import ApiRequest

logger = logging.getLogger(__name__)

NO_SUCH_ENI = "eni-00000000000000000"
NO_SUCH_INSTANCE = "i-00000000000000000"


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
    "group-name": lambda e: [g.name for g in e.group_set],
}


def _on_enis(value: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
    """An instance filter over its attached ENIs' values."""
    return lambda instance: [v for eni in instance.nics.values() for v in value(eni)]


INSTANCE_FILTERS: dict[str, Callable[[Any], list[str]]] = {
    "network-interface.network-interface-id": _on_enis(lambda e: [e.id]),
    "network-interface.addresses.private-ip-address": _on_enis(eni_addresses),
    "network-interface.addresses.primary": _on_enis(LAYER_FILTERS["addresses.primary"]),
    "network-interface.attachment.device-index": _on_enis(lambda e: [str(e.device_index)]),
    "network-interface.attachment.attachment-id": _on_enis(lambda e: [e.attachment_id]),
    "network-interface.attachment.status": _on_enis(lambda e: ["attached"]),
    "network-interface.subnet-id": _on_enis(lambda e: [e.subnet.id]),
    "network-interface.vpc-id": _on_enis(lambda e: [e.subnet.vpc_id]),
    "network-interface.mac-address": _on_enis(lambda e: [e.mac_address]),
    "network-interface.source-dest-check": _on_enis(LAYER_FILTERS["source-dest-check"]),
    "network-interface.status": _on_enis(lambda e: [e.status]),
    "network-interface.group-id": _on_enis(lambda e: [g.id for g in e.group_set]),
    "network-interface.group-name": _on_enis(LAYER_FILTERS["group-name"]),
}


def matches(values_held: list[str], patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(held, pattern) for held in values_held for pattern in patterns)


def check_describe_network_interfaces(request: ApiRequest,
                                      backend: Any) -> list[tuple[str, str]] | None:
    """The request to hand moto instead, or None when moto can answer it as is."""
    return rewrite_filters(request, list(backend.enis.values()), LAYER_FILTERS,
                           "network-interface-id", NO_SUCH_ENI)


def check_describe_instances(request: ApiRequest,
                             backend: Any) -> list[tuple[str, str]] | None:
    return rewrite_filters(request, iterate_instances(backend), INSTANCE_FILTERS,
                           "instance-id", NO_SUCH_INSTANCE)


def rewrite_filters(request: ApiRequest, resources: list[Any],
                    layer_filters: dict[str, Callable[[Any], list[str]]], id_filter: str,
                    no_such_id: str) -> list[tuple[str, str]] | None:
    """The request with the layer's filters replaced by an ``id_filter`` naming the
    resources that match them, or None when moto can answer every filter itself."""
    filters = request.filters()
    ours = {name: values for name, values in filters.items() if name in layer_filters}
    if not ours:
        return None
    ids = [r.id for r in resources
           if all(matches(layer_filters[name](r), values) for name, values in ours.items())]
    rest = {name: values for name, values in filters.items() if name not in ours}
    if id_filter in rest:
        ids = [i for i in ids if matches([i], rest[id_filter])]
    rest[id_filter] = ids or [no_such_id]
    params = request.without("Filter")
    for index, (name, values) in enumerate(rest.items(), start=1):
        params.append((f"Filter.{index}.Name", name))
        params += [(f"Filter.{index}.Value.{j}", v) for j, v in enumerate(values, start=1)]
    return params
