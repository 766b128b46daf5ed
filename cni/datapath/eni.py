"""ENI links and the host sysctls the datapath needs.

Runs in the node's network namespace (the agent lives there): every function acts on the
namespace of the calling thread.

- ``ensure_eni(eni)``: find the link carrying the ENI's MAC (waiting a bounded time: an
  attach takes seconds before the device shows up), set its MTU, bring it up, make its
  reverse-path filter loose, and own its route table ``eni.table``: exactly
  ``<subnet> dev <link> scope link`` and ``default via <gateway> dev <link>``, nothing else.
  Idempotent: routes are replaced, never duplicated, and strays in the table are removed.
- ``ensure_host_sysctls()``: forwarding on.
"""
from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any

from cni.datapath import DatapathError, EniLink
from cni.datapath.hostrecord import HostRecord

logger = logging.getLogger(__name__)

MAIN_TABLE = 254
SCOPE_LINK = 253
IFF_UP = 0x1
DEFAULT_LINK_WAIT = 15.0  # seconds; AWS documents up to ~10 s until an attached ENI is usable
_POLL = 0.1


def normalise_mac(mac: str) -> str:
    parts = mac.strip().lower().replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p)
                                  for p in parts):
        raise DatapathError(f"ENI MAC {mac!r} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")
    return ":".join(parts)


def find_link_by_mac(ipr: Any, mac: str) -> dict | None:
    """The link whose hardware address is ``mac`` in ``ipr``'s namespace, or None.

    Only real devices count: a VLAN or macvlan on top of the ENI may share its MAC, so a
    link with IFLA_LINK pointing elsewhere (a stacked device) is skipped.
    """
    wanted = normalise_mac(mac)
    for link in ipr.get_links():
        if (link.get_attr("IFLA_ADDRESS") or "").lower() != wanted:
            continue
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind in ("vlan", "macvlan", "ipvlan", "bridge"):
            continue
        return link
    return None


def validate_eni(eni: EniLink) -> None:
    """Reject a malformed EniLink before touching anything; the message names the field."""
    normalise_mac(eni.mac)
    if not isinstance(eni.device_index, int) or not 0 <= eni.device_index < 250:
        raise DatapathError(f"ENI device_index {eni.device_index!r} out of range 0..249")
    try:
        subnet = ipaddress.IPv4Network(eni.subnet_cidr, strict=True)
    except ValueError as exc:
        raise DatapathError(f"ENI subnet_cidr {eni.subnet_cidr!r} is invalid: {exc}") from None
    try:
        gateway = ipaddress.IPv4Address(eni.gateway)
    except ValueError:
        raise DatapathError(f"ENI gateway {eni.gateway!r} is not an IPv4 address") from None
    if gateway not in subnet:
        raise DatapathError(f"ENI gateway {eni.gateway} is outside its subnet {eni.subnet_cidr}")
    if not isinstance(eni.mtu, int) or not 576 <= eni.mtu <= 9001:
        raise DatapathError(f"ENI mtu {eni.mtu!r} out of range 576..9001")


def wait_for_link(ipr: Any, mac: str, timeout: float, stop: threading.Event | None) -> dict:
    deadline = time.monotonic() + timeout
    stop = stop or threading.Event()
    while True:
        link = find_link_by_mac(ipr, mac)
        if link is not None:
            return link
        if time.monotonic() >= deadline:
            raise DatapathError(f"no link with MAC {mac} appeared within {timeout:g} s "
                                "(ENI not attached to this node yet?)")
        if stop.wait(_POLL):
            raise DatapathError(f"stopped while waiting for the link with MAC {mac}")


def write_sysctl(name: str, value: str, record: HostRecord | None = None) -> None:
    """Write /proc/sys/<name> (dots as separators) in the calling thread's namespace; the
    value before is noted in ``record`` first (the uninstall restores it)."""
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path) as f:
            before = f.read().strip()
        if before == value:
            return
        if record is not None:
            record.note_sysctl(name, before)
        with open(path, "w") as f:
            f.write(value)
    except OSError as exc:
        raise DatapathError(f"cannot set sysctl {name}={value}: {exc.strerror}") from None
    logger.info("sysctl %s=%s", name, value)


def ensure_host_sysctls(record: HostRecord | None = None) -> None:
    # The node routes between pod veths and ENI links: without forwarding nothing leaves a pod.
    write_sysctl("net.ipv4.ip_forward", "1", record)
    # Per-ENI settings (rp_filter loose) are applied by ensure_eni because the ENI link
    # names are only known there. proxy_arp is deliberately NOT enabled: in veth mode each
    # pod has a permanent neighbour entry for 169.254.1.1 pointing at the host veth MAC, so
    # nobody ever ARPs for the gateway, and the host reaches pods by ordinary ARP for their
    # /32 on the veth.


