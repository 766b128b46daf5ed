"""Making the store agree with what the cloud holds (who this node is in the cloud is
``ipam_daemon.cloud_node``).

``reconcile_enis`` runs before the agent serves and then periodically, always on the pool
loop's thread (the only thread that changes cloud state), so it never races a grow or a
shrink: what each attached ENI of ours really holds is written to the store in one
transaction. Our ENIs are the primary ENI and those tagged with our cluster; anything else
attached to the instance belongs to someone else and is left alone.
"""
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud.api import Cloud
from cloud.types import TAG_CLUSTER, Eni, Subnet, SubnetId
from cni.datapath import EniLink
from cni.datapath.base import Datapath

from ipam_daemon.cloud_node import CloudNode
from ipam_daemon.store import EniRecord, EniView, Store, prefix_addresses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    enis: int
    addresses: int
    adopted: tuple[str, ...] = ()
    lost: tuple[str, ...] = field(default=())
    prefixes: int = 0


class SubnetCache:
    """Subnet CIDRs never change; free-address counts are read fresh when a message needs
    them."""

    def __init__(self, cloud: Cloud) -> None:
        self._cloud = cloud
        self._cidrs: dict[str, str] = {}

    def cidr(self, subnet_id: str) -> str:
        if subnet_id not in self._cidrs:
            for subnet in self._cloud.describe_subnets([SubnetId(subnet_id)]):
                self._cidrs[subnet.id] = subnet.cidr
        return self._cidrs[subnet_id]

    def describe(self, subnet_ids: Sequence[str]) -> list[Subnet]:
        subnets = self._cloud.describe_subnets([SubnetId(s) for s in subnet_ids])
        for subnet in subnets:
            self._cidrs[subnet.id] = subnet.cidr
        return subnets


def is_ours(eni: Eni, node: CloudNode) -> bool:
    return eni.id == node.instance.primary_eni_id or eni.tag(TAG_CLUSTER) == node.cluster


def eni_record(eni: Eni, node: CloudNode, subnets: SubnetCache, known: dict[str, EniRecord],
               now: float) -> EniRecord:
    created = eni.created_at
    if created is not None:
        created_at = created.timestamp()
    elif eni.id in known:
        created_at = known[eni.id].created_at
    else:
        created_at = now
    return EniRecord(eni.id, eni.mac, eni.subnet_id, subnets.cidr(eni.subnet_id),
                     eni.device_index or 0, eni.primary_ip,
                     eni.id == node.instance.primary_eni_id, created_at)


def eni_link(record: EniRecord, mtu: int) -> EniLink:
    gateway = str(ipaddress.ip_network(record.subnet_cidr).network_address + 1)
    return EniLink(record.mac, record.device_index, record.subnet_cidr, gateway, mtu)


def reconcile_enis(cloud: Cloud, store: Store, node: CloudNode, subnets: SubnetCache,
                   datapath: Datapath, mtu: int, *, clock=time.time,
                   cooldown: float = 0.0) -> ReconcileReport:
    """Make the store hold exactly what the cloud says our attached ENIs hold, and keep
    addresses that another plugin's pods route on this node out of the pool."""
    known = {e.id: e for e in store.enis()}
    attached = [e for e in cloud.list_enis(node.instance.id) if is_ours(e, node)]
    now = clock()
    view = [EniView(eni_record(e, node, subnets, known, now), e.secondary_ips, e.prefixes)
            for e in attached]
    lost = store.apply_cloud_view(view)
    for allocation in lost:
        logger.error("LOST ADDRESS: the cloud no longer holds %s of pod %s/%s (container %s,"
                     " ENI %s); the allocation is kept, flagged lost, until it is released",
                     allocation.ip, allocation.pod.namespace, allocation.pod.name,
                     allocation.key.container_id, allocation.eni_id)
    adopted = tuple(v.record.id for v in view if v.record.id not in known)
    for v in view:
        datapath.ensure_eni(eni_link(v.record, mtu))
    held = {ip for v in view for ip in v.ips}
    held.update(ip for v in view for prefix in v.prefixes for ip in prefix_addresses(prefix))
    hold_foreign_addresses(store, datapath, held, cooldown)  # a prefix's addresses too
    if adopted:
        logger.info("reconcile: adopted ENIs %s", ", ".join(adopted))
    return ReconcileReport(len(view), sum(len(v.ips) for v in view), adopted,
                           tuple(a.ip for a in lost), sum(len(v.prefixes) for v in view))


def hold_foreign_addresses(store: Store, datapath: Datapath, ours: set[str],
                           cooldown: float) -> None:
    """Moving a node over from another plugin (the AWS VPC CNI): its pods keep running on
    secondary addresses of the primary ENI until they are recreated. An address of our
    ENIs that the kernel routes to a pod link that is not ours is held, not borrowable;
    once its route is gone (the pod was deleted) it is released into the pool."""
    used = datapath.addresses_routed_elsewhere() & ours
    held = store.hold_foreign(used)
    freed = store.release_foreign(used, cooldown)
    if held:
        logger.warning("addresses %s are routed to pods of another CNI plugin on this node: held"
                       " until those pods are gone", ", ".join(held))
    if freed:
        logger.info("addresses %s are no longer used by another plugin's pods: released",
                    ", ".join(freed))


def collect_leaked_enis(cloud: Cloud, cluster: str, older_than: float) -> list[str]:
    """Delete our cluster's ENIs left unattached (an agent killed between create and attach,
    or between detach and delete). Foreign and young ENIs are never listed."""
    deleted = []
    for eni in cloud.list_leaked_enis(cluster, older_than):
        try:
            cloud.delete_eni(eni.id)
        except Exception as exc:  # one failure must not stop the sweep
            logger.warning("leaked ENI %s not deleted: %s", eni.id, exc)
            continue
        logger.info("deleted leaked ENI %s (%s)", eni.id, eni.primary_ip)
        deleted.append(eni.id)
    return deleted
