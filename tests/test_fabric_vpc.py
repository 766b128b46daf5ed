"""The emulated VPC fabric against the emulated cloud, driven with plain boto3: real
namespaces, real links, real packets. No agent involved."""
from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config

from lab.ec2 import EmulatedCloud
from lab.fabric import OUTSIDE_HOST_IP, Fabric
from lab.ec2.world import World, build_world

# how long the fabric may take to follow a cloud change (the issue asks for < 1 s)
FOLLOW_DEADLINE = 1.0


@dataclass
class Vpc:
    cloud: EmulatedCloud
    world: World
    fabric: Fabric
    ec2: Any

    def node_ns(self, index: int) -> str:
        return self.fabric.node_netns(self.world.instances[index].instance_id)


def run_in(ns: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                            timeout=15, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} in {ns} failed: {result.stderr}")
    return result


def ping(ns: str, address: str, source: str | None = None) -> bool:
    cmd = ["busybox", "ping", "-c", "1", "-W", "1", "-w", "1"]
    cmd += ["-I", source] if source else []
    return run_in(ns, *cmd, address, check=False).returncode == 0


def reachable(ns: str, address: str, source: str | None = None) -> bool:
    """A positive check: retried for a few seconds, so a loaded machine cannot fail it."""
    return wait_for(lambda: ping(ns, address, source), 5.0)


def wait_for(condition: Callable[[], bool], deadline: float) -> bool:
    end = time.monotonic() + deadline
    while True:
        if condition():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(0.02)


def link_macs(ns: str) -> dict[str, str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    macs = {}
    for line in out.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if "link/ether" in line:
            macs[name] = line.split("link/ether")[1].split()[0]
    return macs


def router_has_route(vpc: Vpc, dst: str) -> bool:
    out = subprocess.run(["ip", "-n", vpc.fabric.router, "route", "show", "exact", dst],
                         capture_output=True, text=True, timeout=10, check=True).stdout
    return bool(out.strip())


def count_icmp_from(ns: str, source: str) -> int:
    """Packets from ``source`` that reached ``ns`` (a counting rule must be installed)."""
    out = run_in(ns, "iptables", "-L", "INPUT", "-v", "-x", "-n").stdout
    return sum(int(line.split()[0]) for line in out.splitlines()[2:] if source in line)


@pytest.fixture(scope="module")
def cloud_world() -> Iterator[tuple[EmulatedCloud, World, Any]]:
    with EmulatedCloud.start() as cloud:
        world = build_world(cloud.endpoint, region=cloud.region, nodes=2,
                            subnet_cidrs=("10.0.0.0/24", "10.0.1.0/24"))
        ec2 = boto3.client("ec2", endpoint_url=cloud.endpoint, region_name=cloud.region,
                           aws_access_key_id="testing", aws_secret_access_key="testing",
                           config=Config(connect_timeout=5, read_timeout=30))
        yield cloud, world, ec2


def restore_world(world: World, ec2: Any) -> None:
    """Undo what a test did in the cloud, so the next test starts from the built world."""
    primary = {node.primary_eni_id for node in world.instances}
    enis = ec2.describe_network_interfaces(
        Filters=[{"Name": "vpc-id", "Values": [world.vpc_id]}])["NetworkInterfaces"]
    for eni in enis:
        eni_id = eni["NetworkInterfaceId"]
        if eni_id not in primary:
            if eni.get("Attachment"):
                ec2.detach_network_interface(AttachmentId=eni["Attachment"]["AttachmentId"],
                                             Force=True)
            ec2.delete_network_interface(NetworkInterfaceId=eni_id)
            continue
        secondary = [a["PrivateIpAddress"] for a in eni["PrivateIpAddresses"] if not a["Primary"]]
        prefixes = [p["Ipv4Prefix"] for p in eni.get("Ipv4Prefixes", [])]
        if secondary or prefixes:
            ec2.unassign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                              PrivateIpAddresses=secondary,
                                              Ipv4Prefixes=prefixes)
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                               SourceDestCheck={"Value": True})
    for table in world.route_table_ids:
        for route in ec2.describe_route_tables(RouteTableIds=[table])["RouteTables"][0]["Routes"]:
            if route.get("GatewayId") != "local" and "DestinationCidrBlock" in route:
                ec2.delete_route(RouteTableId=table,
                                 DestinationCidrBlock=route["DestinationCidrBlock"])


@pytest.fixture
def vpc(cloud_world: tuple[EmulatedCloud, World, Any]) -> Iterator[Vpc]:
    """Two nodes in two subnets behind a fresh fabric (its namespaces go with the test);
    cloud-side changes are undone afterwards, since building a world is slow."""
    cloud, world, ec2 = cloud_world
    try:
        with Fabric(cloud, vpc_id=world.vpc_id) as fabric:
            yield Vpc(cloud, world, fabric, ec2)
    finally:
        restore_world(world, ec2)