def _replace_table_routes(ipr: Any, eni: EniLink, index: int) -> None:
    subnet = ipaddress.IPv4Network(eni.subnet_cidr)
    table = eni.table
    ipr.route("replace", dst=str(subnet), oif=index, scope=SCOPE_LINK, table=table)
    ipr.route("replace", dst="0.0.0.0/0", gateway=eni.gateway, oif=index, table=table)
    wanted = {(str(subnet.network_address), subnet.prefixlen, None, index),
              ("0.0.0.0", 0, eni.gateway, index)}
    # The table is ours: anything else in it (a previous ENI at this device index, a hand
    # edit) would misroute pods, so it goes.
    for route in ipr.get_routes(family=2, table=table):
        if route.get_attr("RTA_TABLE") != table:
            continue
        key = (route.get_attr("RTA_DST") or "0.0.0.0", route["dst_len"],
               route.get_attr("RTA_GATEWAY"), route.get_attr("RTA_OIF"))
        if key not in wanted:
            logger.info("removing stray route %s/%s from ENI table %d", key[0], key[1], table)
            spec = {"table": table, "dst": f"{key[0]}/{key[1]}", "scope": route["scope"],
                    "proto": route["proto"]}
            if key[2]:
                spec["gateway"] = key[2]
            if key[3]:
                spec["oif"] = key[3]
            ipr.route("del", **spec)


def ensure_eni(eni: EniLink, *, timeout: float = DEFAULT_LINK_WAIT,
               stop: threading.Event | None = None, record: HostRecord | None = None) -> str:
    """Bring the ENI's link up and own its route table; returns the link name. What it is
    about to change (link state and MTU, rp_filter, the table) is noted in ``record``."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    validate_eni(eni)
    with IPRoute() as ipr:
        link = wait_for_link(ipr, eni.mac, timeout, stop)
        index, name = link["index"], link.get_attr("IFLA_IFNAME")
        try:
            if record is not None:
                record.note_link(eni.mac, bool(link["flags"] & IFF_UP), link.get_attr("IFLA_MTU"))
                record.note_table(eni.table)
            if link.get_attr("IFLA_MTU") != eni.mtu:
                ipr.link("set", index=index, mtu=eni.mtu)
            ipr.link("set", index=index, state="up")
            # Loose reverse-path filtering on the ENI: replies to SNATed pod traffic enter
            # on the primary ENI but are for pods whose "from" rule points at another
            # ENI's table, so a strict check (which looks up the route back to the sender
            # as if the pod had sent it) would drop them. The kernel uses
            # max(conf.all, conf.<link>), so setting the link alone is enough.
            write_sysctl(f"net.ipv4.conf.{name}.rp_filter", "2", record)
            _replace_table_routes(ipr, eni, index)
        except NetlinkError as exc:
            raise DatapathError(f"configuring ENI link {name} ({eni.mac}, table {eni.table}) "
                                f"failed: {exc}") from None
    logger.info("ENI %s is link %s (mtu %d, table %d via %s)", eni.mac, name, eni.mtu,
                eni.table, eni.gateway)
    return name


def link_name_for_mac(mac: str) -> str | None:
    """Name of the link with ``mac`` in the calling thread's namespace, or None."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        link = find_link_by_mac(ipr, mac)
        return link.get_attr("IFLA_IFNAME") if link is not None else None


def list_foreign_pod_addresses() -> set[str]:
    """Addresses routed as /32 in the main table to a link that is not one of our pod
    veths: pods of another CNI plugin on this node (the AWS VPC CNI's ``eni*`` veths, the
    reference ptp plugin's ``veth*``), which keep running while a node moves to underlay."""
    from pyroute2 import IPRoute

    from cni.datapath import HOST_VETH_PREFIX
    from cni.datapath.veth import REAPED_PREFIX

    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") or "" for link in ipr.get_links()}
        return {route.get_attr("RTA_DST") for route in ipr.get_routes(family=2, table=MAIN_TABLE)
                if route.get_attr("RTA_TABLE") == MAIN_TABLE and route["dst_len"] == 32
                and route.get_attr("RTA_OIF") in names  # scope link (aws-cni) or host (ptp)
                and not names[route.get_attr("RTA_OIF")].startswith((HOST_VETH_PREFIX,
                                                                     REAPED_PREFIX))}
