"""Chaos: pod churn through libcni on a two-node cluster of the emulated cloud while the
agents are killed with SIGKILL at random points (and restarted, as a DaemonSet would), EC2
throttles 30% of calls, answers 5% with a 5xx and stalls some, pod namespaces vanish in the
middle of ADDs, and one node's state directory (a tiny tmpfs) fills up. The agents talk to a
fake Kubernetes API server (served inside each node namespace) that holds the Nodes and the
pods (created before their ADD, deleted after their DEL or failed ADD); its watches are
dropped again and again, once after a compaction (so a watch must relist after 410 Gone),
and it goes down for a moment once. Afterwards the agents' pod GC must have released every
allocation whose pod is gone from the API server; then, once the runtime has run CNI GC
with the pods it still has, the invariants must hold:

- no IP held by two pods (the pods' results and the agents' allocations);
- no IP assigned in the cloud to one of our ENIs that the node's store does not know, and no
  ENI of ours left unattached;
- no allocation without a live pod, none marked lost, and every live pod has its allocation;
- no host veth, rule or route of a dead pod in any node namespace;
- every live pod answers a ping from its node, and pods on the two nodes reach each other;
- no allocation whose pod is gone from the API server, and both Nodes carry the
  ``UnderlayIPAvailable`` condition.

``make test`` runs the fast version (5 kills); ``make chaos`` the full one (20 kills).
The random choices are seeded, but threads and kills race by design, so each run differs.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fake_apiserver import FakeApiServer
from fake_apiserver.cluster import Kube, count_log_lines, stale_allocations, wait_for_pod_gc
from fake_apiserver.disrupt import Disruptions, disrupt

from lab.harness import Cluster, HarnessError, LabNode, Pod
from lab.node_io import wait_until
from cloud.types import TAG_CLUSTER

SEED = 20261129
AGENT_OVERRIDES = {"cooldown_seconds": 0.5, "borrow_wait_seconds": 5.0, "snat": False,
                   "reconcile_interval": 2.0, "leaked_eni_age": 1.0,
                   "leaked_eni_interval": 2.0, "kube_timeout": 2.0,
                   "kube_boot_wait": 2.0, "kube_gc_grace": 1.0, "kube_gc_interval": 0.5,
                   "kube_status_interval": 0.5, "kube_event_interval": 60.0}
CONDITION = "UnderlayIPAvailable"
POD_GC_SECONDS = 30.0
FAULTS = [{"action": "*", "kind": "throttle", "rate": 0.3},
          {"action": "*", "kind": "5xx", "rate": 0.05},
          {"action": "*", "kind": "timeout", "rate": 0.05, "seconds": 0.5}]
ATTACH_LATENCY = 0.5
MAX_PODS_PER_NODE = 12
SABOTAGE_EVERY = 5  # every 5th ADD loses its namespace while libcni runs
LOSE_EVERY = 6  # every 6th pod removal: the runtime lost the sandbox, no DEL ever comes
STATE_TMPFS = "16m"  # room for SQLite's WAL (up to ~4 MiB before a checkpoint)
SETTLE_SECONDS = 45.0
FINAL_PODS_PER_NODE = 3


@dataclass
class Stats:
    adds: int = 0
    failed_adds: int = 0
    dels: int = 0
    failed_dels: int = 0
    sabotaged: int = 0
    lost: int = 0
    kills: int = 0
    disk_full_failures: int = 0
    disk_full_agent_exited: bool = False
    disk_full_errors: list[str] = field(default_factory=list)
    sabotage: dict[str, int] = field(default_factory=dict)  # outcome -> count
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note_sabotage(self, outcome: str) -> None:
        with self.lock:
            self.sabotage[outcome] = self.sabotage.get(outcome, 0) + 1

    def count(self, name: str, error: str | None = None) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)
            if error is not None and len(self.errors) < 50:
                self.errors.append(error[:300])


# -- drivers -------------------------------------------------------------------------------
def delete_netns_when_it_appears(netns: str, delay: float, stop: threading.Event) -> None:
    path = Path("/run/netns") / netns
    if wait_until(path.exists, 30.0, step=0.002, stop=stop):
        stop.wait(delay)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=30,
                       check=False)


def try_delete(kube: Kube, pod: Pod, terminating: list[Pod], stats: Stats) -> None:
    """DEL ``pod``; a failed DEL leaves it terminating, to be retried (as kubelet does)."""
    try:
        kube.del_pod(pod)
        stats.count("dels")
    except HarnessError as exc:
        terminating.append(pod)
        stats.count("failed_dels", str(exc))


def churn(kube: Kube, node: LabNode, rng: random.Random, stop: threading.Event,
          stats: Stats, terminating: list[Pod]) -> None:
    """ADD and DEL pods on ``node`` until ``stop``. A pod whose DEL failed never comes back:
    it stays in ``terminating`` and its DEL is retried first."""
    cluster, mine, serial, removals = kube.cluster, [], 0, 0
    while not stop.is_set():
        if terminating:
            try_delete(kube, terminating.pop(0), terminating, stats)
            stop.wait(0.05)
            continue
        if mine and (len(mine) >= MAX_PODS_PER_NODE or rng.random() < 0.4):
            removals += 1
            if removals % LOSE_EVERY == 0:
                kube.lose_pod(mine.pop(rng.randrange(len(mine))))
                stats.count("lost")
            else:
                try_delete(kube, mine.pop(rng.randrange(len(mine))), terminating, stats)
            continue
        serial += 1
        name = f"c{node.index}n{serial}"
        saboteur = None
        if serial % SABOTAGE_EVERY == 0:
            sandbox = f"{cluster.prefix}-p{name}"
            saboteur = threading.Thread(target=delete_netns_when_it_appears,
                                        args=(sandbox, rng.uniform(0.0, 0.25), stop))
            saboteur.start()
            stats.count("sabotaged")
        try:
            pod, error = kube.add_pod(node, name), ""
        except HarnessError as exc:
            stats.count("failed_adds", str(exc))
            pod, error = None, str(exc)
        if saboteur is not None:
            saboteur.join(timeout=60)
            stats.note_sabotage("ADD succeeded" if pod else
                                "netns gone first" if '"code":3,' in error else "ADD failed")
        if pod is None:
            stop.wait(0.1)  # as a kubelet backs off before retrying a sandbox
            continue
        stats.count("adds")
        if not os.path.exists(pod.netns_path):  # the sandbox died under a successful ADD:
            try_delete(kube, pod, terminating, stats)  # DEL with the netns gone
            continue
        mine.append(pod)


def ensure_agent(kube: Kube, node: LabNode) -> None:
    agent = kube.cluster.agents.get(node.name)
    if agent is not None and agent.process.poll() is None:
        return
    kube.cluster.stop_agent(node)  # forget an exited one
    kube.cluster.run_agent(node, kube.overrides(node, AGENT_OVERRIDES), timeout=60.0)


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the filesystem under ``directory`` has no space left."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    try:
        with open(filler, "wb") as out:
            while True:
                out.write(chunk)
                out.flush()
    except OSError as exc:  # the open itself fails when the agent's files filled it first
        if exc.errno != errno.ENOSPC:
            raise
    return filler


def kill_loop(kube: Kube, kills: int, rng: random.Random, stats: Stats,
              full_node: LabNode) -> None:
    """SIGKILL a random agent at a random instant, restart it; midway, fill ``full_node``'s
    state disk for a few seconds of churn, then free it."""
    cluster = kube.cluster
    for k in range(kills):
        time.sleep(rng.uniform(0.2, 1.5))
        node = rng.choice(cluster.nodes)
        cluster.stop_agent(node, kill=True)
        stats.count("kills")
        time.sleep(rng.uniform(0.0, 0.3))  # DELs and ADDs meet a dead agent
        ensure_agent(kube, node)
        if k == kills // 2:
            filler = fill_disk(full_node.workdir / "state")
            failures = stats.failed_adds + stats.failed_dels
            time.sleep(3.0)
            stats.disk_full_failures = stats.failed_adds + stats.failed_dels - failures
            stats.disk_full_errors = stats.errors[-3:]
            stats.disk_full_agent_exited = cluster.agents[full_node.name].process.poll() is not None
            filler.unlink(missing_ok=True)
            ensure_agent(kube, full_node)  # it may have exited on the full disk


@contextlib.contextmanager
def tmpfs_at(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(path)], check=True, capture_output=True, timeout=30)
    try:
        yield path
    finally:  # lazily if an agent still has files open there
        if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode:
            subprocess.run(["umount", "-l", str(path)], check=True, capture_output=True,
                           timeout=30)


# -- invariants ----------------------------------------------------------------------------
def run_json(cluster: Cluster, node: LabNode, *cmd: str) -> list[dict]:
    return json.loads(cluster.exec_in(node, list(cmd)).stdout or "[]")


def collect_garbage(cluster: Cluster, node: LabNode, live: list[Pod]) -> None:
    """CNI GC as a 1.1 runtime runs it: every attachment but those of ``live`` goes."""
    conflist = json.loads(Path(cluster.conflist_for(node)).read_text())
    conf = {"cniVersion": "1.1.0", "name": conflist["name"], **conflist["plugins"][0],
            "cni.dev/valid-attachments": [{"containerID": p.container_id, "ifname": p.ifname}
                                          for p in live]}
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "GC",
           "CNI_PATH": cluster.cni_bin_dir}
    proc = subprocess.run(["ip", "netns", "exec", node.netns,
                           os.path.join(cluster.cni_bin_dir, "underlay")],
                          input=json.dumps(conf), env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)


def ping(cluster: Cluster, source: LabNode | Pod, address: str) -> bool:
    return cluster.exec_in(source, ["busybox", "ping", "-c", "1", "-W", "2", address],
                           check=False).returncode == 0


def find_violations(kube: Kube) -> list[str]:
    """Every invariant that does not hold right now, each named with its evidence."""
    cluster = kube.cluster
    assert cluster.cloud is not None and cluster.world is not None
    problems: list[str] = stale_allocations(kube)
    for node in cluster.nodes:
        conditions = kube.api.get("nodes", node.name).get("status", {}).get("conditions", [])
        if not any(c.get("type") == CONDITION for c in conditions):
            problems.append(f"{node.name}: no {CONDITION} condition on the Node: {conditions}")
    live = list(cluster.pods.values())
    ips = [p.ip for p in live]
    if len(ips) != len(set(ips)):
        problems.append(f"an IP is held by two live pods: {sorted(ips)}")
    snapshot = cluster.cloud.control.snapshot()
    all_allocated: list[str] = []
    for node in cluster.nodes:
        here = {p.container_id: p for p in live if p.node.name == node.name}
        status, allocations = cluster.agent_get(node, "/v1/pods")
        if status != 200:
            problems.append(f"{node.name}: /v1/pods answered {status}")
            continue
        allocated = {a["container_id"]: a for a in allocations}
        all_allocated += [a["ip"] for a in allocations]
        for cid in sorted(set(allocated) - set(here)):
            problems.append(f"{node.name}: allocation {cid} ({allocated[cid]['ip']}) "
                            "without a live pod")
        for cid, pod in here.items():
            got = allocated.get(cid)
            if got is None or got["ip"] != pod.ip or got["lost"]:
                problems.append(f"{node.name}: live pod {pod.name} {pod.ip} has {got}")
        known = {a["ip"] for e in cluster.agent_get(node, "/v1/enis")[1]
                 for a in e["addresses"]}
        for eni in snapshot["enis"]:
            if eni["instance_id"] != node.instance_id:
                continue
            unknown = set(eni["ips"]) - {eni["primary_ip"]} - known
            if unknown:
                problems.append(f"{node.name}: {eni['id']} holds {sorted(unknown)} in the "
                                "cloud, unknown to the store")
        pod_ips = {p.ip for p in here.values()}
        veths = {link["ifname"] for link in run_json(cluster, node, "ip", "-j", "link", "show",
                                                     "type", "veth")
                 if link["ifname"].startswith("ulay")}
        expected_veths = {p.result["interfaces"][0]["name"] for p in here.values()}
        if veths != expected_veths:
            problems.append(f"{node.name}: host veths {sorted(veths - expected_veths)} of "
                            f"dead pods, {sorted(expected_veths - veths)} missing")
        rules = run_json(cluster, node, "ip", "-j", "rule")
        rule_ips = {r.get("dst") or r.get("src") for r in rules
                    if r.get("priority") in (512, 1536)}
        if rule_ips - pod_ips:
            problems.append(f"{node.name}: rules of dead pods {sorted(rule_ips - pod_ips)}")
        routes = run_json(cluster, node, "ip", "-j", "route", "show", "table", "main")
        route_ips = {r["dst"] for r in routes if r.get("dev", "").startswith("ulay")}
        if route_ips != pod_ips:
            problems.append(f"{node.name}: pod routes {sorted(route_ips ^ pod_ips)} differ")
    if len(all_allocated) != len(set(all_allocated)):
        problems.append(f"an IP is allocated twice: {sorted(all_allocated)}")
    ours = [e for e in snapshot["enis"]
            if e["tags"].get(TAG_CLUSTER) == cluster.world.cluster and not e["instance_id"]]
    if ours:
        problems.append(f"ENIs of ours left unattached: {[e['id'] for e in ours]}")
    return problems


def log_evidence(cluster: Cluster, problems: list[str], limit: int = 40) -> list[str]:
    """The agents' log lines that mention an address named in ``problems``."""
    ips = set(re.findall(r"10\.\d+\.\d+\.\d+", " ".join(problems)))
    lines = []
    for node in cluster.nodes:
        log = node.workdir / "agent.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        lines += [f"{node.name}: {line}" for line in text.splitlines()
                  if any(f"{ip} " in f"{line} " or f"{ip}/" in line for ip in ips)]
    return lines[-limit:]


