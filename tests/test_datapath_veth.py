"""veth mode end to end in real namespaces with real packets (see datapath_fixtures.py for
the topology). The datapath runs in a thread switched into the node namespace, as the
agent does; the root namespace is never a node.
"""
from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest

from cni.datapath import DatapathError, NetnsMissing
from cni.datapath.eni import ensure_eni, ensure_host_sysctls
from cni.datapath.veth import REAP_GROUP, LinkReaper, check_pod, setup_pod, teardown_pod
from datapath_fixtures import (PRIMARY_IP, VPC_HOST, kernel_state, ping, sh, static_vpc,
                               udp_probe)

IP_A, IP_B, IP_C = "10.0.1.20", "10.0.2.20", "10.0.1.21"


@pytest.fixture
def vpc():
    with static_vpc() as v:
        v.in_node(ensure_host_sysctls)
        for eni in v.enis:
            v.in_node(ensure_eni, eni)
        yield v


def wire(v, ip: str, eni: int, name: str | None = None):
    pod_ns = v.add_pod_netns()
    spec = v.pod_spec(pod_ns, ip, eni, name)
    v.in_node(setup_pod, spec)
    v.route_pod_ip(ip, eni)
    return pod_ns, spec


def node_view(v) -> dict[str, set[str]]:
    """Node state that must be restored exactly: link names, addresses, routes, rules."""
    state = kernel_state(v.node)
    links = {re.split(r"[:@]", line.split(": ", 1)[1])[0] for line in state["links"].splitlines()}
    return {"links": links,
            "addresses": {line.split("valid_lft")[0].strip()
                          for line in state["addresses"].splitlines()},
            "routes": set(state["routes"].splitlines()),
            "rules": set(state["rules"].splitlines())}


def pod_links(pod_ns: str) -> list[str]:
    out = sh("ip", "-n", pod_ns, "-o", "link", "show").stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines()]


def test_pods_reach_each_other_the_node_and_leave_through_their_own_eni(vpc):
    a, _ = wire(vpc, IP_A, 0)
    b, _ = wire(vpc, IP_B, 1)
    c, _ = wire(vpc, IP_C, 0)
    assert ping(a, IP_C), "pod-to-pod on the same node"
    assert ping(a, IP_B), "pod-to-pod across ENIs on the same node"
    assert ping(b, PRIMARY_IP), "pod-to-node"
    assert ping(vpc.node, IP_A), "node-to-pod"
    # A VPC host behind the router sees each pod's own address, arriving on the router end
    # of the ENI that owns it, and its answer comes back.
    seen_a = udp_probe(a, vpc.router, VPC_HOST)
    seen_b = udp_probe(b, vpc.router, VPC_HOST)
    assert (seen_a.seen_source, seen_a.arrived_on, seen_a.reply_received) == (IP_A, "r0", True)
    assert (seen_b.seen_source, seen_b.arrived_on, seen_b.reply_received) == (IP_B, "r1", True)


def test_kernel_state_is_exactly_the_design(vpc):
    pod_ns = vpc.add_pod_netns()
    spec = vpc.pod_spec(pod_ns, IP_B, 1)
    wired = vpc.in_node(setup_pod, spec)
    host = spec.host_ifname
    pod_link = sh("ip", "-n", pod_ns, "-o", "link", "show", "eth0").stdout
    assert wired.host_ifname == host and f"link/ether {wired.pod_mac} " in pod_link
    assert pod_link.startswith(f"{wired.pod_ifindex}: eth0@")
    assert vpc.in_node(check_pod, spec) == []
    assert len(host) == 15 and host.startswith("ulay")
    rules = sh("ip", "-n", vpc.node, "rule", "show").stdout
    assert f"512:\tfrom all to {IP_B} lookup main" in rules
    assert f"1536:\tfrom {IP_B} lookup 2" in rules
    assert f"{IP_B} dev {host} proto static scope link" in \
        sh("ip", "-n", vpc.node, "route", "show", "table", "main").stdout
    assert "default via 10.0.2.1 dev eni1" in \
        sh("ip", "-n", vpc.node, "route", "show", "table", "2").stdout
    pod_routes = sh("ip", "-n", pod_ns, "route", "show").stdout
    assert "default via 169.254.1.1 dev eth0" in pod_routes
    assert "169.254.1.1 dev eth0 proto static scope link" in pod_routes
    assert f"inet {IP_B}/32" in sh("ip", "-n", pod_ns, "addr", "show", "eth0").stdout
    neigh = sh("ip", "-n", pod_ns, "neigh", "show", "169.254.1.1").stdout
    host_link = sh("ip", "-n", vpc.node, "-o", "link", "show", host).stdout
    assert "PERMANENT" in neigh and re.search(r"link/ether (\S+)", host_link)[1] in neigh
    assert "mtu 1500" in host_link and "state UP" in host_link


