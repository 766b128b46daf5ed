"""What the VPC router should look like for one state of the emulated cloud: pure, no
kernel and no cloud.

``read_view`` turns the control plane's snapshot into a ``CloudView``; ``plan_fabric``
turns a view into a ``FabricPlan``: one link per attached ENI (veth, router side named from
a hash of the ENI id, node side ``eth<device index>`` with the ENI's MAC), the router's
``/32`` routes and permanent neighbour entries for every private IP, a ``/28`` route for
every delegated prefix (via the ENI's primary address, so frames go to the ENI's MAC as
EC2 delivers them), the route-table entries, and the iptables ruleset that enforces
source/destination check for every address, those inside prefixes included.
"""
from __future__ import annotations

import hashlib
import ipaddress
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

ENI_MTU = 9001  # what EC2 gives an ENI
ATTACHED_STATES = frozenset({"in-use", "attached", "attaching"})
GONE_STATES = frozenset({"shutting-down", "terminated"})


class SnapshotError(ValueError):
    """The cloud snapshot does not have the shape the fabric needs (names the field)."""


@dataclass(frozen=True)
class EniView:
    id: str
    mac: str
    instance_id: str
    device_index: int
    subnet_cidr: str
    ips: tuple[str, ...]  # primary first
    source_dest_check: bool
    prefixes: tuple[str, ...] = ()  # delegated /28 prefixes

    @property
    def primary_ip(self) -> str:
        return self.ips[0]


@dataclass(frozen=True)
class RouteView:
    table_id: str
    cidr: str
    eni_id: str | None
    instance_id: str | None


@dataclass(frozen=True)
class CloudView:
    instances: tuple[str, ...]
    enis: tuple[EniView, ...]  # attached ENIs only, sorted by (instance, device index)
    routes: tuple[RouteView, ...]


@dataclass(frozen=True)
class EniLink:
    """One attached ENI as a veth pair: ``router_ifname`` in the router namespace,
    ``ifname`` (``eth<device index>``) in the node namespace."""

    eni: EniView
    router_ifname: str
    gateway: str
    prefix_len: int

    @property
    def ifname(self) -> str:
        return f"eth{self.eni.device_index}"

    @property
    def node(self) -> str:
        return self.eni.instance_id

    @property
    def alias(self) -> str:
        """Stored as the router link's ifalias: a link whose alias differs is replaced."""
        return f"{self.eni.id} {self.eni.instance_id} {self.eni.device_index} {self.eni.mac}"


@dataclass(frozen=True)
class RouterRoute:
    dst: str  # always with a prefix length
    dev: str
    via: str | None = None


@dataclass(frozen=True)
class Neighbour:
    ip: str
    dev: str
    mac: str


@dataclass(frozen=True)
class FabricPlan:
    nodes: tuple[str, ...]
    links: tuple[EniLink, ...]
    routes: frozenset[RouterRoute]
    neighbours: frozenset[Neighbour]
    filter_rules: str


def name_router_link(eni_id: str) -> str:
    """``e`` + 14 hex chars of sha1(ENI id): unique enough, and <= 15 chars (IFNAMSIZ)."""
    return "e" + hashlib.sha1(eni_id.encode()).hexdigest()[:14]


def _field(item: Mapping[str, Any], *names: str, default: Any = KeyError) -> Any:
    for name in names:
        if name in item:
            return item[name]
    if default is KeyError:
        raise SnapshotError(f"snapshot entry {dict(item)!r} has none of the fields {names}")
    return default


