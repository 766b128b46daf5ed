"""Who this node is in the cloud: the instance named by the configuration (with Kubernetes
on, the Node's providerID put it there), else by the instance metadata service, with its
type's limits and the subnets and security groups its ENIs use."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from cloud.api import Cloud
from cloud.errors import CloudError
from cloud.imds import read_instance_identity
from cloud.types import Instance, InstanceId, InstanceLimits, SubnetId

from ipam_daemon.config import AgentConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloudNode:
    """The node as the cloud sees it: the instance named by the configuration (with
    Kubernetes on, the Node's providerID put it there), else by the instance metadata
    service."""

    name: str
    cluster: str
    instance: Instance
    limits: InstanceLimits
    subnet_ids: tuple[SubnetId, ...]
    security_groups: tuple[str, ...]



def instance_id_of(config: AgentConfig) -> str:
    """The configured instance id, else the instance metadata service's; ValueError naming
    both sources when neither has one (with Kubernetes on, the Node's providerID came
    first: see ``ipam_daemon.kube.identity``)."""
    if config.instance_id:
        return config.instance_id
    tried = "no instance id: (1) instance_id is not configured (nor UNDERLAY_INSTANCE_ID)"
    if not config.imds_endpoint:
        raise ValueError(f"{tried}; (2) the instance metadata service is off (imds_endpoint"
                         " is empty)")
    try:
        return read_instance_identity(config.imds_endpoint).instance_id
    except (CloudError, ValueError) as exc:
        raise ValueError(f"{tried}; (2) {exc}") from None


def discover_node(cloud: Cloud, config: AgentConfig) -> CloudNode:
    instance = cloud.describe_instance(InstanceId(instance_id_of(config)))
    limits = cloud.instance_limits(instance.instance_type)
    subnets = tuple(SubnetId(s) for s in config.subnets) or (instance.subnet_id,)
    groups = tuple(config.security_groups) or tuple(instance.security_groups)
    node = CloudNode(config.node_name or instance.id, config.cluster, instance, limits, subnets,
                groups)
    logger.info("node %s: instance %s (%s: %d ENIs x %d IPs), subnets %s", node.name,
                instance.id, limits.instance_type, limits.max_enis, limits.ips_per_eni,
                ",".join(subnets))
    return node
