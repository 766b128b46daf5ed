"""The pod datapath, run by the agent (never by the CNI executable): ENI links found by
MAC, veth or ipvlan wiring of pods with policy routing, host sysctls and SNAT.

This module holds the types; a mode is a ``cni.datapath.base.Datapath``, picked by name
from ``cni.datapath.registry`` (veth, ipvlan, none). Importing the types loads no pyroute2.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass


class DatapathError(Exception):
    """Wiring failed; the message names the step and the object."""


class NetnsMissing(DatapathError):
    """The pod's network namespace does not exist."""


LINK_LOCAL_GW = "169.254.1.1"
# The interface the kubelet asks for: its routes are the pod's main ones (metric 0). Other
# attachments of the same pod (net1, ...) get theirs at a higher metric, beside it.
PRIMARY_IFNAME = "eth0"
SECONDARY_METRIC_BASE = 100
RULE_PRIO_TO_POD = 512
RULE_PRIO_FROM_POD = 1536
HOST_VETH_PREFIX = "ulay"


@dataclass(frozen=True)
class EniLink:
    """What the datapath needs to know of one attached ENI."""

    mac: str
    device_index: int
    subnet_cidr: str
    gateway: str
    mtu: int = 9001

    @property
    def table(self) -> int:
        """Route table of the ENI: device index + 1, as AWS VPC CNI does."""
        return self.device_index + 1


@dataclass(frozen=True)
class PodSpec:
    container_id: str
    ifname: str
    netns: str  # path, e.g. /var/run/netns/x or /proc/<pid>/ns/net
    pod_ip: str
    eni: EniLink
    mtu: int = 9001
    pod_namespace: str = ""
    pod_name: str = ""
    # False in vpc-route mode: the pod's traffic follows the main table (no rules, no ENI
    # table); ``eni`` then only names the node's primary ENI
    policy_routing: bool = True

    @property
    def host_ifname(self) -> str:
        """4-char prefix + 11 hex chars of sha1 of the attachment (container id and
        interface): 15 chars. Per attachment, not per pod: a pod's second interface gets a
        host end of its own, and a new sandbox of the same pod never meets the old one's."""
        key = f"{self.container_id}.{self.ifname}"
        return HOST_VETH_PREFIX + hashlib.sha1(key.encode()).hexdigest()[:11]

    def route_metric(self, pod_ifindex: int) -> int:
        """The metric of the pod's routes through this interface: 0 for the primary one,
        above it (and distinct per interface) for the others."""
        if self.ifname == PRIMARY_IFNAME:
            return 0
        return SECONDARY_METRIC_BASE + pod_ifindex


@dataclass(frozen=True)
class WiredPod:
    host_ifname: str
    pod_mac: str
    pod_ifindex: int
    host_mac: str = ""  # the host end's, when the mode creates one (veth)


@dataclass(frozen=True)
class SnatConfig:
    primary_ip: str
    vpc_cidrs: tuple[str, ...]
    excluded_cidrs: tuple[str, ...] = ()
    enabled: bool = True
