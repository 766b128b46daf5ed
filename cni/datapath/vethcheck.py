"""CHECK for veth mode: compare the kernel with what setup_pod builds and name every
difference, e.g. "rule from 10.0.0.5 lookup 2 (priority 1536) missing" or
"pod eth0 has no address 10.0.0.5/32". An empty list means the pod is wired.
"""
from __future__ import annotations

import logging
from typing import Any

from cni.datapath import LINK_LOCAL_GW, DatapathError, NetnsMissing, PodSpec
from cni.datapath.netns import open_netns
from cni.datapath.rules import (MAIN_TABLE, NUD_PERMANENT, find_link_index, get_link,
                                list_rules, pod_rules)

logger = logging.getLogger(__name__)

IFF_UP = 0x1


def _routes(ipr: Any, table: int) -> list[tuple[str, int, str | None, int | None]]:
    out = []
    for r in ipr.get_routes(family=2, table=table):
        if r.get_attr("RTA_TABLE") == table:
            out.append((r.get_attr("RTA_DST") or "0.0.0.0", r["dst_len"],
                        r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")))
    return out


def _check_host(ipr: Any, pod: PodSpec) -> tuple[list[str], str | None, int | None]:
    problems: list[str] = []
    index = find_link_index(ipr, pod.host_ifname)
    link = get_link(ipr, index) if index is not None else None
    host_mac = None
    if link is None:
        index = None
        problems.append(f"host veth {pod.host_ifname} missing")
    else:
        host_mac = link.get_attr("IFLA_ADDRESS")
        if not link["flags"] & IFF_UP:
            problems.append(f"host veth {pod.host_ifname} is down")
        if (f"{pod.pod_ip}", 32, None, index) not in _routes(ipr, MAIN_TABLE):
            problems.append(f"host route {pod.pod_ip}/32 dev {pod.host_ifname} missing")
    present = set(list_rules(ipr))
    for rule in pod_rules(pod):
        if rule not in present:
            problems.append(f"{rule.describe()} missing")
    if pod.policy_routing and not any(dst == "0.0.0.0" and plen == 0 and gw == pod.eni.gateway
               for dst, plen, gw, _ in _routes(ipr, pod.eni.table)):
        problems.append(f"table {pod.eni.table} has no default via {pod.eni.gateway} "
                        "(ENI link not ensured?)")
    return problems, host_mac, index


def _check_pod_side(pod: PodSpec, host_mac: str | None, host_index: int | None) -> list[str]:
    try:
        with open_netns(pod.netns) as ns:
            return _check_pod_links(ns, pod, host_mac, host_index)
    except NetnsMissing:
        return [f"pod network namespace {pod.netns} does not exist"]


def _check_pod_links(ns: Any, pod: PodSpec, host_mac: str | None,
                     host_index: int | None) -> list[str]:
    problems: list[str] = []
    name = f"pod {pod.ifname}"
    found = ns.link_lookup(ifname=pod.ifname)
    if not found:
        return [f"{name} missing in {pod.netns}"]
    idx = found[0]
    link = ns.get_links(idx)[0]
    if not link["flags"] & IFF_UP:
        problems.append(f"{name} is down")
    if link.get_attr("IFLA_MTU") != pod.mtu:
        problems.append(f"{name} has MTU {link.get_attr('IFLA_MTU')}, expected {pod.mtu}")
    if host_index is not None and link.get_attr("IFLA_LINK") != host_index:
        problems.append(f"{name} is not the peer of host veth {pod.host_ifname}")
    addrs = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
             for a in ns.get_addr(family=2, index=idx)}
    if (pod.pod_ip, 32) not in addrs:
        problems.append(f"{name} has no address {pod.pod_ip}/32")
    routes = _routes(ns, MAIN_TABLE)
    if (LINK_LOCAL_GW, 32, None, idx) not in routes:
        problems.append(f"pod route {LINK_LOCAL_GW} dev {pod.ifname} scope link missing")
    if ("0.0.0.0", 0, LINK_LOCAL_GW, idx) not in routes:
        problems.append(f"pod default route via {LINK_LOCAL_GW} dev {pod.ifname} missing")
    neigh = [n for n in ns.get_neighbours(family=2, ifindex=idx)
             if n.get_attr("NDA_DST") == LINK_LOCAL_GW]
    if not neigh or not neigh[0]["state"] & NUD_PERMANENT:
        problems.append(f"pod permanent neighbour {LINK_LOCAL_GW} missing")
    elif host_mac and neigh[0].get_attr("NDA_LLADDR") != host_mac:
        problems.append(f"pod neighbour {LINK_LOCAL_GW} is "
                        f"{neigh[0].get_attr('NDA_LLADDR')}, expected host veth {host_mac}")
    return problems


def check_veth_pod(pod: PodSpec) -> list[str]:
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            problems, host_mac, host_index = _check_host(ipr, pod)
        problems += _check_pod_side(pod, host_mac, host_index)
    except DatapathError as exc:
        problems = [str(exc)]
    if problems:
        logger.info("check of %s (%s): %s", pod.container_id, pod.pod_ip, "; ".join(problems))
    return problems
