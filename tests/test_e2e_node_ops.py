"""Day one and day two on emulated nodes (one cluster for the module: 3 t3.small nodes, a
fake API server served in each node's namespace, the emulated IMDS on 169.254.169.254):

- node 0: the agent starts with no providerID and no instance_id and finds its instance
  through the emulated IMDS; its metrics listener on the node's VPC address is scraped
  from node 1's namespace (and passes ``promtool check metrics``) while the introspection
  API stays unreachable from there;
- node 1: without IMDS and without providerID the agent names the two sources it tried,
  and starts once the metadata service is there;
- node 0 again, without Kubernetes: the instance from IMDS, or both sources named when
  there is no metadata service;
- node 2: install, pods, DEL of all pods, uninstall: the node namespace's iptables, rules,
  routes, link settings, sysctls and files equal the snapshot taken before the install;
  uninstall refuses, changing nothing, while the agent answers or pods are wired."""
from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fake_apiserver import FakeApiServer
from fake_apiserver.cluster import Kube

from lab.harness import Cluster, HarnessError
from lab.node_io import SHIM_BIN, wait_until

pytestmark = pytest.mark.timeout(300)

METRICS_PORT = 61678
STATUS_PORT = 61680
KUBE = {"kube_timeout": 2.0, "kube_boot_wait": 2.0, "kube_status_interval": 0.0}
_GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
        print(reply.status); sys.stdout.write(reply.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code)
except OSError as exc:
    print("refused", exc)