def test_nodes_come_up_with_their_primary_eni_and_reach_each_other(vpc: Vpc) -> None:
    enis = {e["NetworkInterfaceId"]: e for e in vpc.ec2.describe_network_interfaces(
        Filters=[{"Name": "vpc-id", "Values": [vpc.world.vpc_id]}])["NetworkInterfaces"]}
    for index, node in enumerate(vpc.world.instances):
        assert link_macs(vpc.node_ns(index))["eth0"] == enis[node.primary_eni_id]["MacAddress"]
    a, b = vpc.world.instances
    assert a.subnet_id != b.subnet_id  # across subnets: through the gateway
    assert reachable(vpc.node_ns(0), b.primary_ip)
    assert reachable(vpc.node_ns(1), a.primary_ip)
    assert reachable(vpc.node_ns(0), OUTSIDE_HOST_IP)
    # each node reaches the cloud API on its own loopback
    endpoint = vpc.fabric.cloud_endpoint(a.instance_id)
    health = run_in(vpc.node_ns(0), sys.executable, "-c",
                    "import sys, urllib.request; print(urllib.request.urlopen("
                    "sys.argv[1], timeout=5).read().decode())",
                    f"{endpoint}/_emulator/health").stdout
    assert endpoint.startswith("http://127.0.0.1:") and '"ok": true' in health
    # nothing of the VPC in the root namespace
    assert "10.0." not in subprocess.run(["ip", "route", "show", "table", "all"],
                                         capture_output=True, text=True, check=True).stdout


def test_eni_link_appears_on_attach_and_vanishes_on_detach(vpc: Vpc) -> None:
    node = vpc.world.instances[0]
    eni = vpc.ec2.create_network_interface(SubnetId=node.subnet_id)["NetworkInterface"]
    mac, eni_id = eni["MacAddress"], eni["NetworkInterfaceId"]
    ns = vpc.node_ns(0)
    assert "eth1" not in link_macs(ns)
    attachment = vpc.ec2.attach_network_interface(
        NetworkInterfaceId=eni_id, InstanceId=node.instance_id, DeviceIndex=1)["AttachmentId"]
    assert wait_for(lambda: link_macs(ns).get("eth1") == mac, FOLLOW_DEADLINE)
    assert mac not in link_macs(vpc.node_ns(1)).values()

    vpc.ec2.detach_network_interface(AttachmentId=attachment)
    assert wait_for(lambda: "eth1" not in link_macs(ns), FOLLOW_DEADLINE)
    assert mac not in link_macs(ns).values()
    router_links = link_macs(vpc.fabric.router)
    assert len(router_links) == 3  # two primary ENIs and the outside link


def test_assigned_ip_becomes_routable_and_an_unassigned_one_never_is(vpc: Vpc) -> None:
    a, b = vpc.world.instances
    ns_a, ns_b = vpc.node_ns(0), vpc.node_ns(1)
    stray = "10.0.1.200"  # in B's subnet, never assigned by the cloud
    run_in(ns_b, "ip", "addr", "add", f"{stray}/32", "dev", "eth0")
    assert not ping(ns_a, stray)

    ip = vpc.ec2.assign_private_ip_addresses(
        NetworkInterfaceId=b.primary_eni_id, SecondaryPrivateIpAddressCount=1,
    )["AssignedPrivateIpAddresses"][0]["PrivateIpAddress"]
    run_in(ns_b, "ip", "addr", "add", f"{ip}/32", "dev", "eth0")
    assert wait_for(lambda: router_has_route(vpc, ip), FOLLOW_DEADLINE)
    assert reachable(ns_a, ip)
    assert not ping(ns_a, stray)

    vpc.ec2.unassign_private_ip_addresses(NetworkInterfaceId=b.primary_eni_id,
                                          PrivateIpAddresses=[ip])
    assert wait_for(lambda: not router_has_route(vpc, ip), FOLLOW_DEADLINE)
    assert not ping(ns_a, ip)


def test_source_dest_check_drops_spoofed_sources_until_turned_off(vpc: Vpc) -> None:
    a, b = vpc.world.instances
    ns_a, ns_b = vpc.node_ns(0), vpc.node_ns(1)
    spoofed = "10.0.0.77"  # in A's subnet, not A's
    run_in(ns_a, "ip", "addr", "add", f"{spoofed}/32", "dev", "eth0")
    run_in(ns_b, "iptables", "-A", "INPUT", "-s", f"{spoofed}/32", "-p", "icmp")
    run_in(ns_b, "iptables", "-A", "INPUT", "-s", f"{a.primary_ip}/32", "-p", "icmp")

    assert reachable(ns_a, b.primary_ip)  # A's own address passes
    assert count_icmp_from(ns_b, a.primary_ip) >= 1
    ping(ns_a, b.primary_ip, source=spoofed)
    assert count_icmp_from(ns_b, spoofed) == 0

    vpc.ec2.modify_network_interface_attribute(NetworkInterfaceId=a.primary_eni_id,
                                               SourceDestCheck={"Value": False})

    def spoofed_arrives() -> bool:
        ping(ns_a, b.primary_ip, source=spoofed)  # no reply: the spoofed IP is routed nowhere
        return count_icmp_from(ns_b, spoofed) >= 1

    assert wait_for(spoofed_arrives, 5.0)


