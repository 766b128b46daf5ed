"""veth mode: one veth pair per pod, policy routing on the node (DESIGN.md "Datapath").

Runs in the node's namespace (the calling thread's); the pod's namespace is given by path.

pod side                                   node side
  <ifname>  <podIP>/32                       <host veth>  up, no address
  169.254.1.1 dev <ifname> scope link        <podIP>/32 dev <host veth> scope link
  default via 169.254.1.1                    rule to <podIP> lookup main        prio 512
  neigh 169.254.1.1 -> host veth MAC         rule from <podIP> lookup <ENI>     prio 1536
  (permanent: no ARP, no proxy_arp)          table <ENI>: default via <gw> dev <ENI link>

The peer is created directly inside the pod namespace under its final name (the kernel
allows naming a veth peer in its target namespace), which is the same end state as
create-move-rename with one step fewer and no temporary name to collide on.

setup_pod is all-or-nothing: each step registers its undo on an ExitStack as soon as it
succeeded; the stack is kept (pop_all) only when every step did.
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from cni.datapath import (LINK_LOCAL_GW, RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD,
                          DatapathError, NetnsMissing, PodSpec, WiredPod)
from cni.datapath.netns import open_netns
from cni.datapath.pods import validate_pod
from cni.datapath.rules import (MAIN_TABLE, NUD_PERMANENT, SCOPE_LINK, Rule, add_rule,
                                delete_rule, find_host_route_oif, find_link_index, get_link,
                                ignore_gone, naming_step, rules_for_ip)

logger = logging.getLogger(__name__)

POD_PRIORITIES = (RULE_PRIO_TO_POD, RULE_PRIO_FROM_POD)


def pod_rules(pod: PodSpec) -> tuple[Rule, ...]:
    if not pod.policy_routing:
        return ()  # vpc-route mode: the main table routes the pod both ways
    return (Rule(priority=RULE_PRIO_TO_POD, table=MAIN_TABLE, dst=pod.pod_ip),
            Rule(priority=RULE_PRIO_FROM_POD, table=pod.eni.table, src=pod.pod_ip))


def _open_netns_fd(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsMissing(f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise DatapathError(f"cannot open network namespace {path}: {exc.strerror}") from None


def _remove_stale_host_veth(host: Any, pod: PodSpec) -> None:
    """A veth with our name left by an earlier sandbox of the same pod would block us."""
    index = find_link_index(host, pod.host_ifname)
    if index is not None:
        logger.info("removing stale host veth %s before wiring %s", pod.host_ifname,
                    pod.container_id)
        with naming_step(f"removing stale host veth {pod.host_ifname}"):
            host.link("del", index=index)


def _create_veth(host: Any, pod: PodSpec, undo: contextlib.ExitStack) -> int:
    nsfd = _open_netns_fd(pod.netns)
    try:
        with naming_step(f"creating veth {pod.host_ifname} <-> {pod.ifname} in {pod.netns}"):
            host.link("add", ifname=pod.host_ifname, kind="veth", mtu=pod.mtu,
                      peer={"ifname": pod.ifname, "net_ns_fd": nsfd, "mtu": pod.mtu})
    finally:
        os.close(nsfd)
    index = find_link_index(host, pod.host_ifname)
    if index is None:
        raise DatapathError(f"host veth {pod.host_ifname} vanished right after creation")
    # deleting the host end deletes the pod end (and every route on either) with it
    undo.callback(ignore_gone, lambda: host.link("del", index=index),
                  f"rollback: deleting veth {pod.host_ifname}")
    return index


def _wire_pod_side(pod: PodSpec, host_mac: str) -> tuple[str, int]:
    with open_netns(pod.netns) as ns:
        found = ns.link_lookup(ifname=pod.ifname)
        if not found:
            raise DatapathError(f"pod interface {pod.ifname} missing in {pod.netns} "
                                "right after creating it")
        idx = found[0]
        with naming_step(f"bringing up pod {pod.ifname}"):
            ns.link("set", index=idx, state="up")
        with naming_step(f"adding {pod.pod_ip}/32 to pod {pod.ifname}"):
            ns.addr("add", index=idx, address=pod.pod_ip, prefixlen=32)
        with naming_step(f"adding route {LINK_LOCAL_GW} dev {pod.ifname} scope link in pod"):
            ns.route("add", dst=f"{LINK_LOCAL_GW}/32", oif=idx, scope=SCOPE_LINK)
        with naming_step(f"adding default via {LINK_LOCAL_GW} in pod"):
            ns.route("add", dst="0.0.0.0/0", gateway=LINK_LOCAL_GW, oif=idx)
        with naming_step(f"adding neighbour {LINK_LOCAL_GW} -> {host_mac} in pod"):
            ns.neigh("add", dst=LINK_LOCAL_GW, lladdr=host_mac, ifindex=idx,
                     state=NUD_PERMANENT)
        mac = ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    return mac, idx


def setup_pod(pod: PodSpec) -> WiredPod:
    """Wire one pod in veth mode; on any failure nothing of it is left behind."""
    from pyroute2 import IPRoute

    validate_pod(pod)
    # outermost: a netlink error no step anticipated still arrives as a DatapathError,
    # after the rollback below has run
    with naming_step(f"wiring {pod.pod_ip} for {pod.container_id}"), \
            IPRoute() as host, contextlib.ExitStack() as undo:
        _remove_stale_host_veth(host, pod)
        index = _create_veth(host, pod, undo)
        with naming_step(f"bringing up host veth {pod.host_ifname}"):
            host.link("set", index=index, state="up")
        host_mac = host.get_links(index)[0].get_attr("IFLA_ADDRESS")
        pod_mac, pod_index = _wire_pod_side(pod, host_mac)
        # EEXIST here means another live interface already carries this IP: two pods
        # holding one address. Fail (and roll back) rather than steal its traffic.
        with naming_step(f"adding host route {pod.pod_ip}/32 dev {pod.host_ifname} "
                         "(is the IP already wired to another pod?)"):
            host.route("add", dst=f"{pod.pod_ip}/32", oif=index, scope=SCOPE_LINK,
                       table=MAIN_TABLE)
        undo.callback(ignore_gone, lambda: host.route(
            "del", dst=f"{pod.pod_ip}/32", oif=index, table=MAIN_TABLE),
            f"rollback: deleting route {pod.pod_ip}/32")
        # The route went in, so no live pod holds this IP: rules still naming it are
        # leftovers of a pod whose teardown never ran.
        for stale in rules_for_ip(host, pod.pod_ip, POD_PRIORITIES):
            logger.info("removing stale %s", stale.describe())
            delete_rule(host, stale)
        for rule in pod_rules(pod):
            add_rule(host, rule)
            undo.callback(delete_rule, host, rule)
        undo.pop_all()
    logger.info("wired pod %s/%s (%s) %s on %s, table %d", pod.pod_namespace, pod.pod_name,
                pod.container_id, pod.pod_ip, pod.host_ifname, pod.eni.table)
    return WiredPod(host_ifname=pod.host_ifname, pod_mac=pod_mac, pod_ifindex=pod_index)


def _peer_in_pod_netns(pod: PodSpec, host_index: int, host_link: Any) -> bool:
    """True when the host veth's peer is pod.ifname inside pod.netns (mutual indexes)."""
    try:
        with open_netns(pod.netns) as ns:
            found = ns.link_lookup(ifname=pod.ifname)
            if not found:
                return False
            peer = ns.get_links(found[0])[0]
            return (peer.get_attr("IFLA_LINK") == host_index
                    and host_link.get_attr("IFLA_LINK") == found[0])
    except DatapathError:
        return False