"""


@pytest.fixture(scope="module")
def kube():
    with Cluster(nodes=3, instance_type="t3.small") as cluster, FakeApiServer() as api:
        kube = Kube(cluster, api)
        for node in cluster.nodes:
            kube.register(node, provider_id=False)
        yield kube


def http_get(cluster: Cluster, node, url: str) -> tuple[str, str]:
    out = cluster.exec_in(node, [sys.executable, "-c", _GET, url]).stdout
    status, _, body = out.partition("\n")
    return status, body


def log_of(cluster: Cluster, node) -> str:
    return (node.workdir / "agent.log").read_text(errors="replace")


def test_identity_from_imds_and_metrics_scraped_from_another_node(kube):
    cluster = kube.cluster
    node, other = cluster.nodes[0], cluster.nodes[1]
    cluster.run_agent(node, kube.overrides(node, {
        **KUBE, "instance_id": "", "metrics_address": node.primary_ip,
        "metrics_port": METRICS_PORT}))
    log = log_of(cluster, node)
    assert f"instance {node.instance_id} from instance metadata" in log, log[-2000:]

    status, text = http_get(cluster, other, f"http://{node.primary_ip}:{METRICS_PORT}/metrics")
    assert status == "200", text
    assert re.search(r'underlay_build_info\{python_version="[0-9.]+",version="[^"]+"\} 1\.0', text)
    assert 'underlay_pool_addresses{state="available"}' in text
    assert 'underlay_ec2_request_duration_seconds_count{action="DescribeInstances",outcome="ok"}' \
        in text
    stamp = re.search(r"^underlay_last_reconcile_timestamp_seconds (\S+)$", text, re.M)
    assert stamp and float(stamp[1]) > 1.6e9, text
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip() and not lint.stderr.strip(), \
        lint.stdout + lint.stderr
    # the pod details: on the node's loopback only, neither on the metrics port nor remotely
    assert http_get(cluster, other, f"http://{node.primary_ip}:{METRICS_PORT}/v1/pods")[0] \
        == "404"
    assert http_get(cluster, other, f"http://{node.primary_ip}:{STATUS_PORT}/v1/pods")[0] \
        .startswith("refused")
    assert http_get(cluster, node, f"http://127.0.0.1:{STATUS_PORT}/v1/pods")[0] == "200"


def test_without_imds_and_provider_id_both_sources_are_named(kube):
    cluster = kube.cluster
    node = cluster.nodes[1]
    cluster.stop_imds(node)
    cluster.run_agent(node, kube.overrides(node, {**KUBE, "instance_id": ""}), wait_ready=False)
    tried = (f"node {node.name}: no instance id: (1) spec.providerID of Node {node.name} is "
             "empty; (2) the instance metadata service at http://169.254.169.254 did not answer"
             " PUT /latest/api/token")
    assert wait_until(lambda: tried in log_of(cluster, node), 20), log_of(cluster, node)[-2000:]
    # logged just after the line above, by the agent's next statement: wait for it too
    assert wait_until(lambda: "waiting for an instance id" in log_of(cluster, node), 10), \
        log_of(cluster, node)[-2000:]
    cluster.serve_imds(node)  # the agent asks again and starts
    cluster.wait_agent_ready(node, timeout=30)
    assert f"identity now instance {node.instance_id}" in log_of(cluster, node)


def test_without_kubernetes_the_instance_comes_from_imds_or_both_sources_are_named(kube):
    """An agent run without Kubernetes (kubernetes "off") and no instance_id finds its
    instance through the node's metadata service; without that service it stops, naming
    both sources it tried, having changed nothing in the cloud."""
    cluster = kube.cluster
    node = cluster.nodes[0]
    cluster.stop_agent(node)
    no_kube = {"kubernetes": "off", "instance_id": ""}
    cluster.run_agent(node, no_kube)
    assert f"instance {node.instance_id} (" in log_of(cluster, node), log_of(cluster, node)[-2000:]
    cluster.stop_agent(node)

    cluster.stop_imds(node)
    try:
        calls = cluster.cloud.control.call_counts()
        agent = cluster.run_agent(node, no_kube, wait_ready=False)
        assert agent.process.wait(timeout=30) != 0
        tried = ("no instance id: (1) instance_id is not configured (nor UNDERLAY_INSTANCE_ID);"
                 " (2) the instance metadata service at http://169.254.169.254 did not answer")
        assert tried in log_of(cluster, node), log_of(cluster, node)[-2000:]
        mutating = {k: v for k, v in cluster.cloud.control.call_counts().items()
                    if not k.startswith("Describe")}
        assert mutating == {k: v for k, v in calls.items() if not k.startswith("Describe")}
    finally:
        cluster.serve_imds(node)


# ---- uninstall --------------------------------------------------------------------------

COUNTERS = re.compile(r"\[\d+:\d+\]")
BUILTIN_CHAINS = {"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"}


def iptables_rules(saved: str) -> list[str]:
    """iptables-save without counters and without what carries no rule: a table the kernel
    keeps once loaded, with only its built-in chains at policy ACCEPT, is no table."""
    kept, table = [], ""
    for line in saved.splitlines():
        if line.startswith("*"):
            table = line
        elif line.startswith("-A") or (line.startswith(":") and (
                line[1:].split()[0] not in BUILTIN_CHAINS or line.split()[1] != "ACCEPT")):
            kept.append(f"{table} {COUNTERS.sub('', line).strip()}")
    return kept


def snapshot_node(cluster: Cluster, node, host: Path, links: tuple[str, ...]) -> dict:
    """What an install may change in the node: iptables, rules, routes (v4 and v6, every
    table), the settings of the links that existed before, sysctls, and the host's files."""
    def run(*cmd: str) -> str:
        return cluster.exec_in(node, list(cmd)).stdout

    iptables = iptables_rules(run("iptables-save"))
    link_state = {}
    for link in json.loads(run("ip", "-j", "link", "show")):
        if link["ifname"] in links:
            link_state[link["ifname"]] = (link["mtu"], "UP" in link["flags"])
    sysctls = {name: run("cat", f"/proc/sys/net/ipv4/{name}").strip()
               for name in ("ip_forward", "conf/eth0/rp_filter")}
    files = {str(p.relative_to(host)): hashlib.sha256(p.read_bytes()).hexdigest()
             if p.is_file() else "dir" for p in sorted(host.rglob("*"))}
    return {"iptables": iptables, "rules": run("ip", "rule", "show"),
            "routes": run("ip", "-4", "route", "show", "table", "all"),
            # link-local IPv6 routes come and go with the kernel's address configuration
            "routes6": [r for r in run("ip", "-6", "route", "show", "table", "all").splitlines()
                        if "fe80:" not in r],
            "links": link_state, "sysctls": sysctls, "files": files}


