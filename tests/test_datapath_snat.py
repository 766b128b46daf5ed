"""SNAT with real packets: an outside host sees the node's primary IP, a VPC host sees the
pod's IP; SNATed traffic of a pod on a secondary ENI leaves through the primary ENI (the
fixture's router drops a source the sending ENI does not own, as the VPC does).
"""
from __future__ import annotations

import pytest

from cni.datapath import DatapathError, SnatConfig
from cni.datapath.eni import ensure_eni, ensure_host_sysctls
from cni.datapath.snat import ensure_snat, remove_snat, render_rules
from cni.datapath.veth import setup_pod
from datapath_fixtures import (OUTSIDE_IP, PRIMARY_IP, VPC_CIDR, VPC_HOST, kernel_state, sh,
                               static_vpc, udp_probe)

IP_A, IP_B = "10.0.1.20", "10.0.2.20"
SNAT = SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=(VPC_CIDR,))


@pytest.fixture
def vpc():
    """Two ENIs, pod A on ENI 0 and pod B on ENI 1, SNAT not yet installed."""
    with static_vpc() as v:
        v.in_node(ensure_host_sysctls)
        for eni in v.enis:
            v.in_node(ensure_eni, eni)
        for ip, eni in ((IP_A, 0), (IP_B, 1)):
            pod_ns = v.add_pod_netns()
            v.in_node(setup_pod, v.pod_spec(pod_ns, ip, eni))
            v.route_pod_ip(ip, eni)
        yield v


def ours(v) -> list[str]:
    state = kernel_state(v.node)
    return [line for text in (state["iptables"], state["rules"]) for line in text.splitlines()
            if "UNDERLAY" in line or "fwmark 0x80" in line]


def test_snat_applies_to_off_vpc_destinations_only(vpc):
    pod_a, pod_b = vpc.pods
    vpc.in_node(ensure_snat, SNAT)
    for pod in (pod_a, pod_b):
        out = udp_probe(pod, vpc.outside, OUTSIDE_IP)
        assert out is not None and (out.seen_source, out.reply_received) == (PRIMARY_IP, True)
    inside = udp_probe(pod_b, vpc.router, VPC_HOST)
    assert (inside.seen_source, inside.arrived_on, inside.reply_received) == (IP_B, "r1", True)


def test_snated_traffic_needs_the_mark_rule_to_leave_by_the_primary_eni(vpc):
    pod_b = vpc.pods[1]
    vpc.in_node(ensure_snat, SNAT)
    # Without the fwmark rule, pod B's SNATed packets follow its own rule out of ENI 1
    # with the primary IP as source, and the VPC drops them.
    sh("ip", "-n", vpc.node, "rule", "del", "priority", "1024")
    assert udp_probe(pod_b, vpc.outside, OUTSIDE_IP) is None
    vpc.in_node(ensure_snat, SNAT)  # repairs what is missing
    out = udp_probe(pod_b, vpc.outside, OUTSIDE_IP)
    assert out is not None and out.seen_source == PRIMARY_IP


def test_a_service_ip_outside_the_vpc_dnated_to_a_vpc_endpoint_keeps_the_pods_eni(vpc):
    """kube-proxy DNATs a ClusterIP (here 172.20.0.10, outside the VPC CIDR) to an endpoint
    in the VPC: the egress decision must see the endpoint, not the Service IP, or the
    packet would leave the primary ENI with pod B's source and the VPC would drop it."""
    pod_b = vpc.pods[1]
    vpc.in_node(ensure_snat, SNAT)
    sh("ip", "netns", "exec", vpc.node, "iptables", "-w", "5", "-t", "nat", "-I", "PREROUTING",
       "-d", "172.20.0.10/32", "-p", "udp", "-j", "DNAT", "--to-destination", VPC_HOST)
    vpc.in_node(ensure_snat, SNAT)  # an agent restart after kube-proxy: order still right
    seen = udp_probe(pod_b, vpc.router, VPC_HOST, send_to="172.20.0.10")
    assert seen is not None
    assert (seen.seen_source, seen.arrived_on, seen.reply_received) == (IP_B, "r1", True)


def test_excluded_cidrs_and_disabling(vpc):
    pod_b = vpc.pods[1]
    vpc.in_node(ensure_snat, SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=(VPC_CIDR,),
                                        excluded_cidrs=("198.51.100.0/24",)))
    out = udp_probe(pod_b, vpc.outside, OUTSIDE_IP)
    assert (out.seen_source, out.reply_received) == (IP_B, True)
    vpc.in_node(ensure_snat, SNAT)  # the same chains, updated in place
    assert udp_probe(pod_b, vpc.outside, OUTSIDE_IP).seen_source == PRIMARY_IP
    vpc.in_node(ensure_snat, SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=(VPC_CIDR,),
                                        enabled=False))
    assert ours(vpc) == []
    assert udp_probe(pod_b, vpc.outside, OUTSIDE_IP).seen_source == IP_B


def test_ensure_is_idempotent_and_remove_leaves_nothing(vpc):
    before = kernel_state(vpc.node)
    vpc.in_node(ensure_snat, SNAT)
    first = ours(vpc)
    vpc.in_node(ensure_snat, SNAT)
    assert ours(vpc) == first
    assert sum("-j UNDERLAY-SNAT" in line for line in first) == 1
    assert sum("-j UNDERLAY-CONNMARK" in line for line in first) == 1
    assert sum("-i ulay+ -j UNDERLAY-EGRESS" in line for line in first) == 1
    vpc.in_node(remove_snat)
    vpc.in_node(remove_snat)  # nothing left to remove: fine
    after = kernel_state(vpc.node)
    assert ours(vpc) == []
    assert (after["rules"], after["iptables"].count("UNDERLAY")) == (before["rules"], 0)


@pytest.mark.parametrize("cfg, message", [
    (SnatConfig(primary_ip="10.0.1", vpc_cidrs=(VPC_CIDR,)), "primary_ip '10.0.1'"),
    (SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=()), "vpc_cidrs is empty"),
    (SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=("10.0.0.0/33",)), "vpc_cidrs: '10.0.0.0/33'"),
    (SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=(VPC_CIDR,), excluded_cidrs="1.2.3.0/24"),
     "excluded_cidrs must be a list"),
])
def test_bad_config_is_refused_before_any_change(cfg, message):
    with static_vpc(n_enis=1) as v:
        before = kernel_state(v.node)
        with pytest.raises(DatapathError, match=message):
            v.in_node(ensure_snat, cfg)
        assert kernel_state(v.node) == before


def test_rendered_rules_skip_vpc_and_excluded_before_marking():
    text = render_rules(SnatConfig(primary_ip=PRIMARY_IP, vpc_cidrs=("10.0.0.0/16", "10.1.0.0/16"),
                                   excluded_cidrs=("192.0.2.7/32",)))
    egress = [line for line in text.splitlines() if line.startswith("-A UNDERLAY-EGRESS")]
    assert [line.split()[3] for line in egress[:3]] == ["10.0.0.0/16", "10.1.0.0/16",
                                                       "192.0.2.7/32"]
    assert egress[-2].endswith("-j CONNMARK --set-xmark 0x80/0x80")
    assert egress[-1].endswith("-j MARK --set-xmark 0x80/0x80")
    snat = [line for line in text.splitlines() if line.startswith("-A UNDERLAY-SNAT")]
    assert snat[-1].endswith(f"-j SNAT --to-source {PRIMARY_IP} --random-fully")
