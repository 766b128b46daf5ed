"""ADD and DEL latency through libcni: underlay (executable + agent, veth datapath) against
the reference plugins ptp + host-local, measured in the same run on the same node.

    .venv/bin/python -m bench.bench_cni_latency [-n 50]

A one-node cluster of the emulated cloud (``lab.harness``) runs the agent in its
node namespace. Each round makes a sandbox (a new pod namespace, untimed), execs
``libcni-client add`` then ``del`` inside the node namespace (``ip netns exec``, as a
runtime on the node), then removes the sandbox (untimed), as a runtime does for every pod;
rounds alternate between the underlay conflist and a ptp + host-local conflist
(addresses from a range that exists only inside the node namespace). Wall time per libcni exec,
median and p99, and the ratio underlay / reference. The pool is kept warm (warm_ips) so
that ADD measures the node path, not EC2 calls. Needs root; leaves nothing behind.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from lab.harness import REFERENCE_PLUGINS, Cluster


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"libcni {argv[5]} failed: {proc.stdout} {proc.stderr}")
    return elapsed, proc.stdout


def verify_wired(pod_netns: str, result: str) -> None:
    """The ADD really wired the pod: its address is on eth0 in the pod namespace."""
    address = json.loads(result)["ips"][0]["address"]
    shown = subprocess.run(["ip", "-n", pod_netns, "-o", "addr", "show", "dev", "eth0"],
                           capture_output=True, text=True, check=False).stdout
    if address not in shown:
        raise RuntimeError(f"ADD returned {address} but eth0 in {pod_netns} has: {shown!r}")


def make_sandbox(cluster: Cluster, name: str) -> str:
    """A pod network namespace of the cluster's run (removed by its cleanup if we die)."""
    assert cluster.record is not None
    cluster.record.add_netns(name)
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
    return name


def run_rounds(cluster: Cluster, node, conflist: str, cache: Path, rounds: int,
               tag: str, sandboxes: list[str] | None = None) -> tuple[list[float], list[float]]:
    """``rounds`` pods, each in a sandbox of its own: ADD and DEL timed (ms), the sandbox's
    creation and removal not. ``sandboxes``: made (and removed) by the caller instead."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "CNI_PATH": f"{cluster.cni_bin_dir}:{REFERENCE_PLUGINS}",
           "LIBCNI_CACHE_DIR": str(cache)}
    adds, dels = [], []
    for i in range(rounds):  # the first ADD of each call is checked to have wired the pod
        cid = f"{cluster.prefix}{tag}x{i:04d}"
        sandbox = sandboxes[i] if sandboxes else \
            make_sandbox(cluster, f"{cluster.prefix}-s{tag}x{i:04d}")
        args = [f"/run/netns/{sandbox}", cid, "eth0",
                f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={tag}-{i}"]
        base = ["ip", "netns", "exec", node.netns, cluster.libcni_client]
        elapsed, result = timed([*base, "add", conflist, *args], env)
        if i == 0:
            verify_wired(sandbox, result)
        adds.append(elapsed)
        dels.append(timed([*base, "del", conflist, *args], env)[0])
        if not sandboxes:
            subprocess.run(["ip", "netns", "delete", sandbox], check=True, timeout=30)
    return adds, dels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="ADD+DEL rounds per plugin")
    args = parser.parse_args()
    with Cluster(nodes=1, subnet_cidrs=("10.0.0.0/24",)) as cluster:
        node = cluster.nodes[0]
        cluster.run_agent(node, {"warm_ips": 8, "cooldown_seconds": 0.1, "snat": False})
        reference = node.workdir / "ptp.conflist"
        reference.write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "bench-ptp", "plugins": [{
                "type": "ptp", "ipMasq": False,
                "ipam": {"type": "host-local", "dataDir": str(node.workdir / "host-local"),
                         "ranges": [[{"subnet": "10.254.0.0/24"}]]}}]}))
        underlay = cluster.conflist_for(node)
        plugins = {"underlay": underlay, "ptp+host-local": str(reference)}
        results = {name: ([], []) for name in plugins}
        for tag, conflist in plugins.items():  # warm-up, and a check that ADD really wires
            run_rounds(cluster, node, conflist, node.workdir / "cw", 3, tag[0] + "w")
        # interleaved rounds, so that both see the same machine load
        for i in range(args.n):
            for name, conflist in plugins.items():
                adds, dels = run_rounds(cluster, node, conflist, node.workdir / "c", 1,
                                        f"{name[0]}{i:04d}")
                results[name][0].extend(adds)
                results[name][1].extend(dels)
    print(f"ADD/DEL through libcni, n={args.n} each, ms per libcni exec "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
    for name, (adds, dels) in results.items():
        print(f"  {name:16s} ADD median {statistics.median(adds):7.1f} p99 "
              f"{percentile(adds, 0.99):7.1f}   DEL median {statistics.median(dels):7.1f} "
              f"p99 {percentile(dels, 0.99):7.1f}")
    (ua, ud), (ra, rd) = results["underlay"], results["ptp+host-local"]
    print(f"  ratio underlay / reference: ADD median {statistics.median(ua) / statistics.median(ra):.2f}x"
          f" p99 {percentile(ua, 0.99) / percentile(ra, 0.99):.2f}x;"
          f" DEL median {statistics.median(ud) / statistics.median(rd):.2f}x"
          f" p99 {percentile(ud, 0.99) / percentile(rd, 0.99):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
