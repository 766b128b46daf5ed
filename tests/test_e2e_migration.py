"""Moving a node from the AWS VPC CNI to underlay, in the emulated VPC, with real packets.

The stand-in for aws-cni is what its conflist does on a node, built from the reference
plugins: ``10-aws.conflist`` with ``ptp`` and ``host-local`` handing out secondary
addresses the cloud assigned to the node's primary ENI (as aws-node's ipamd assigns them),
so its pods' packets cross the VPC router like aws-cni's. Node 0 starts that way; node 1
runs underlay throughout. Then node 0 is switched as the README's migration steps say:
the agent starts, the installer writes ``05-underlay.conflist`` into the node's
``/etc/cni/net.d``, which sorts first, so the runtime (the harness takes the first file,
as libcni's ConfFiles and containerd do) now calls underlay. The old pods keep working;
new pods get underlay addresses, never an address an old pod still uses; a recreated old
pod gets an underlay address, and the address it had returns to the pool.

The same move from aws-cni in prefix mode (ENABLE_PREFIX_DELEGATION): the old pods hold
addresses inside a /28 delegated to the primary ENI, and underlay starts with
``prefix_delegation`` on: it adopts the prefix and hands out its other addresses, never the
old pods' ones."""
from __future__ import annotations

import ipaddress
import json
import sys

import pytest

from lab.harness import Cluster
from lab.node_io import wait_until
from lab.ec2.world import make_setup_client

pytestmark = pytest.mark.timeout(300)

FOREIGN = "underlay.io/other-plugin"


def aws_conflist(addresses: list[str], data_dir: str) -> dict:
    return {"cniVersion": "1.0.0", "name": "aws-cni", "plugins": [{
        "type": "ptp", "ipMasq": False, "mtu": 9001,
        "ipam": {"type": "host-local", "dataDir": data_dir,
                 "ranges": [[{"subnet": "10.0.0.0/24", "rangeStart": ip, "rangeEnd": ip,
                              "gateway": "169.254.1.1"} for ip in addresses]]}}]}


def _key(ip: str) -> tuple[int, ...]:
    return tuple(int(part) for part in ip.split("."))


def ping(cluster: Cluster, pod, ip: str) -> bool:
    return cluster.exec_in(pod, ["busybox", "ping", "-c1", "-W2", ip], check=False).returncode == 0


def foreign_addresses(ec2, eni_id: str, prefixes: bool) -> list[str]:
    """Two addresses aws-node's ipamd gave the primary ENI: secondary addresses, or the
    first two of a delegated /28."""
    if prefixes:
        answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, Ipv4PrefixCount=1)
        prefix = answer["AssignedIpv4Prefixes"][0]["Ipv4Prefix"]
        return [str(ip) for ip in list(ipaddress.IPv4Network(prefix))[:2]]
    answer = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                             SecondaryPrivateIpAddressCount=2)
    return sorted((a["PrivateIpAddress"] for a in answer["AssignedPrivateIpAddresses"]), key=_key)


@pytest.mark.parametrize("prefixes", [False, True], ids=["secondary-addresses", "prefixes"])
def test_node_moves_from_aws_cni_to_underlay(tmp_path, prefixes):
    with Cluster(nodes=2, subnet_cidrs=("10.0.0.0/24",)) as cluster:
        node, peer = cluster.nodes
        cluster.run_agent(peer)
        target = cluster.add_pod(peer, "peer")

        # before: node 0 runs "aws-cni"; its pods hold secondary addresses of the primary ENI
        ec2 = make_setup_client(cluster.cloud.endpoint, cluster.cloud.region)
        old_ips = foreign_addresses(ec2, node.primary_eni_id, prefixes)
        host = node.workdir / "host"
        net_d = host / "etc/cni/net.d"
        net_d.mkdir(parents=True)
        (net_d / "10-aws.conflist").write_text(json.dumps(
            aws_conflist(old_ips, str(node.workdir / "host-local"))))
        cluster.exec_in(node, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])  # aws-node sets it
        template = cluster.conflist_for(node)  # ours, with this node's agent socket
        cluster.use_conf_dir(node, net_d)
        old = [cluster.add_pod(node, f"old{i}") for i in range(2)]
        assert sorted((p.ip for p in old), key=_key) == old_ips
        assert wait_until(lambda: ping(cluster, old[0], target.ip), 10)

        # the switch: the agent, then our conflist, which sorts before 10-aws.conflist
        cluster.run_agent(node, {"warm_ips": 3, "prefix_delegation": prefixes})
        done = cluster.exec_in(node, [
            sys.executable, "-m", "ipam_daemon.installer", "--host-root", str(host), "install",
            "--conflist-only", "--conflist-template", template,
            "--agent-socket", node.socket_path, "--wait-seconds", "30"], check=False)
        assert done.returncode == 0, done.stderr
        assert cluster.conflist_for(node) == str(net_d / "05-underlay.conflist")
        assert sorted(p.name for p in net_d.iterdir()) == ["05-underlay.conflist",
                                                          "10-aws.conflist"]

        # the old pods keep working, both ways
        for pod in old:
            assert ping(cluster, pod, target.ip), pod.name
            assert ping(cluster, target, pod.ip), pod.name
        held = {p["ip"] for p in cluster.agent_get(node, "/v1/pods")[1]
                if p["network"] == FOREIGN}
        assert held == set(old_ips), held  # another plugin's pods: not in the pool

        # new pods: underlay addresses (never an old pod's), across the VPC both ways
        new = [cluster.add_pod(node, f"new{i}") for i in range(3)]
        ours = {p["ip"]: p for p in cluster.agent_get(node, "/v1/pods")[1]}
        for pod in new:
            assert pod.ip not in old_ips and ours[pod.ip]["name"] == pod.name, pod
            assert pod.result["interfaces"][0]["name"].startswith("ulay"), pod.result
            assert ping(cluster, pod, target.ip) and ping(cluster, target, pod.ip), pod.name
        assert ping(cluster, old[1], target.ip)  # still

        # an old pod is recreated: its DEL and ADD now go to underlay
        cluster.del_pod(old[0])
        again = cluster.add_pod(node, "old0")
        assert again.ip not in old_ips and again.result["interfaces"][0]["name"].startswith("ulay")
        assert ping(cluster, again, target.ip) and ping(cluster, target, again.ip)
        assert ping(cluster, old[1], target.ip)

        def released() -> bool:
            pods = cluster.agent_get(node, "/v1/pods")[1]
            return {p["ip"] for p in pods if p["network"] == FOREIGN} == {old_ips[1]}

        # the next reconcile (10 s in the harness) sees old0's route gone
        assert wait_until(released, 20), cluster.agent_get(node, "/v1/pods")[1]