def check_reachable(cluster: Cluster) -> list[str]:
    problems = []
    live = list(cluster.pods.values())
    for pod in live:
        if not wait_until(lambda: ping(cluster, pod.node, pod.ip), 5.0):
            problems.append(f"pod {pod.name} {pod.ip} does not answer its node")
    by_node = {n.name: [p for p in live if p.node.name == n.name] for n in cluster.nodes}
    first, second = (by_node[n.name] for n in cluster.nodes[:2])
    if not (first and second):
        problems.append(f"no live pod on one of the nodes: {by_node}")
    elif not wait_until(lambda: ping(cluster, first[0], second[0].ip), 5.0):
        problems.append(f"pod {first[0].name} cannot reach {second[0].name} {second[0].ip}")
    return problems


# -- the test ------------------------------------------------------------------------------
def run_chaos(kills: int) -> None:
    with Cluster(nodes=2, subnet_cidrs=("10.0.0.0/24", "10.0.1.0/24")) as cluster, \
            FakeApiServer() as api:
        assert cluster.cloud is not None
        kube = Kube(cluster, api)
        full_node = cluster.nodes[1]
        with tmpfs_at(full_node.workdir / "state", STATE_TMPFS):
            for node in cluster.nodes:
                kube.register(node)
                cluster.run_agent(node, kube.overrides(node, AGENT_OVERRIDES))
            control = cluster.cloud.control
            control.set_attach_latency(ATTACH_LATENCY)
            control.set_faults(FAULTS, seed=SEED)
            stats, stop, disruptions = Stats(), threading.Event(), Disruptions()
            rng = random.Random(SEED)
            terminating: list[list[Pod]] = [[] for _ in cluster.nodes]
            workers = [threading.Thread(target=churn, args=(
                kube, node, random.Random(SEED + i), stop, stats, terminating[i]))
                for i, node in enumerate(cluster.nodes)]
            workers.append(threading.Thread(target=disrupt, args=(
                api, stop, random.Random(SEED - 1), disruptions)))
            for worker in workers:
                worker.start()
            try:
                kill_loop(kube, kills, rng, stats, full_node)
            finally:
                stop.set()
                for worker in workers:
                    worker.join(timeout=120)
            assert not any(w.is_alive() for w in workers)
            control.clear_faults()
            for node in cluster.nodes:
                ensure_agent(kube, node)
            for pods in terminating:  # the runtime retries failed DELs until they succeed
                for pod in list(pods):
                    kube.del_pod(pod)
            stale_after_churn = len(stale_allocations(kube))
            stale = wait_for_pod_gc(kube, POD_GC_SECONDS)
            assert not stale, "pod GC left allocations of pods gone from the API server:\n" \
                + "\n".join(stale + log_evidence(cluster, stale))
            pod_gc = count_log_lines(cluster, "pod GC: released")
            orphans = 0
            for node in cluster.nodes:  # the runtime's GC with the pods it still has
                live = [p for p in cluster.pods.values() if p.node.name == node.name]
                orphans += len(cluster.agent_get(node, "/v1/pods")[1]) - len(live)
                collect_garbage(cluster, node, live)
            for node in cluster.nodes:  # pods that must be wired right after the chaos
                for i in range(FINAL_PODS_PER_NODE):
                    kube.add_pod(node, f"f{node.index}n{i}")
            problems: list[str] = []

            def holds() -> bool:
                problems[:] = find_violations(kube)
                return not problems

            settled = wait_until(holds, SETTLE_SECONDS, step=1.0)
            print(f"chaos: {stats.kills} kills, {stats.adds} ADDs ({stats.failed_adds} failed,"
                  f" {stats.sabotaged} sabotaged), {stats.lost} sandboxes lost without DEL, {stats.dels} DELs ({stats.failed_dels} "
                  f"failed), {stats.disk_full_failures} failures while the disk was full, "
                  f"namespace deleted during ADD: {stats.sabotage}, "
                  f"{len(cluster.pods)} pods live, {orphans} allocations of dead pods "
                  f"released by CNI GC; refused by EC2: "
                  f"{sum(control.refused_counts().values())}")
            print(f"API server: {disruptions.drops} watch drops, {disruptions.compactions} "
                  f"compaction, {disruptions.outages} outage; agents relisted after 410 "
                  f"{count_log_lines(cluster, '; relisting')} times; pod GC released "
                  f"{pod_gc} allocations, reconcile (netns gone) "
                  f"{count_log_lines(cluster, ' is gone)')} ({stale_after_churn} stale right "
                  "after the churn)")
            print(f"disk full: agent exited {stats.disk_full_agent_exited}; last errors:\n"
                  + "\n".join(stats.disk_full_errors))
            assert settled, "\n".join(problems + ["-- agent log lines about them:"]
                                       + log_evidence(cluster, problems))
            assert check_reachable(cluster) == []
            assert stats.kills == kills
            assert stats.adds >= kills, f"too little churn to mean anything: {stats}"
            assert stats.sabotaged >= 1
            assert disruptions.compactions == 1 and disruptions.outages == 1, disruptions
            assert disruptions.drops >= 3, disruptions
            assert stats.lost >= 1 and pod_gc >= 1, f"pod GC never ran: {stats}"


@pytest.mark.parametrize("kills", [
    pytest.param(5, id="fast"),
    pytest.param(20, id="full", marks=[pytest.mark.chaos, pytest.mark.skipif(
        os.environ.get("UNDERLAY_CHAOS") != "full", reason="the full run is `make chaos`")]),
])
def test_invariants_hold_after_kills_faults_vanishing_netns_and_a_full_disk(kills: int):
    run_chaos(kills)