def test_route_table_entry_routes_a_cidr_to_its_eni(vpc: Vpc) -> None:
    a, b = vpc.world.instances
    ns_a, ns_b = vpc.node_ns(0), vpc.node_ns(1)
    pod_cidr, pod_ip = "10.244.1.0/24", "10.244.1.5"  # a node pod CIDR outside the VPC CIDR
    run_in(ns_a, "ip", "addr", "add", f"{pod_ip}/32", "dev", "lo")
    assert not ping(ns_b, pod_ip)

    table = vpc.world.route_table_ids[0]
    vpc.ec2.create_route(RouteTableId=table, DestinationCidrBlock=pod_cidr,
                         NetworkInterfaceId=a.primary_eni_id)
    # routed now, but A's ENI still checks source and destination: dropped
    assert wait_for(lambda: router_has_route(vpc, pod_cidr), FOLLOW_DEADLINE)
    assert not ping(ns_b, pod_ip)

    vpc.ec2.modify_network_interface_attribute(NetworkInterfaceId=a.primary_eni_id,
                                               SourceDestCheck={"Value": False})
    assert reachable(ns_b, pod_ip)

    vpc.ec2.delete_route(RouteTableId=table, DestinationCidrBlock=pod_cidr)
    assert wait_for(lambda: not router_has_route(vpc, pod_cidr), FOLLOW_DEADLINE)
    assert not ping(ns_b, pod_ip)


def test_a_prefix_is_routed_whole_to_its_eni_and_every_address_in_it_is_checked(
        vpc: Vpc) -> None:
    """Each node gets a /28 prefix; addresses inside it, configured by hand as the agent
    would for pods, reach the other node's prefix both ways. An address inside B's prefix
    used by A is dropped by the router (B never sees it) until A's check is off."""
    a, b = vpc.world.instances
    ns_a, ns_b = vpc.node_ns(0), vpc.node_ns(1)
    nets = {}
    for node in (a, b):
        answer = vpc.ec2.assign_private_ip_addresses(NetworkInterfaceId=node.primary_eni_id,
                                                     Ipv4PrefixCount=1)
        nets[node.instance_id] = ipaddress.ip_network(
            answer["AssignedIpv4Prefixes"][0]["Ipv4Prefix"])
    net_a, net_b = nets[a.instance_id], nets[b.instance_id]
    first_a, last_a, first_b, last_b = (str(x) for x in (net_a[0], net_a[-1],
                                                         net_b[0], net_b[-1]))
    for ns, addresses in ((ns_a, (first_a, last_a)), (ns_b, (first_b, last_b))):
        for address in addresses:
            run_in(ns, "ip", "addr", "add", f"{address}/32", "dev", "eth0")
    assert wait_for(lambda: router_has_route(vpc, str(net_a)) and
                    router_has_route(vpc, str(net_b)), FOLLOW_DEADLINE)
    for source, target in ((first_a, first_b), (last_a, last_b), (first_a, last_b)):
        assert reachable(ns_a, target, source=source), (source, target)
    assert reachable(ns_b, last_a, source=first_b)
    assert reachable(ns_b, first_a)  # from B's primary address

    forged = str(net_b[9])  # inside B's prefix, used on A
    run_in(ns_a, "ip", "addr", "add", f"{forged}/32", "dev", "eth0")
    run_in(ns_b, "iptables", "-A", "INPUT", "-s", f"{forged}/32", "-p", "icmp")
    run_in(ns_b, "iptables", "-A", "INPUT", "-s", f"{first_a}/32", "-p", "icmp")
    assert reachable(ns_a, b.primary_ip, source=first_a)
    assert count_icmp_from(ns_b, first_a) >= 1
    assert not ping(ns_a, b.primary_ip, source=forged)
    assert count_icmp_from(ns_b, forged) == 0

    vpc.ec2.modify_network_interface_attribute(NetworkInterfaceId=a.primary_eni_id,
                                               SourceDestCheck={"Value": False})

    def forged_arrives() -> bool:
        ping(ns_a, b.primary_ip, source=forged)  # no reply: B answers its own prefix
        return count_icmp_from(ns_b, forged) >= 1

    assert wait_for(forged_arrives, 5.0)

    vpc.ec2.unassign_private_ip_addresses(NetworkInterfaceId=b.primary_eni_id,
                                          Ipv4Prefixes=[str(net_b)])
    assert wait_for(lambda: not router_has_route(vpc, str(net_b)), FOLLOW_DEADLINE)
    assert not ping(ns_a, first_b, source=first_a)
