"""ipvlan L2 mode: the pod gets an ipvlan slave of its ENI's link, no veth, no host routing.

Runs in the node's network namespace (the agent lives there): every function acts on the
namespace of the calling thread, and reaches the pod's namespace through ``open_netns``.

Per pod:
- pod side: ``pod.ifname``, an ipvlan L2 slave of the ENI link (it shares the ENI's MAC),
  created straight inside the pod's namespace, with ``<podIP>/<subnet prefix>`` and
  ``default via <subnet gateway>``. Pod-to-pod on the same ENI is switched by the ipvlan
  driver by destination IP; everything else leaves through the ENI towards the gateway.
- host side: ipvlan slaves cannot talk to their master, so the node reaches its pods
  through one host-side slave per ENI, ``ipvl<device index>``, created idempotently,
  NOARP, holding the node's own source address as a ``/32`` of host scope, with
  ``<podIP>/32 dev ipvl<N>`` per pod. The pod gets ``<node IP>/32 dev <ifname> scope link``
  and a permanent neighbour for it, so replies to the node stay inside the ipvlan switch.
  (The same shape as Terway's ipvlan mode; the node IP is the source the kernel picks for
  the pod's /32 route.)

Setup is all-or-nothing (undo steps on an ExitStack); teardown is idempotent and tolerates
a missing namespace, link or route; the host slave stays until ``remove_host_slave``.
"""
from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import os
from typing import Any

from cni.datapath import DatapathError, EniLink, NetnsMissing, PodSpec, WiredPod
from cni.datapath.base import KernelDatapath, ResultShape
from cni.datapath.eni import find_link_by_mac, validate_eni, write_sysctl
from cni.datapath.netns import open_netns

logger = logging.getLogger(__name__)

HOST_SLAVE_PREFIX = "ipvl"
IPVLAN_MODE_L2 = 0
SCOPE_LINK = 253
SCOPE_HOST = 254
NUD_PERMANENT = 0x80
IFF_NOARP = 0x80
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)


def host_slave_name(eni: EniLink) -> str:
    return f"{HOST_SLAVE_PREFIX}{eni.device_index}"


def validate_pod(pod: PodSpec) -> ipaddress.IPv4Interface:
    """Reject a malformed PodSpec before touching anything; returns ``podIP/prefix``."""
    validate_eni(pod.eni)
    subnet = ipaddress.IPv4Network(pod.eni.subnet_cidr)
    try:
        ip = ipaddress.IPv4Address(pod.pod_ip)
    except ValueError:
        raise DatapathError(f"pod_ip {pod.pod_ip!r} is not an IPv4 address") from None
    if ip not in subnet:
        raise DatapathError(f"pod_ip {ip} is outside the ENI subnet {subnet}")
    if ip in (subnet.network_address, subnet.broadcast_address,
              ipaddress.IPv4Address(pod.eni.gateway)):
        raise DatapathError(f"pod_ip {ip} is the network, broadcast or gateway address "
                            f"of {subnet}")
    if not pod.ifname or len(pod.ifname) > 15 or any(c in pod.ifname for c in "/ \t\n:"):
        raise DatapathError(f"ifname {pod.ifname!r} is not a valid interface name")
    if not isinstance(pod.mtu, int) or not 576 <= pod.mtu <= pod.eni.mtu:
        raise DatapathError(f"mtu {pod.mtu!r} out of range 576..{pod.eni.mtu} "
                            "(an ipvlan slave cannot exceed its ENI's MTU)")
    return ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}")


def _eni_index(ipr: Any, eni: EniLink) -> int:
    link = find_link_by_mac(ipr, eni.mac)
    if link is None:
        raise DatapathError(f"no link with the ENI's MAC {eni.mac} on this node")
    return link["index"]


