"""The route reconcile of vpc-route mode as a pure decision: route tables as the cloud
reports them, this node's wish (``pod CIDR -> primary ENI``), the cluster CIDR, what is
known about route targets and which Nodes departed -> the changes to make. No clock, no
cloud, no kernel: table-tested.

Rules, per table in scope:

- this node's CIDR: missing -> create; pointing at another target or blackholed -> replace;
- a route of ours (target: our ENI) for another CIDR inside the cluster CIDR -> delete (the
  node's pod CIDR changed);
- a route whose destination is the pod CIDR of a departed Node -> delete (inside the cluster
  CIDR when one is configured);
- the sweep, only with a cluster CIDR: a route inside it that is blackholed, or whose target
  ENI or instance is known to be gone -> delete;
- routes with a gateway target (``local``, internet gateways, ...) and routes outside the
  cluster CIDR are never touched. An unknown target counts as alive.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cloud.types import Route, RouteTable

CREATE, REPLACE, DELETE = "create", "replace", "delete"


@dataclass(frozen=True)
class RouteChange:
    action: str  # create | replace | delete
    table_id: str
    cidr: str
    eni_id: str | None = None  # the target for create/replace
    why: str = ""


def normalise(cidr: str) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(cidr, strict=False)
    except ValueError:
        return None


def target_of(route: Route) -> str | None:
    """The ENI or instance a route points at (None: a gateway or nothing)."""
    return route.eni_id or route.instance_id


def _inside(net: ipaddress.IPv4Network | None, cluster: ipaddress.IPv4Network | None) -> bool:
    return net is not None and cluster is not None and net.subnet_of(cluster)


def sweep_targets(tables: Iterable[RouteTable], own_cidr: str, cluster_cidr: str) -> set[str]:
    """The targets whose existence the sweep needs to know (inside the cluster CIDR)."""
    cluster = normalise(cluster_cidr) if cluster_cidr else None
    own = normalise(own_cidr)
    out = set()
    for table in tables:
        for route in table.routes:
            net = normalise(route.destination_cidr)
            if route.gateway_id or net == own or not _inside(net, cluster):
                continue
            if target_of(route):
                out.add(target_of(route))
    return out


def plan_routes(tables: Iterable[RouteTable], *, own_cidr: str, own_eni: str,
                cluster_cidr: str = "", alive: Mapping[str, bool] | None = None,
                departed: Iterable[str] = ()) -> tuple[RouteChange, ...]:
    cluster = normalise(cluster_cidr) if cluster_cidr else None
    own = normalise(own_cidr) if own_cidr else None
    gone_cidrs = {n for n in (normalise(c) for c in departed) if n is not None and n != own}
    alive = alive or {}
    changes: list[RouteChange] = []
    for table in sorted(tables, key=lambda t: t.id):
        mine = None
        for route in table.routes:
            net = normalise(route.destination_cidr)
            if net is None or route.gateway_id:
                continue
            if own is not None and net == own:
                mine = route
                continue
            target = target_of(route)
            if cluster is not None and not _inside(net, cluster):
                continue  # outside the cluster CIDR: never ours to touch
            if net in gone_cidrs:
                why = "its Node was deleted"
            elif cluster is None:
                continue  # without a cluster CIDR the sweep touches nothing
            elif target == own_eni:
                why = "this node's earlier pod CIDR"
            elif route.state == "blackhole":
                why = "blackholed"
            elif target is not None and alive.get(target) is False:
                why = f"target {target} is gone"
            else:
                continue
            changes.append(RouteChange(DELETE, table.id, str(net), None, why))
        if own is None:
            continue
        if mine is None:
            changes.append(RouteChange(CREATE, table.id, str(own), own_eni, "missing"))
        elif mine.state == "blackhole":
            changes.append(RouteChange(REPLACE, table.id, str(own), own_eni, "blackholed"))
        elif mine.eni_id != own_eni:
            changes.append(RouteChange(REPLACE, table.id, str(own), own_eni,
                                       f"points to {target_of(mine) or 'nothing'}"))
    return tuple(changes)


def routes_used(table: RouteTable) -> int:
    """Routes that count against the table's limit (the VPC's local routes do not)."""
    return sum(1 for r in table.routes if r.gateway_id != "local")
