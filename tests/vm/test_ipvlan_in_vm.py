"""ipvlan L2 datapath with real namespaces and real packets; runs INSIDE the test VM.

Topology (all in namespaces this module creates):

    router ns: r0 10.0.0.1/24 ---- eth0 10.0.0.10/24  node ns (primary address)
               r1 10.0.1.1/24 ---- eth1 (ENI, MAC 02:00:00:00:01:01, device index 1,
                                        no address; subnet 10.0.1.0/24)
    pod-a ns: eth0 = ipvlan slave of eth1, 10.0.1.5/24      pod-b ns: same, 10.0.1.6/24

The datapath runs with the test thread inside the node namespace, as in the agent.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
import threading

import pytest

from cni.datapath import DatapathError, EniLink, NetnsMissing, PodSpec
from cni.datapath.eni import ensure_eni
from cni.datapath.hostclean import remove_host_changes
from cni.datapath.ipvlan import (
    IpvlanDatapath,
    check_pod_ipvlan,
    remove_host_slave,
    setup_pod_ipvlan,
    teardown_pod_ipvlan,
)
from cni.datapath.netns import entered_netns

if os.environ.get("UNDERLAY_IN_VM") != "1":  # pragma: no cover - guarded by conftest too
    pytest.skip("needs the VM kernel", allow_module_level=True)

ENI = EniLink(mac="02:00:00:00:01:01", device_index=1, subnet_cidr="10.0.1.0/24",
              gateway="10.0.1.1", mtu=9001)
NODE_IP = "10.0.0.10"


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result


def in_ns(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def ping(ns: str, dst: str) -> bool:
    return in_ns(ns, "busybox", "ping", "-c", "1", "-W", "3", dst, check=False).returncode == 0


@dataclasses.dataclass
class Lab:
    node: str
    router: str
    pods: dict[str, str]  # short name -> netns name

    def path(self, ns: str) -> str:
        return f"/run/netns/{ns}"

    def pod(self, short: str, ip: str, **changes: object) -> PodSpec:
        spec = PodSpec(container_id=f"c-{short}", ifname="eth0", netns=self.path(self.pods[short]),
                       pod_ip=ip, eni=ENI, mtu=9001, pod_namespace="default",
                       pod_name=short)
        return dataclasses.replace(spec, **changes) if changes else spec

    def on_node(self, fn, *args):  # noqa: ANN001, ANN202 - tiny test helper
        with entered_netns(self.path(self.node)):
            return fn(*args)


@pytest.fixture(scope="module")
def lab():
    sfx = secrets.token_hex(3)
    node, router = f"node-{sfx}", f"rtr-{sfx}"
    pods = {short: f"pod{short}-{sfx}" for short in ("a", "b", "c")}
    created: list[str] = []
    try:
        for ns in (node, router, *pods.values()):
            sh("ip", "netns", "add", ns)
            created.append(ns)
        sh("ip", "-n", node, "link", "add", "eth0", "type", "veth", "peer", "r0", "netns", router)
        sh("ip", "-n", node, "link", "add", "eth1", "address", ENI.mac, "mtu", "9001", "type",
           "veth", "peer", "r1", "mtu", "9001", "netns", router)
        for ns, dev, cidr in ((node, "eth0", f"{NODE_IP}/24"), (router, "r0", "10.0.0.1/24"),
                              (router, "r1", "10.0.1.1/24")):
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for ns in (node, router, *pods.values()):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", node, "route", "add", "default", "via", "10.0.0.1")
        lab = Lab(node, router, pods)
        assert lab.on_node(ensure_eni, ENI) == "eth1"
        yield lab
    finally:
        for ns in reversed(created):
            sh("ip", "netns", "del", ns, check=False)


def node_routes_on(lab: Lab, dev: str) -> str:
    return sh("ip", "-n", lab.node, "route", "show", "dev", dev, check=False).stdout


def tx_packets(ns: str, dev: str) -> int:
    return int(in_ns(ns, "cat", f"/sys/class/net/{dev}/statistics/tx_packets").stdout)


def test_bad_input_changes_nothing(lab: Lab):
    with pytest.raises(DatapathError, match="outside the ENI subnet"):
        lab.on_node(setup_pod_ipvlan, lab.pod("a", "10.9.9.9"))
    with pytest.raises(DatapathError, match="gateway"):
        lab.on_node(setup_pod_ipvlan, lab.pod("a", "10.0.1.1"))
    with pytest.raises(NetnsMissing, match="does not exist"):
        lab.on_node(setup_pod_ipvlan, lab.pod("a", "10.0.1.5", netns="/run/netns/nope-x"))
    assert "eth0" not in in_ns(lab.pods["a"], "ip", "-o", "link").stdout
    assert "10.0.1." not in sh("ip", "-n", lab.node, "route", "show").stdout


def test_setup_then_packets_flow(lab: Lab):
    a, b = lab.pod("a", "10.0.1.5"), lab.pod("b", "10.0.1.6")
    wired = lab.on_node(setup_pod_ipvlan, a)
    lab.on_node(setup_pod_ipvlan, b)
    assert wired.host_ifname == "ipvl1" and wired.pod_mac == ENI.mac
    assert lab.on_node(check_pod_ipvlan, a) == []
    assert lab.on_node(check_pod_ipvlan, b) == []
    link = in_ns(lab.pods["a"], "ip", "-d", "link", "show", "eth0").stdout
    assert "ipvlan" in link and "mode l2" in link
    assert "10.0.1.5/24" in in_ns(lab.pods["a"], "ip", "-o", "addr", "show", "eth0").stdout
    assert "default via 10.0.1.1 dev eth0" in in_ns(lab.pods["a"], "ip", "route").stdout
    host_slave = sh("ip", "-n", lab.node, "-d", "addr", "show", "ipvl1").stdout
    assert "NOARP" in host_slave and f"inet {NODE_IP}/32 scope host" in host_slave

    # pod to pod on the same ENI, both ways
    assert ping(lab.pods["a"], "10.0.1.6")
    assert ping(lab.pods["b"], "10.0.1.5")
    # pod to the subnet gateway (the router): the packet really leaves through the ENI
    before = tx_packets(lab.node, "eth1")
    assert ping(lab.pods["a"], "10.0.1.1")
    assert tx_packets(lab.node, "eth1") > before
    # node to pod through the host slave, from the node's own address
    route = sh("ip", "-n", lab.node, "route", "get", "10.0.1.5").stdout
    assert "dev ipvl1" in route and f"src {NODE_IP}" in route
    assert ping(lab.node, "10.0.1.5")
    assert ping(lab.node, "10.0.1.6")
    # and the pod to the node's address (the reply path of everything above)
    assert ping(lab.pods["b"], NODE_IP)


def test_failed_setup_rolls_back(lab: Lab):
    # pod c asks for pod b's address: the ipvlan driver refuses it on the shared ENI
    c = lab.pod("c", "10.0.1.6")
    with pytest.raises(DatapathError, match="configuring eth0"):
        lab.on_node(setup_pod_ipvlan, c)
    assert "eth0" not in in_ns(lab.pods["c"], "ip", "-o", "link").stdout
    # pod b's own wiring (including its host route) is untouched
    assert lab.on_node(check_pod_ipvlan, lab.pod("b", "10.0.1.6")) == []
    assert ping(lab.node, "10.0.1.6")
    # the same failure after our host route went in: the route is rolled back too
    sh("ip", "-n", lab.node, "addr", "add", "10.0.1.7/32", "dev", "ipvl1")
    try:
        with pytest.raises(DatapathError, match="configuring eth0"):
            lab.on_node(setup_pod_ipvlan, lab.pod("c", "10.0.1.7"))
    finally:
        sh("ip", "-n", lab.node, "addr", "del", "10.0.1.7/32", "dev", "ipvl1")
    assert "10.0.1.7" not in node_routes_on(lab, "ipvl1")
    assert "ipvlan" not in in_ns(lab.pods["c"], "ip", "-d", "-o", "link").stdout
    # an address the node already routes elsewhere is refused before anything is made
    sh("ip", "-n", lab.node, "route", "add", "10.0.1.8/32", "dev", "eth0")
    try:
        with pytest.raises(DatapathError, match="already routes 10.0.1.8/32 elsewhere"):
            lab.on_node(setup_pod_ipvlan, lab.pod("c", "10.0.1.8"))
    finally:
        sh("ip", "-n", lab.node, "route", "del", "10.0.1.8/32", "dev", "eth0")
    assert "ipvlan" not in in_ns(lab.pods["c"], "ip", "-d", "-o", "link").stdout
    # a second ADD for a wired pod is refused without harming it
    with pytest.raises(DatapathError, match="already exists"):
        lab.on_node(setup_pod_ipvlan, lab.pod("b", "10.0.1.6"))
    assert ping(lab.pods["a"], "10.0.1.6")


def test_check_names_what_is_missing(lab: Lab):
    a = lab.pod("a", "10.0.1.5")
    in_ns(lab.pods["a"], "ip", "route", "del", "default")
    sh("ip", "-n", lab.node, "route", "del", "10.0.1.5/32", "dev", "ipvl1")
    problems = lab.on_node(check_pod_ipvlan, a)
    assert "route default via 10.0.1.1 dev eth0 is missing in /run/netns/" in " ".join(problems)
    assert "host route 10.0.1.5/32 dev ipvl1 is missing" in problems
    assert len(problems) == 2, problems
    assert not ping(lab.node, "10.0.1.5")


def test_teardown_leaves_nothing_and_repeats(lab: Lab):
    a, b = lab.pod("a", "10.0.1.5"), lab.pod("b", "10.0.1.6")
    for pod in (a, b):
        lab.on_node(teardown_pod_ipvlan, pod)
        lab.on_node(teardown_pod_ipvlan, pod)  # a second DEL succeeds
    for short in ("a", "b"):
        assert "eth0" not in in_ns(lab.pods[short], "ip", "-o", "link").stdout
    assert "10.0.1.5" not in node_routes_on(lab, "ipvl1")
    assert "10.0.1.6" not in node_routes_on(lab, "ipvl1")
    assert not ping(lab.node, "10.0.1.6")
    # DEL for a pod whose namespace is gone, or with no namespace at all, succeeds too
    lab.on_node(teardown_pod_ipvlan, lab.pod("a", "10.0.1.5", netns="/run/netns/gone-x"))
    lab.on_node(teardown_pod_ipvlan, lab.pod("a", "10.0.1.5", netns=""))
    assert any("eth0 is missing" in p for p in lab.on_node(check_pod_ipvlan, a))
    # an eth0 that is not ipvlan is not ours: DEL leaves it and still succeeds
    in_ns(lab.pods["c"], "ip", "link", "add", "eth0", "type", "veth", "peer", "other0")
    lab.on_node(teardown_pod_ipvlan, lab.pod("c", "10.0.1.7"))
    assert "eth0" in in_ns(lab.pods["c"], "ip", "-o", "link").stdout
    in_ns(lab.pods["c"], "ip", "link", "del", "eth0")
    # the per-ENI host slave goes when the ENI goes, and only then
    lab.on_node(remove_host_slave, ENI)
    lab.on_node(remove_host_slave, ENI)
    links = sh("ip", "-n", lab.node, "-o", "link").stdout
    assert "ipvl1" not in links and "eth1" in links
    assert "10.0.1." not in sh("ip", "-n", lab.node, "route", "show").stdout


def test_concurrent_setups_share_one_host_slave(lab: Lab):
    # the agent may wire two pods at once on an ENI whose host slave does not exist yet
    pods = [lab.pod("a", "10.0.1.5"), lab.pod("b", "10.0.1.6")]
    assert "ipvl1" not in sh("ip", "-n", lab.node, "-o", "link").stdout
    errors: list[BaseException] = []
    start = threading.Barrier(len(pods), timeout=60)

    def wire(pod: PodSpec) -> None:
        try:
            start.wait()
            lab.on_node(setup_pod_ipvlan, pod)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=wire, args=(pod,)) for pod in pods]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    try:
        for pod in pods:
            assert lab.on_node(check_pod_ipvlan, pod) == []
        assert ping(lab.node, "10.0.1.5") and ping(lab.pods["a"], "10.0.1.6")
    finally:
        for pod in pods:
            lab.on_node(teardown_pod_ipvlan, pod)
        lab.on_node(remove_host_slave, ENI)


def node_snapshot(lab: Lab) -> dict[str, str]:
    """The node namespace as uninstall must leave it: links (name, kind, flags, MTU),
    rules, routes of every table, the sysctls the agent writes."""
    return {
        "links": sh("ip", "-n", lab.node, "-d", "-o", "link").stdout,
        "rules": sh("ip", "-n", lab.node, "rule").stdout,
        "routes": sh("ip", "-n", lab.node, "route", "show", "table", "all").stdout,
        "sysctls": in_ns(lab.node, "sh", "-c", "cat /proc/sys/net/ipv4/ip_forward "
                         "/proc/sys/net/ipv4/conf/eth1/rp_filter").stdout,
    }


def test_uninstall_puts_the_node_back_after_ipvlan_pods(lab: Lab, tmp_path):
    """The agent's ipvlan mode with its host record, as on a node: host prepared, ENI
    ensured, a pod wired and deleted (the ENI's host slave stays with the ENI); then the
    uninstall's clean-up removes the host slave and the ENI's table and restores what the
    record noted: the node equals its snapshot from before the agent."""
    sh("ip", "-n", lab.node, "route", "flush", "table", str(ENI.table))  # before any agent
    before = node_snapshot(lab)
    record = str(tmp_path / "host-network.json")
    datapath = IpvlanDatapath(record_path=record)
    pod = lab.pod("a", "10.0.1.5")
    try:
        lab.on_node(datapath.prepare_host, None)
        lab.on_node(datapath.ensure_eni, ENI)
        lab.on_node(datapath.setup, pod)
        assert ping(lab.pods["a"], "10.0.1.1")
        lab.on_node(datapath.teardown, pod)
        assert "ipvl1" in sh("ip", "-n", lab.node, "-o", "link").stdout
        done = lab.on_node(remove_host_changes, record)
        assert any("ipvl1" in line for line in done), done
        assert node_snapshot(lab) == before
        assert not os.path.exists(record)
    finally:
        lab.on_node(teardown_pod_ipvlan, pod)
        lab.on_node(remove_host_slave, ENI)
        lab.on_node(ensure_eni, ENI)  # the fixture's state again