def _lookup(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def ensure_host_slave(ipr: Any, eni: EniLink, eni_index: int) -> int:
    """The node's ipvlan slave of the ENI (created once, up, NOARP); returns its index."""
    from pyroute2.netlink.exceptions import NetlinkError

    name = host_slave_name(eni)
    index = _lookup(ipr, name)
    if index is not None:
        link = ipr.get_links(index)[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "ipvlan" or link.get_attr("IFLA_LINK") != eni_index:
            raise DatapathError(f"link {name} exists but is not an ipvlan slave of the ENI "
                                f"{eni.mac}")
    else:
        try:
            ipr.link("add", ifname=name, kind="ipvlan", link=eni_index,
                     ipvlan_mode=IPVLAN_MODE_L2, mtu=eni.mtu)
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:  # EEXIST: a concurrent setup made it first
                raise
        index = _lookup(ipr, name)
        if index is None:
            raise DatapathError(f"host ipvlan slave {name} vanished right after creation")
        logger.info("created host ipvlan slave %s on ENI %s", name, eni.mac)
    link = ipr.get_links(index)[0]
    if not link["flags"] & IFF_NOARP:
        ipr.link("set", index=index, arp=False)
    ipr.link("set", index=index, state="up")
    # Replies from pods to the node enter through this slave while the node's routes to
    # other senders point elsewhere: a strict reverse-path check would drop them.
    write_sysctl(f"net.ipv4.conf.{name}.rp_filter", "2")
    return index


def _node_source_ip(ipr: Any, pod_ip: str) -> str:
    """The address the node uses to reach ``pod_ip`` (its /32 route must exist)."""
    answer = ipr.route("get", dst=pod_ip)
    source = answer[0].get_attr("RTA_PREFSRC") if answer else None
    if not source:
        raise DatapathError(f"the node has no IPv4 address to reach pod {pod_ip} from")
    return source


def _ignore_gone(call: Any, *args: Any, **kwargs: Any) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code not in _GONE:
            raise


def _add_node_address(ipr: Any, host_index: int, node_ip: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.addr("add", index=host_index, address=node_ip, prefixlen=32, scope=SCOPE_HOST)
    except NetlinkError as exc:
        if exc.code != errno.EEXIST:
            raise


def _create_pod_slave(ipr: Any, ns: Any, pod: PodSpec, eni_index: int) -> int:
    """Create the slave right inside the pod's namespace; returns its index there.

    It is created under a temporary name unique to the pod and renamed inside: kernel 6.1
    refuses to create an ipvlan link in another namespace under a name that exists in the
    caller's (the node has its own eth0)."""
    temporary = pod.host_ifname
    fd = os.open(pod.netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ipr.link("add", ifname=temporary, kind="ipvlan", link=eni_index,
                 ipvlan_mode=IPVLAN_MODE_L2, mtu=pod.mtu, net_ns_fd=fd)
    finally:
        os.close(fd)
    index = _lookup(ns, temporary)
    if index is None:
        raise DatapathError(f"ipvlan slave {temporary} did not appear in {pod.netns}")
    return index


def _wire_pod_side(ns: Any, pod: PodSpec, index: int, address: ipaddress.IPv4Interface,
                   node_ip: str) -> str:
    ns.link("set", index=index, ifname=pod.ifname)
    mac = ns.get_links(index)[0].get_attr("IFLA_ADDRESS")
    ns.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
    ns.link("set", index=index, state="up")
    metric = pod.route_metric(index)  # a second attachment's routes go beside the first's
    ns.route("add", dst=f"{node_ip}/32", oif=index, scope=SCOPE_LINK, priority=metric)
    ns.neigh("replace", dst=node_ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT)
    ns.route("add", dst="0.0.0.0/0", gateway=pod.eni.gateway, oif=index, priority=metric)
    return mac


def setup_pod_ipvlan(pod: PodSpec) -> WiredPod:
    """Wire one pod in ipvlan L2 mode; on any failure nothing of it is left behind."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    address = validate_pod(pod)
    pod_route = f"{address.ip}/32"
    step = "finding the ENI link"
    with contextlib.ExitStack() as handles:
        ipr = handles.enter_context(IPRoute())
        ns = handles.enter_context(open_netns(pod.netns))
        try:
            with contextlib.ExitStack() as undo:
                eni_index = _eni_index(ipr, pod.eni)
                step = "preparing the host ipvlan slave"
                host_index = ensure_host_slave(ipr, pod.eni, eni_index)
                if _lookup(ns, pod.ifname) is not None:
                    raise DatapathError(f"{pod.ifname} already exists in {pod.netns}")
                step = f"creating {pod.ifname} in {pod.netns}"
                pod_index = _create_pod_slave(ipr, ns, pod, eni_index)
                undo.callback(_ignore_gone, ns.link, "del", index=pod_index)
                step = f"adding the host route {pod_route}"
                # a route already there is not ours to undo (another pod's, or a leftover)
                existing = _routes_to(ipr, str(address.ip), 32)
                if any(r.get_attr("RTA_OIF") != host_index for r in existing):
                    raise DatapathError(f"the node already routes {pod_route} elsewhere "
                                        "(another pod, or a veth-mode leftover)")
                if not existing:
                    ipr.route("add", dst=pod_route, oif=host_index, scope=SCOPE_LINK)
                    undo.callback(_ignore_gone, ipr.route, "del", dst=pod_route,
                                  oif=host_index, scope=SCOPE_LINK)
                node_ip = _node_source_ip(ipr, str(address.ip))
                _add_node_address(ipr, host_index, node_ip)
                step = f"configuring {pod.ifname} in {pod.netns}"
                mac = _wire_pod_side(ns, pod, pod_index, address, node_ip)
                undo.pop_all()
        except NetlinkError as exc:
            raise DatapathError(f"ipvlan setup of {pod.container_id}/{pod.ifname} failed "
                                f"while {step}: {exc}") from None
    logger.info("wired pod %s/%s (%s) in ipvlan mode: %s on ENI %s", pod.pod_namespace,
                pod.pod_name, pod.container_id, address, pod.eni.mac)
    return WiredPod(host_ifname=host_slave_name(pod.eni), pod_mac=mac, pod_ifindex=pod_index)


def _delete_pod_link(ns: Any, ifname: str) -> None:
    index = _lookup(ns, ifname)
    if index is None:
        return
    link = ns.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "ipvlan":
        # not ours (wired in another mode, or the runtime's): leave it, and let DEL succeed
        logger.warning("%s in the pod is not an ipvlan link; leaving it alone", ifname)
        return
    _ignore_gone(ns.link, "del", index=index)


def teardown_pod_ipvlan(pod: PodSpec) -> None:
    """Remove the pod's slave and host route; a missing netns, link or route is fine."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        pod_route = f"{ipaddress.IPv4Address(pod.pod_ip)}/32"
    except ValueError:
        raise DatapathError(f"pod_ip {pod.pod_ip!r} is not an IPv4 address") from None
    try:
        with IPRoute() as ipr:
            host_index = _lookup(ipr, host_slave_name(pod.eni))
            if host_index is not None:
                _ignore_gone(ipr.route, "del", dst=pod_route, oif=host_index, scope=SCOPE_LINK)
        if pod.netns:
            try:
                with open_netns(pod.netns) as ns:
                    _delete_pod_link(ns, pod.ifname)
            except NetnsMissing:
                logger.info("netns %s of %s is gone already", pod.netns, pod.container_id)
    except NetlinkError as exc:
        raise DatapathError(f"ipvlan teardown of {pod.container_id}/{pod.ifname} failed: "
                            f"{exc}") from None
    logger.info("tore down ipvlan pod %s/%s (%s)", pod.pod_namespace, pod.pod_name,
                pod.container_id)


def remove_host_slave(eni: EniLink) -> None:
    """Delete the node's ipvlan slave of ``eni`` (when the ENI goes); idempotent."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        index = _lookup(ipr, host_slave_name(eni))
        if index is not None:
            _ignore_gone(ipr.link, "del", index=index)


def _routes_to(handle: Any, dst: str, dst_len: int) -> list[Any]:
    return [r for r in handle.get_routes(family=2, table=254)
            if (r.get_attr("RTA_DST") or "0.0.0.0") == dst and r["dst_len"] == dst_len]


def _check_host_side(ipr: Any, pod: PodSpec, pod_ip: str) -> tuple[int | None, str | None,
                                                                   list[str]]:
    problems = []
    link = find_link_by_mac(ipr, pod.eni.mac)
    eni_index = link["index"] if link is not None else None
    if eni_index is None:
        problems.append(f"no link with the ENI's MAC {pod.eni.mac} on the node")
    name = host_slave_name(pod.eni)
    host_index = _lookup(ipr, name)
    node_ip = None
    if host_index is None:
        problems.append(f"host ipvlan slave {name} is missing")
        return eni_index, node_ip, problems
    if not ipr.get_links(host_index)[0]["flags"] & 1:
        problems.append(f"host ipvlan slave {name} is down")
    if not any(r.get_attr("RTA_OIF") == host_index for r in _routes_to(ipr, pod_ip, 32)):
        problems.append(f"host route {pod_ip}/32 dev {name} is missing")
    for addr in ipr.get_addr(family=2, index=host_index):
        if addr["prefixlen"] == 32:
            node_ip = addr.get_attr("IFA_ADDRESS")
    if node_ip is None:
        problems.append(f"host ipvlan slave {name} has no node address")
    return eni_index, node_ip, problems


def _check_pod_side(ns: Any, pod: PodSpec, address: ipaddress.IPv4Interface,
                    eni_index: int | None, node_ip: str | None) -> list[str]:
    where = f"in {pod.netns}"
    index = _lookup(ns, pod.ifname)
    if index is None:
        return [f"{pod.ifname} is missing {where}"]
    problems = []
    link = ns.get_links(index)[0]
    info = link.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "ipvlan":
        problems.append(f"{pod.ifname} {where} is not an ipvlan link")
    elif eni_index is not None and link.get_attr("IFLA_LINK") != eni_index:
        problems.append(f"{pod.ifname} {where} is not a slave of the ENI {pod.eni.mac}")
    if not link["flags"] & 1:
        problems.append(f"{pod.ifname} {where} is down")
    if link.get_attr("IFLA_MTU") != pod.mtu:
        problems.append(f"{pod.ifname} {where} has MTU {link.get_attr('IFLA_MTU')}, "
                        f"want {pod.mtu}")
    have = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
            for a in ns.get_addr(family=2, index=index)}
    if (str(address.ip), address.network.prefixlen) not in have:
        problems.append(f"address {address} is missing on {pod.ifname} {where}")
    if not any(r.get_attr("RTA_GATEWAY") == pod.eni.gateway and r.get_attr("RTA_OIF") == index
               for r in _routes_to(ns, "0.0.0.0", 0)):
        problems.append(f"route default via {pod.eni.gateway} dev {pod.ifname} is missing "
                        f"{where}")
    if node_ip is not None and not any(r.get_attr("RTA_OIF") == index
                                       for r in _routes_to(ns, node_ip, 32)):
        problems.append(f"route {node_ip}/32 dev {pod.ifname} (to the node) is missing {where}")
    return problems


def check_pod_ipvlan(pod: PodSpec) -> list[str]:
    """What is missing or wrong in the pod's ipvlan wiring; [] when all is in place."""
    from pyroute2 import IPRoute

    address = validate_pod(pod)
    with IPRoute() as ipr:
        eni_index, node_ip, problems = _check_host_side(ipr, pod, str(address.ip))
    try:
        with open_netns(pod.netns) as ns:
            problems += _check_pod_side(ns, pod, address, eni_index, node_ip)
    except NetnsMissing:
        problems.append(f"network namespace {pod.netns} does not exist")
    return problems


class IpvlanDatapath(KernelDatapath):
    """ipvlan L2 mode (the module's functions): the pod holds its address with the
    subnet's prefix behind the subnet gateway, and no host end is reported."""

    name = "ipvlan"

    def setup(self, pod: PodSpec) -> WiredPod:
        return setup_pod_ipvlan(pod)

    def teardown(self, pod: PodSpec) -> None:
        teardown_pod_ipvlan(pod)

    def check(self, pod: PodSpec) -> list[str]:
        return check_pod_ipvlan(pod)

    def result_shape(self, eni: EniLink) -> ResultShape:
        return ResultShape(ipaddress.IPv4Network(eni.subnet_cidr).prefixlen, eni.gateway,
                           False)