def test_teardown_leaves_nothing_and_is_idempotent(vpc):
    before = node_view(vpc)
    pod_ns, spec = wire(vpc, IP_A, 0)
    assert node_view(vpc) != before
    vpc.in_node(teardown_pod, spec)
    sh("ip", "-n", vpc.router, "route", "del", f"{IP_A}/32")  # the VPC side, not ours
    after = node_view(vpc)
    assert after == before
    assert pod_links(pod_ns) == ["lo"]
    vpc.in_node(teardown_pod, spec)  # second DEL: success, still nothing
    assert node_view(vpc) == before


def test_teardown_with_the_netns_already_deleted(vpc):
    before = node_view(vpc)
    pod_ns, spec = wire(vpc, IP_A, 0)
    sh("ip", "netns", "del", pod_ns)
    vpc.in_node(teardown_pod, spec)
    vpc.in_node(teardown_pod, spec)
    sh("ip", "-n", vpc.router, "route", "del", f"{IP_A}/32")
    assert node_view(vpc) == before
    assert not (sh("ip", "netns", "list").stdout.count(pod_ns))
    problems = vpc.in_node(check_pod, spec)
    assert f"pod network namespace {spec.netns} does not exist" in problems


def test_stale_teardown_of_an_old_sandbox_does_not_cut_the_new_one(vpc):
    """A pod's new sandbox is wired before the old sandbox's DEL arrives: host ends are
    named per attachment, so the two never meet and the late DEL removes only its own."""
    old_ns, old = wire(vpc, IP_A, 0, name="web-0")
    new_ns = vpc.add_pod_netns()
    new = vpc.pod_spec(new_ns, IP_C, 0, name="web-0")  # same pod, new sandbox and IP
    assert new.host_ifname != old.host_ifname
    vpc.in_node(setup_pod, new)
    assert vpc.in_node(check_pod, old) == []  # the old sandbox is untouched meanwhile
    vpc.in_node(teardown_pod, old)  # the late DEL of the old sandbox
    assert vpc.in_node(check_pod, new) == []
    assert IP_A not in sh("ip", "-n", vpc.node, "rule", "show").stdout
    assert pod_links(old_ns) == ["lo"]
    assert ping(new_ns, PRIMARY_IP)


def test_a_second_attachment_works_beside_the_first(vpc):
    """ADD eth0, then ADD net1 for the same container and netns (a second network, as
    Multus adds one): each has a host end of its own, its own address and rules; eth0's
    routes stay the pod's main ones and net1's sit beside them at a higher metric; packets
    flow through both; tearing one down leaves the other intact."""
    pod_ns, first = wire(vpc, IP_A, 0)
    second = dataclasses.replace(first, ifname="net1", pod_ip=IP_B, eni=vpc.enis[1])
    vpc.in_node(setup_pod, second)
    vpc.route_pod_ip(IP_B, 1)
    assert first.host_ifname != second.host_ifname
    assert sorted(pod_links(pod_ns)) == ["eth0", "lo", "net1"]
    assert vpc.in_node(check_pod, first) == [] and vpc.in_node(check_pod, second) == []
    routes = sh("ip", "-n", pod_ns, "route", "show").stdout
    assert re.search(r"^default via 169\.254\.1\.1 dev eth0 proto static\s*$", routes, re.M)
    assert re.search(r"^default via 169\.254\.1\.1 dev net1 proto static metric \d+", routes,
                     re.M), routes
    assert ping(vpc.node, IP_A) and ping(vpc.node, IP_B)  # into each interface
    assert ping(pod_ns, PRIMARY_IP, interface="eth0") and \
        ping(pod_ns, PRIMARY_IP, interface="net1")  # out of each
    seen = udp_probe(pod_ns, vpc.router, VPC_HOST, source=IP_B, interface="net1")
    assert (seen.seen_source, seen.arrived_on, seen.reply_received) == (IP_B, "r1", True)
    vpc.in_node(teardown_pod, second)
    assert sorted(pod_links(pod_ns)) == ["eth0", "lo"]
    assert vpc.in_node(check_pod, first) == []
    assert ping(pod_ns, PRIMARY_IP)