def _items(value: Any) -> Iterable[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        return [dict(v, id=v.get("id", k)) for k, v in value.items()]
    return list(value)


def read_view(snapshot: Mapping[str, Any], vpc_id: str | None = None) -> CloudView:
    """Accepts the control plane's ``snapshot()``: ENIs (id, mac, instance, device index,
    subnet or subnet CIDR, ips, source/dest check), subnets (id -> CIDR), instances, route
    tables. With ``vpc_id``, only that VPC's instances, ENIs and route tables count."""
    raw_subnets = list(_items(snapshot.get("subnets", ())))
    subnets = {str(_field(s, "id", "subnet_id")): str(_field(s, "cidr", "cidr_block"))
               for s in raw_subnets}
    subnet_vpc = {str(_field(s, "id", "subnet_id")): s.get("vpc_id") for s in raw_subnets}

    def in_vpc(item: Mapping[str, Any]) -> bool:
        if vpc_id is None:
            return True
        found = item.get("vpc_id") or subnet_vpc.get(str(item.get("subnet_id")))
        return found == vpc_id

    enis: list[EniView] = []
    instances: set[str] = set()
    gone: set[str] = set()
    for item in _items(snapshot.get("instances", ())):
        if not isinstance(item, Mapping):
            instances.add(str(item))
            continue
        if not in_vpc(item):
            continue
        state = item.get("state", "running")
        state = state.get("name", "running") if isinstance(state, Mapping) else str(state)
        if state in GONE_STATES:
            gone.add(str(_field(item, "id", "instance_id")))
        else:
            instances.add(str(_field(item, "id", "instance_id")))
    for raw in _items(_field(snapshot, "enis", "network_interfaces")):
        instance = _field(raw, "instance", "instance_id", default=None)
        index = _field(raw, "device_index", default=None)
        status = str(_field(raw, "status", "attachment_status", default="in-use"))
        if (instance is None or index is None or status not in ATTACHED_STATES
                or str(instance) in gone or not in_vpc(raw)):
            continue
        cidr = _field(raw, "subnet_cidr", default=None)
        if cidr is None:
            subnet = str(_field(raw, "subnet", "subnet_id"))
            if subnet not in subnets:
                raise SnapshotError(f"ENI {raw.get('id')} is in subnet {subnet} with no CIDR")
            cidr = subnets[subnet]
        ips = tuple(str(ip) for ip in _field(raw, "ips", "private_ips"))
        if not ips:
            raise SnapshotError(f"ENI {raw.get('id')} has no private IP")
        instances.add(str(instance))
        enis.append(EniView(
            id=str(_field(raw, "id", "eni_id")), mac=str(_field(raw, "mac")).lower(),
            instance_id=str(instance), device_index=int(index), subnet_cidr=str(cidr),
            ips=ips, source_dest_check=bool(_field(raw, "source_dest_check", default=True)),
            prefixes=tuple(str(ipaddress.ip_network(p)) for p in
                           _field(raw, "prefixes", "ipv4_prefixes", default=())),
        ))
    routes: list[RouteView] = []
    for table in _items(snapshot.get("route_tables", ())):
        if vpc_id is not None and table.get("vpc_id") != vpc_id:
            continue
        table_id = str(_field(table, "id", "route_table_id"))
        for route in _field(table, "routes", default=()):
            cidr = _field(route, "cidr", "destination_cidr", "destination", default=None)
            eni = _field(route, "eni", "eni_id", "network_interface_id", default=None)
            inst = _field(route, "instance", "instance_id", default=None)
            if cidr is None or (eni is None and inst is None):
                continue  # local, internet gateway and the like: not the fabric's business
            routes.append(RouteView(table_id, str(cidr), eni and str(eni), inst and str(inst)))
    return CloudView(
        instances=tuple(sorted(instances)),
        enis=tuple(sorted(enis, key=lambda e: (e.instance_id, e.device_index))),
        routes=tuple(sorted(routes, key=lambda r: (r.table_id, r.cidr))),
    )


def _resolve_target(view: CloudView, route: RouteView) -> EniView | None:
    for eni in view.enis:
        if route.eni_id is not None and eni.id == route.eni_id:
            return eni
        if route.eni_id is None and eni.instance_id == route.instance_id and eni.device_index == 0:
            return eni
    return None


def plan_fabric(view: CloudView) -> FabricPlan:
    links: list[EniLink] = []
    routes: set[RouterRoute] = set()
    neighbours: set[Neighbour] = set()
    owner: dict[str, str] = {}
    for eni in view.enis:
        net = ipaddress.ip_network(eni.subnet_cidr)
        link = EniLink(eni, name_router_link(eni.id), str(net.network_address + 1), net.prefixlen)
        links.append(link)
        # each address a /32 with its neighbour entry; each prefix via the primary address
        held = [(f"{ip}/32", None) for ip in eni.ips] + [(p, eni.primary_ip) for p in eni.prefixes]
        for dst, via in held:
            if dst in owner:
                logger.error("%s is held by both %s and %s; routing it to the first",
                             dst, owner[dst], eni.id)
                continue
            owner[dst] = eni.id
            routes.add(RouterRoute(dst, link.router_ifname, via))
            if via is None:
                neighbours.add(Neighbour(dst[:-3], link.router_ifname, eni.mac))
    by_eni = {link.eni.id: link for link in links}
    seen: dict[str, RouteView] = {}
    for route in view.routes:
        target = _resolve_target(view, route)
        if target is None:
            continue  # target detached or gone: a blackhole route in EC2 terms
        cidr = str(ipaddress.ip_network(route.cidr, strict=False))
        if cidr in seen:
            logger.warning("route %s in %s shadowed by the one in %s", cidr, route.table_id,
                           seen[cidr].table_id)
            continue
        if cidr in owner:
            logger.warning("route %s in %s ignored: the address or prefix is an ENI's own",
                           cidr, route.table_id)
            continue
        seen[cidr] = route
        routes.add(RouterRoute(cidr, by_eni[target.id].router_ifname, target.primary_ip))
    return FabricPlan(
        nodes=view.instances, links=tuple(links), routes=frozenset(routes),
        neighbours=frozenset(neighbours), filter_rules=render_filter(links),
    )


def render_filter(links: Iterable[EniLink]) -> str:
    """An ``iptables-restore`` document for the router's filter table. For each ENI whose
    source/destination check is on: packets entering from its link must come from one of
    its IPs or inside one of its prefixes, packets leaving to it must be addressed to one
    of them; all else is dropped.
    Loaded whole, so every change is atomic."""
    lines = ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]"]
    body: list[str] = []
    for link in sorted(links, key=lambda k: k.router_ifname):
        if not link.eni.source_dest_check:
            continue
        src, dst = f"S{link.router_ifname}", f"D{link.router_ifname}"
        lines += [f":{src} - [0:0]", f":{dst} - [0:0]"]
        body += [f"-A FORWARD -i {link.router_ifname} -j {src}",
                 f"-A FORWARD -o {link.router_ifname} -j {dst}"]
        for ip in link.eni.ips:
            body += [f"-A {src} -s {ip}/32 -j RETURN", f"-A {dst} -d {ip}/32 -j RETURN"]
        for prefix in link.eni.prefixes:
            body += [f"-A {src} -s {prefix} -j RETURN", f"-A {dst} -d {prefix} -j RETURN"]
        body += [f"-A {src} -j DROP", f"-A {dst} -j DROP"]
    return "\n".join(lines + body + ["COMMIT", ""])
