"""The pod entry points of the contract, dispatching on ``pod.mode``, and the one place a
PodSpec is validated (before anything changes, with a message naming the field).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re

from cni.datapath import DatapathError, Mode, PodSpec, WiredPod
from cni.datapath.eni import validate_eni

logger = logging.getLogger(__name__)

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


def validate_pod(pod: PodSpec) -> None:
    try:
        ip = ipaddress.IPv4Address(pod.pod_ip)
    except ValueError:
        raise DatapathError(f"pod_ip {pod.pod_ip!r} is not an IPv4 address") from None
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        raise DatapathError(f"pod_ip {pod.pod_ip} cannot be given to a pod")
    if not isinstance(pod.ifname, str) or not _IFNAME.match(pod.ifname) \
            or pod.ifname in (".", ".."):
        raise DatapathError(f"ifname {pod.ifname!r} is not a valid interface name "
                            "(1-15 characters of letters, digits, '_', '-', '.')")
    if not isinstance(pod.netns, str) or not os.path.isabs(pod.netns):
        raise DatapathError(f"netns {pod.netns!r} is not an absolute path")
    if not isinstance(pod.mtu, int) or not 576 <= pod.mtu <= 9001:
        raise DatapathError(f"mtu {pod.mtu!r} out of range 576..9001")
    if not isinstance(pod.container_id, str) or not pod.container_id:
        raise DatapathError("container_id is empty")
    try:
        Mode(pod.mode)
    except ValueError:
        raise DatapathError(f"mode {pod.mode!r} is unknown (veth or ipvlan)") from None
    validate_eni(pod.eni)


def setup_pod(pod: PodSpec, reaper=None) -> WiredPod:
    """``reaper``: a ``veth.LinkReaper`` that teardown hands host links to (veth mode)."""
    validate_pod(pod)
    if Mode(pod.mode) is Mode.IPVLAN:
        from cni.datapath import ipvlan

        return ipvlan.setup_pod_ipvlan(pod)
    from cni.datapath import veth

    return veth.setup_pod(pod, reaper)


def teardown_pod(pod: PodSpec, reaper=None) -> None:
    validate_pod(pod)
    if Mode(pod.mode) is Mode.IPVLAN:
        from cni.datapath import ipvlan

        ipvlan.teardown_pod_ipvlan(pod)
        return
    from cni.datapath import veth

    veth.teardown_pod(pod, reaper)


def check_pod(pod: PodSpec) -> list[str]:
    validate_pod(pod)
    if Mode(pod.mode) is Mode.IPVLAN:
        from cni.datapath import ipvlan

        return ipvlan.check_pod_ipvlan(pod)
    from cni.datapath import veth

    return veth.check_pod(pod)