def teardown_pod(pod: PodSpec) -> None:
    """Undo setup_pod. Idempotent: a missing netns, veth, route or rule is fine.

    The host veth is deleted only when it is provably this pod's (it carries the pod's
    host route, or its peer is the pod's interface): a stale DEL for an earlier sandbox
    of the same pod must not cut the new one. Rules are matched by the pod IP, and left
    alone when the IP is routed to some other live link (the IP has a new owner).
    """
    from pyroute2 import IPRoute

    validate_pod(pod)
    with naming_step(f"tearing down {pod.pod_ip} of {pod.container_id}"), IPRoute() as host:
        index = named = find_link_index(host, pod.host_ifname)
        route_oif = find_host_route_oif(host, pod.pod_ip)
        link = get_link(host, index) if index is not None else None
        if link is None:
            index = None  # gone, or going with its dying netns
        else:
            if route_oif == index or _peer_in_pod_netns(pod, index, link):
                ignore_gone(lambda: host.link("del", index=index),
                            f"deleting host veth {pod.host_ifname}")
            else:
                logger.warning("host veth %s is not wired to %s in %s; left in place",
                               pod.host_ifname, pod.pod_ip, pod.netns)
        # a route on our own veth, or on a link already gone (a dying netns takes its veth
        # and then the route with it), is no new owner: only a live other link is
        if (route_oif is not None and route_oif != named
                and get_link(host, route_oif) is not None):
            logger.warning("%s is routed to another link (index %d); its rules are left",
                           pod.pod_ip, route_oif)
            return
        for rule in rules_for_ip(host, pod.pod_ip, POD_PRIORITIES):
            delete_rule(host, rule)
    logger.info("tore down pod %s/%s (%s) %s", pod.pod_namespace, pod.pod_name,
                pod.container_id, pod.pod_ip)


def check_pod(pod: PodSpec) -> list[str]:
    from cni.datapath.vethcheck import check_veth_pod

    return check_veth_pod(pod)