def assert_same(now: dict, then: dict) -> None:
    """Equal snapshots; otherwise the lines that differ, per part."""
    def lines(value) -> set[str]:
        items = value.splitlines() if isinstance(value, str) else value
        return {f"{k}={v}" for k, v in items.items()} if isinstance(items, dict) else set(items)

    diff = {k: {"gone": sorted(lines(then[k]) - lines(now[k])),
                "new": sorted(lines(now[k]) - lines(then[k]))} for k in then if now[k] != then[k]}
    assert not diff, diff


def installer(cluster: Cluster, node, host: Path, *args: str) -> subprocess.CompletedProcess:
    return cluster.exec_in(node, [sys.executable, "-m", "ipam_daemon.installer", "--host-root",
                                  str(host), *args], check=False)


def test_uninstall_leaves_the_node_as_before_the_install(kube):
    cluster = kube.cluster
    node = cluster.nodes[2]
    host = node.workdir / "host"
    (host / "opt/cni/bin").mkdir(parents=True)
    (host / "opt/cni/bin/loopback").write_bytes(b"another plugin")  # not ours: stays
    links = tuple(link["ifname"] for link in json.loads(
        cluster.exec_in(node, ["ip", "-j", "link", "show"]).stdout))
    before = snapshot_node(cluster, node, host, links)

    done = installer(cluster, node, host, "install", "--skip-conflist", "--plugin-source",
                     str(SHIM_BIN))
    assert done.returncode == 0, done.stderr
    socket = node.socket_path
    cluster.run_agent(node, kube.overrides(node, {
        **KUBE, "vpc_cidrs": ["10.0.0.0/16"], "warm_ips": 1,
        "state_path": str(host / "var/lib/underlay/ipam.db")}))
    done = installer(cluster, node, host, "install", "--conflist-only", "--conflist-template",
                     cluster.conflist_for(node), "--agent-socket", socket, "--wait-seconds", "30")
    assert done.returncode == 0, done.stderr
    pods = [kube.add_pod(node, f"u{i}") for i in range(4)]  # t3.small: the 4th needs eth1
    record = json.loads((host / "var/lib/underlay/host-network.json").read_text())
    assert record["snat"] and record["tables"] == [1, 2], record

    refused = installer(cluster, node, host, "uninstall", "--agent-socket", socket)
    assert refused.returncode == 1 and "the agent still answers" in refused.stderr, refused.stderr
    cluster.stop_agent(node)
    installed = snapshot_node(cluster, node, host, links)
    refused = installer(cluster, node, host, "uninstall", "--agent-socket", socket)
    assert refused.returncode == 1 and "pods are still wired" in refused.stderr \
        and f"to {pods[0].ip} lookup main" in refused.stderr, refused.stderr
    assert_same(snapshot_node(cluster, node, host, links), installed)  # refused: no change

    cluster.run_agent(node, kube.overrides(node, {
        **KUBE, "vpc_cidrs": ["10.0.0.0/16"], "warm_ips": 1,
        "state_path": str(host / "var/lib/underlay/ipam.db")}))
    for pod in pods:
        kube.del_pod(pod)
    cluster.stop_agent(node)
    done = installer(cluster, node, host, "uninstall", "--agent-socket", socket)
    assert done.returncode == 0, done.stderr
    after = snapshot_node(cluster, node, host, links)
    assert_same(after, before)
    with pytest.raises(HarnessError):
        cluster.exec_in(node, ["iptables", "-t", "nat", "-S", "UNDERLAY-SNAT"])