def test_check_names_what_was_removed_by_hand(vpc):
    pod_ns, spec = wire(vpc, IP_B, 1)
    assert vpc.in_node(check_pod, spec) == []
    sh("ip", "-n", vpc.node, "rule", "del", "from", IP_B, "lookup", "2", "priority", "1536")
    assert vpc.in_node(check_pod, spec) == [f"rule from {IP_B} lookup 2 (priority 1536) missing"]
    sh("ip", "-n", pod_ns, "route", "del", "default")
    assert vpc.in_node(check_pod, spec) == [
        f"rule from {IP_B} lookup 2 (priority 1536) missing",
        "pod default route via 169.254.1.1 dev eth0 missing"]
    sh("ip", "-n", pod_ns, "addr", "del", f"{IP_B}/32", "dev", "eth0")
    problems = vpc.in_node(check_pod, spec)
    # the kernel drops the pod's other routes with its last address; check names them too
    assert f"pod eth0 has no address {IP_B}/32" in problems
    assert "pod route 169.254.1.1 dev eth0 scope link missing" in problems
    sh("ip", "-n", vpc.node, "link", "set", spec.host_ifname, "down")
    assert f"host veth {spec.host_ifname} is down" in vpc.in_node(check_pod, spec)


def _conflicting_route_on_the_node(v, pod_ns):
    """Another live interface already carries the pod IP (two pods, one address)."""
    wire(v, IP_A, 0, name="holder")
    return "adding host route 10.0.1.20/32"


def _conflicting_route_in_the_pod(v, pod_ns):
    """The pod already has a 169.254.1.1/32 route on another interface."""
    sh("ip", "-n", pod_ns, "link", "add", "x0", "type", "veth", "peer", "name", "x1")
    sh("ip", "-n", pod_ns, "link", "set", "x0", "up")
    sh("ip", "-n", pod_ns, "route", "add", "169.254.1.1/32", "dev", "x0")
    return "adding route 169.254.1.1 dev eth0 scope link in pod"


def _ifname_taken_in_the_pod(v, pod_ns):
    sh("ip", "-n", pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "x1")
    return "creating veth"


@pytest.mark.parametrize("make_conflict", [_conflicting_route_on_the_node,
                                           _conflicting_route_in_the_pod,
                                           _ifname_taken_in_the_pod])
def test_a_failing_step_rolls_back_everything(vpc, make_conflict):
    pod_ns = vpc.add_pod_netns()
    expected = make_conflict(vpc, pod_ns)
    node_before, pod_before = node_view(vpc), sorted(pod_links(pod_ns))
    spec = vpc.pod_spec(pod_ns, IP_A, 0, name="victim")
    with pytest.raises(DatapathError, match=re.escape(expected)):
        vpc.in_node(setup_pod, spec)
    assert node_view(vpc) == node_before
    assert sorted(pod_links(pod_ns)) == pod_before
    assert spec.host_ifname not in node_view(vpc)["links"]


