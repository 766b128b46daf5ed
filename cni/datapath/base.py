"""What a datapath mode is: the ``Datapath`` protocol the agent drives, the one place a
``PodSpec`` is validated, and ``KernelDatapath``, the host work every kernel mode shares
(forwarding sysctl, SNAT, ENI links and their route tables).

A mode is one module holding a class that follows the protocol, plus one line in
``cni.datapath.registry``. The agent's ``datapath`` setting names the mode; nothing else
(no netconf key) selects it.

    prepare_host(snat)     once at start, in the node's namespace
    ensure_eni(eni)        an attached ENI's link: found by MAC, up, its route table owned
    setup(pod) -> WiredPod wire one pod, all-or-nothing
    teardown(pod)          idempotent; a missing netns, link, route or rule is fine
    check(pod) -> [str]    what is missing or wrong, [] when the pod is wired
    result_shape(eni)      how the CNI result describes a pod of this mode
    addresses_routed_elsewhere()  addresses the node routes to another plugin's pods
    shutdown()             at agent stop; pods keep their wiring

A mode is built with ``record_path``: where to note what it changes on the node, so that
``underlay-install uninstall`` can put it back (``cni.datapath.hostrecord``; None: nowhere).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from typing import Protocol

from cni.datapath import LINK_LOCAL_GW, DatapathError, EniLink, PodSpec, SnatConfig, WiredPod
from cni.datapath.eni import validate_eni

logger = logging.getLogger(__name__)

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")


@dataclass(frozen=True)
class ResultShape:
    """How the CNI result describes a pod: its address's prefix length, its gateway, and
    whether the host end of its link is reported as an interface."""

    prefix_len: int
    gateway: str
    host_interface: bool


class Datapath(Protocol):
    name: str

    def prepare_host(self, snat: SnatConfig | None) -> None: ...
    def ensure_eni(self, eni: EniLink) -> None: ...
    def setup(self, pod: PodSpec) -> WiredPod | None: ...
    def teardown(self, pod: PodSpec) -> None: ...
    def check(self, pod: PodSpec) -> list[str]: ...
    def result_shape(self, eni: EniLink) -> ResultShape: ...
    def addresses_routed_elsewhere(self) -> set[str]: ...
    def shutdown(self) -> None: ...


def validate_pod(pod: PodSpec) -> None:
    """Refuse a malformed PodSpec before anything changes; the message names the field."""
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
    validate_eni(pod.eni)


class KernelDatapath:
    """The host side every kernel mode needs; a mode adds setup/teardown/check."""

    name = "kernel"

    def __init__(self, record_path: str | None = None) -> None:
        from cni.datapath.hostrecord import HostRecord

        self.record = HostRecord(record_path)  # what we change on the node, for uninstall

    def prepare_host(self, snat: SnatConfig | None) -> None:
        from cni.datapath.eni import ensure_host_sysctls
        from cni.datapath.snat import ensure_snat

        ensure_host_sysctls(self.record)
        if snat is not None:
            if snat.enabled:
                self.record.note_snat()
            ensure_snat(snat)  # enabled=False removes ours

    def ensure_eni(self, eni: EniLink) -> None:
        from cni.datapath.eni import ensure_eni

        name = ensure_eni(eni, record=self.record)
        logger.info("ENI %s (device %d) is link %s", eni.mac, eni.device_index, name)

    def addresses_routed_elsewhere(self) -> set[str]:
        from cni.datapath.eni import list_foreign_pod_addresses

        return set(list_foreign_pod_addresses())

    def result_shape(self, eni: EniLink) -> ResultShape:
        """Routed modes: a /32 behind the link-local gateway, host end reported."""
        return ResultShape(32, LINK_LOCAL_GW, True)

    def shutdown(self) -> None:
        return None


class NoDatapath:
    """``datapath: none``: IPAM only. Nothing is wired; CHECK verifies the allocation
    alone (the agent may then run in the root namespace, as in tests)."""

    name = "none"

    def __init__(self, record_path: str | None = None) -> None:
        return None  # changes nothing on the node: nothing to record

    def prepare_host(self, snat: SnatConfig | None) -> None:
        logger.info("datapath none: IPAM only, no host changes")

    def ensure_eni(self, eni: EniLink) -> None:
        return None

    def setup(self, pod: PodSpec) -> WiredPod | None:
        return None

    def teardown(self, pod: PodSpec) -> None:
        return None

    def check(self, pod: PodSpec) -> list[str]:
        return []

    def result_shape(self, eni: EniLink) -> ResultShape:
        return ResultShape(32, LINK_LOCAL_GW, False)

    def addresses_routed_elsewhere(self) -> set[str]:
        return set()

    def shutdown(self) -> None:
        return None
