"""Where an ADD's time goes: the libcni ADD of underlay split into its parts by timing each
part alone in the same run, interleaved round by round (medians, ms):

    .venv/bin/python -m bench.run --only add_breakdown

- ``ip netns exec`` wrapper: ``ip netns exec <node> true`` (the harness's way onto the node;
  the reference pays it too);
- executable start-up: the ``underlay`` executable (the static Go shim) answering VERSION,
  minus the wrapper;
- agent, IPAM only: POST /v1/attach (fresh connection, as the executable makes) to an agent
  with ``datapath: none`` on a second node: socket round trip + borrow + commit (the shim's
  POST /v1/cni adds only the agent's parse of the environment and netconf to this);
- datapath wiring: the same POST to the veth agent minus the IPAM-only one (setup_pod: veth
  pair, addresses, routes, rules, neighbour);
- libcni and the rest: the libcni ADD minus all of the above (the Go client, conflist
  parsing, result caching, the invocation's parse and result in the agent);
- beside it the whole libcni ADD of ptp + host-local.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import time

from bench.bench_agent_resources import write_reference_conflist
from bench.bench_cni_latency import make_sandbox, run_rounds
from lab.harness import Cluster
from ipam_daemon.client import AgentClient

logger = logging.getLogger(__name__)

ROUNDS = 60
QUICK_ROUNDS = 15


def time_exec(argv: list[str], stdin: str = "", env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=True,
                   env=env)
    return (time.perf_counter() - started) * 1000


def time_attach(socket_path: str, body: dict) -> float:
    """ms for one attach over a fresh connection, then detach (untimed)."""
    client = AgentClient(socket_path, timeout=30.0)
    try:
        started = time.perf_counter()
        status, reply = client.post("/v1/attach", body)
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200:
            raise RuntimeError(f"attach answered {status}: {reply}")
        status, reply = client.post("/v1/detach", {k: body[k] for k in (
            "api", "network", "container_id", "ifname", "netns")})
        if status != 200:
            raise RuntimeError(f"detach answered {status}: {reply}")
        return elapsed
    finally:
        client.close()


def run(out: dict, *, quick: bool = False) -> None:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    samples: dict[str, list[float]] = {k: [] for k in (
        "wrapper", "version", "ipam_only", "attach_veth", "libcni_underlay", "libcni_ptp")}
    with Cluster(nodes=2, subnet_cidrs=("10.0.0.0/24", "10.0.1.0/24")) as cluster:
        assert cluster.record is not None
        veth_node, ipam_node = cluster.nodes
        overrides = {"warm_ips": 8, "cooldown_seconds": 0.1, "snat": False}
        cluster.run_agent(veth_node, overrides)
        cluster.run_agent(ipam_node, {**overrides, "datapath": "none"})
        conflist = json.loads(open(cluster.conflist_for(veth_node)).read())
        network = conflist["name"]
        reference = write_reference_conflist(veth_node.workdir / "ptp.conflist",
                                             veth_node.workdir / "host-local")
        plugin = os.path.join(cluster.cni_bin_dir, "underlay")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": "VERSION"}
        on_node = ["ip", "netns", "exec", veth_node.netns]
        for i in range(-2, rounds):  # two warm-up rounds, not kept
            keep = i >= 0
            sandbox = make_sandbox(cluster, f"{cluster.prefix}-sbrk{i + 2:04d}")
            body = {"api": 1, "cni_version": "1.0.0", "network": network,
                    "container_id": f"{cluster.prefix}brk{i + 2:04d}", "ifname": "eth0",
                    "netns": f"/run/netns/{sandbox}", "mode": "veth",
                    "pod_namespace": "bench", "pod_name": f"brk-{i + 2}"}
            figures = {
                "wrapper": time_exec([*on_node, "true"]),
                "version": time_exec([*on_node, plugin], '{"cniVersion": "1.0.0"}', env),
                "ipam_only": time_attach(ipam_node.socket_path, {**body, "mode": "none"}),
                "attach_veth": time_attach(veth_node.socket_path, body),
                "libcni_underlay": run_rounds(cluster, veth_node, cluster.conflist_for(
                    veth_node), veth_node.workdir / "c", 1, f"u{i + 2:04d}")[0][0],
                "libcni_ptp": run_rounds(cluster, veth_node, reference,
                                         veth_node.workdir / "c", 1, f"p{i + 2:04d}")[0][0],
            }
            subprocess.run(["ip", "netns", "delete", sandbox], check=True, timeout=30)
            if keep:
                for key, value in figures.items():
                    samples[key].append(value)
    med = {k: statistics.median(v) for k, v in samples.items()}
    parts = {
        "ip netns exec wrapper": med["wrapper"],
        "executable start-up (VERSION)": med["version"] - med["wrapper"],
        "agent: socket + borrow + commit": med["ipam_only"],
        "agent: datapath wiring (setup_pod)": med["attach_veth"] - med["ipam_only"],
    }
    parts["libcni and the rest"] = med["libcni_underlay"] - sum(parts.values())
    total = med["libcni_underlay"]
    out.update({"rounds": rounds, "median_ms": {k: round(v, 2) for k, v in med.items()},
                "parts_ms": {k: round(v, 2) for k, v in parts.items()},
                "reference_name": "ptp+host-local ADD"})
    out["rows"] = [{"metric": f"ADD part: {name} (ms, median of {rounds})",
                    "underlay": round(value, 1),
                    "also": f"{100 * value / total:.0f}% of underlay's ADD"}
                   for name, value in parts.items()]
    out["rows"].append({"metric": "ADD total through libcni (ms)", "underlay": round(total, 1),
                        "reference": round(med["libcni_ptp"], 1),
                        "ratio": round(total / med["libcni_ptp"], 2)})
    logger.info("add breakdown: %s", out["parts_ms"])