def test_bad_input_is_refused_before_any_change(vpc):
    pod_ns = vpc.add_pod_netns()
    good = vpc.pod_spec(pod_ns, IP_A, 0)
    before = node_view(vpc)
    bad = {"pod_ip": ("10.0.1.300", "pod_ip '10.0.1.300'"),
           "ifname": ("eth0/../x", "ifname 'eth0/../x'"),
           "netns": ("relative/path", "netns 'relative/path'"),
           "mtu": (70000, "mtu 70000"),
           "eni": (dataclasses.replace(good.eni, gateway="10.9.9.9"), "gateway 10.9.9.9")}
    for field, (value, message) in bad.items():
        with pytest.raises(DatapathError, match=re.escape(message)):
            vpc.in_node(setup_pod, dataclasses.replace(good, **{field: value}))
    missing = dataclasses.replace(good, netns="/var/run/netns/ul-no-such-ns")
    with pytest.raises(NetnsMissing, match="ul-no-such-ns does not exist"):
        vpc.in_node(setup_pod, missing)
    assert node_view(vpc) == before
    assert pod_links(pod_ns) == ["lo"]
    assert subprocess.run(["test", "-e", "/var/run/netns/ul-no-such-ns"]).returncode != 0
    vpc.in_node(teardown_pod, missing)  # DEL with a missing netns: success


def test_a_repeated_add_rewires_without_duplicates(vpc):
    pod_ns, spec = wire(vpc, IP_A, 0)
    vpc.in_node(setup_pod, spec)  # the runtime retried ADD: same pod, same IP
    assert vpc.in_node(check_pod, spec) == []
    rules = sh("ip", "-n", vpc.node, "rule", "show").stdout
    assert rules.count(f"to {IP_A} ") == 1 and rules.count(f"from {IP_A} ") == 1
    assert node_view(vpc)["links"] >= {spec.host_ifname}
    assert sum(name.startswith("ulay") for name in node_view(vpc)["links"]) == 1
    assert ping(pod_ns, PRIMARY_IP)


def test_teardown_through_the_reaper_frees_the_name_and_deletes_the_link_later(vpc):
    """The DEL returns with the pod's route and rules gone and its host veth down and out of
    the way; the reaper deletes it. Wiring the same pod again at once works whether or not
    the reaper got to it yet (its pod end may still hold the name eth0)."""
    reaper = vpc.in_node(LinkReaper)
    try:
        before = node_view(vpc)
        pod_ns, spec = wire(vpc, IP_A, 0, name="again")
        for _ in range(5):
            vpc.in_node(teardown_pod, spec, reaper)
            view = node_view(vpc)
            assert spec.host_ifname not in view["links"]
            assert not any(IP_A in line for line in view["routes"] | view["rules"])
            vpc.in_node(setup_pod, spec, reaper)
            assert vpc.in_node(check_pod, spec) == []
            assert ping(pod_ns, PRIMARY_IP)
        vpc.in_node(teardown_pod, spec, reaper)
        assert reaper.wait_idle(10.0)
        sh("ip", "-n", vpc.router, "route", "del", f"{IP_A}/32")
        assert node_view(vpc) == before
        assert pod_links(pod_ns) == ["lo"]
    finally:
        reaper.stop()


def test_the_reaper_deletes_what_a_killed_agent_left_in_its_group(vpc):
    before = node_view(vpc)
    sh("ip", "-n", vpc.node, "link", "add", "ulrm1f", "type", "veth", "peer", "name", "ulrm20")
    for name in ("ulrm1f", "ulrm20"):
        sh("ip", "-n", vpc.node, "link", "set", name, "group", str(REAP_GROUP))
    reaper = vpc.in_node(LinkReaper)
    try:
        reaper.sweep()
        assert reaper.wait_idle(10.0)
    finally:
        reaper.stop()
    assert node_view(vpc) == before


def test_a_netns_path_that_is_no_namespace_is_named(vpc, tmp_path):
    """What an agent sees of a runtime's netns mount that did not propagate to it: an empty
    file at the path. The error says so (the kernel alone would answer EINVAL)."""
    empty = tmp_path / "cni-0000"
    empty.write_bytes(b"")
    before = node_view(vpc)
    spec = dataclasses.replace(vpc.pod_spec(vpc.add_pod_netns(), IP_A, 0), netns=str(empty))
    with pytest.raises(DatapathError, match="is not a network namespace as the agent sees it"):
        vpc.in_node(setup_pod, spec)
    assert node_view(vpc) == before
