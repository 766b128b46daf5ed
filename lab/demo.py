"""``make demo``: two emulated nodes in an emulated VPC, one underlay agent and one
containerd on each, a few pods per node created as the kubelet creates them (RunPodSandbox
over the CRI; containerd runs the underlay CNI plugin), pings between pods on different
nodes, and each node's pool as ``underlay-status`` prints it. Everything lives in network
namespaces and directories named after the run and is removed at the end, also on Ctrl-C
or SIGTERM (after a hard kill: ``make clean-net``). Needs root; takes about ten seconds.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

from lab import cleanup
from lab.ec2.addresses import usable_range
from lab.fabric_plan import name_router_link
from lab.harness import Cluster
from ipam_daemon.cli import fetch_pool, format_pool
from lab.containerd import (RuntimePod, install_underlay, node_runtimes, remove_pod, run_pod,
                            wait_network_ready)

logger = logging.getLogger(__name__)

VPC_CIDR = "10.0.0.0/16"
SUBNETS = ("10.0.0.0/24", "10.0.1.0/24")
# small intervals so the pools settle in seconds (an agent's defaults are minutes);
# t3.small holds 3 secondary addresses per ENI, so the fourth pod of a node needs a second ENI
AGENT = {"warm_ips": 1, "batch_size": 1, "vpc_cidrs": [VPC_CIDR]}
INSTANCE_TYPE = "t3.small"
_RTT = re.compile(r"round-trip min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms")

INTRO = f"""\
underlay demo: pods with real VPC addresses, no overlay.
  An emulated EC2 (moto behind a strict EC2 layer) holds a VPC {VPC_CIDR} with subnets
  {', '.join(SUBNETS)} and 2 {INSTANCE_TYPE} instances. Each instance is a network namespace;
  each ENI attached to it is a link carrying the ENI's MAC, plugged into a namespace that
  plays the VPC router, whose routes follow the emulated cloud. An underlay agent and a
  containerd run in each node; pods are created as the kubelet creates them (RunPodSandbox
  over the CRI), and containerd runs the underlay CNI plugin, which asks the node's agent
  for an address from its warm pool.
"""

OUTRO_ADDRESSES = """\
What you saw: each pod's address is a secondary private IP the agent assigned on one of its
node's ENIs through the EC2 API."""
OUTRO_SECOND_ENI = """ A t3.small ENI holds 3 of them, so each node's fourth
pod got its address on a second ENI (eth1) that the agent created and attached through EC2
(see the pool tables)."""
OUTRO_PATH = """
Pings between nodes went pod -> node -> the ENI that owns the pod's IP -> VPC router -> the
ENI of the destination node -> pod, with the pods' own addresses: no tunnel, no NAT. The
router routes only addresses the cloud assigned and drops packets whose source the ENI does
not own (EC2's source/destination check): the forged address got no reply.
"""


def say(text: str = "") -> None:
    print(text, flush=True)


def ping_line(source: RuntimePod, target: RuntimePod) -> tuple[bool, str]:
    proc = source.exec(["busybox", "ping", "-c", "2", "-W", "2", target.ip])
    rtt = _RTT.search(proc.stdout)
    received = re.search(r"(\d+) packets received", proc.stdout)
    got = received.group(1) if received else "0"
    detail = f"{got}/2 replies" + (f", avg {rtt.group(2)} ms" if rtt else "")
    return proc.returncode == 0, (f"  {source.name} {source.ip:<12} ({source.node.name}) -> "
                                  f"{target.name} {target.ip:<12} ({target.node.name}): {detail}")


def show_pods(cluster: Cluster, pods: Sequence[RuntimePod]) -> None:
    say("Pods (address, node, ENI that holds the address, its link on the node):")
    for pod in pods:
        _, listed = cluster.agent_get(pod.node, "/v1/pods")
        _, enis = cluster.agent_get(pod.node, "/v1/enis")
        eni_id = next(p["eni"] for p in listed if p["ip"] == pod.ip)
        device = next(e["device_index"] for e in enis if e["id"] == eni_id)
        say(f"  {pod.name:<4} {pod.ip:<12} {pod.node.name:<22} {eni_id}  eth{device}")
    say()


def show_router_routes(cluster: Cluster, pods: Sequence[RuntimePod]) -> None:
    assert cluster.fabric is not None
    links = {}
    for node in cluster.nodes:
        _, enis = cluster.agent_get(node, "/v1/enis")
        for eni in enis:
            links[name_router_link(eni["id"])] = f"{eni['id']} of {node.name}"
    say("The VPC router's routes for the pod addresses (from the cloud's state):")
    for pod in pods:
        out = cluster.exec_in(cluster.fabric.router, ["ip", "route", "show", f"{pod.ip}/32"])
        dev = out.stdout.split(" dev ")[1].split()[0] if " dev " in out.stdout else "?"
        say(f"  {pod.ip:<12} -> {links.get(dev, dev)}")
    say()


def list_leftovers(prefix: str) -> list[str]:
    """Namespaces and run files of this run still on the machine."""
    left = []
    for directory in (cleanup.NETNS_DIR, cleanup.STATE_DIR):
        if directory.is_dir():
            left += sorted(str(directory / n) for n in os.listdir(directory)
                           if n.startswith(prefix))
    return left


def pick_unassigned(cluster: Cluster, subnet_id: str) -> str:
    """The highest usable address of the subnet that no ENI or instance holds."""
    assert cluster.cloud is not None
    snapshot = cluster.cloud.snapshot()
    cidr = next(s["cidr"] for s in snapshot["subnets"] if s["id"] == subnet_id)
    used = {ip for eni in snapshot["enis"] for ip in eni["ips"]}
    used |= {i["private_ip"] for i in snapshot["instances"]}
    return next(str(ipaddress.IPv4Address(a)) for a in reversed(usable_range(cidr))
                if str(ipaddress.IPv4Address(a)) not in used)


def show_source_check(cluster: Cluster, pod: RuntimePod, target: RuntimePod) -> bool:
    """Give ``pod`` an address the cloud never assigned and ping: the VPC router drops it.
    True when it was dropped; the pod gets its own address back either way."""
    forged = pick_unassigned(cluster, pod.node.subnet_id)
    say(f"Source/destination check: {pod.name} takes {forged} (never assigned by the cloud) "
        f"instead of {pod.ip}:")
    try:
        for cmd in (["ip", "addr", "add", f"{forged}/32", "dev", "eth0"],
                    ["ip", "addr", "del", f"{pod.ip}/32", "dev", "eth0"]):
            if pod.exec(cmd).returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} in {pod.name} failed")
        proc = pod.exec(["busybox", "ping", "-c", "1", "-W", "1", target.ip])
    finally:
        pod.exec(["ip", "addr", "add", f"{pod.ip}/32", "dev", "eth0"])
        pod.exec(["ip", "addr", "del", f"{forged}/32", "dev", "eth0"])
    dropped = proc.returncode != 0
    verdict = ("no reply (the VPC router drops sources their ENI does not own)" if dropped
               else "REPLY (the check is not enforced)")
    say(f"  {pod.name} {forged} -> {target.name} {target.ip}: {verdict}")
    ok, line = ping_line(pod, target)
    say(f"  with its own address again:\n{line}\n")
    return dropped and ok


def run_demo(pods_per_node: int, prefix: str) -> int:
    say(INTRO)
    started = time.monotonic()
    with Cluster(nodes=2, instance_type=INSTANCE_TYPE, vpc_cidr=VPC_CIDR,
                 subnet_cidrs=SUBNETS, prefix=prefix) as cluster, \
            node_runtimes(cluster) as runtimes:
        for node in cluster.nodes:
            say(f"node {node.name}: instance {node.instance_id}, primary IP "
                f"{node.primary_ip}, namespace {node.netns}")
        for runtime in runtimes:
            cluster.run_agent(runtime.node, AGENT)
            install_underlay(runtime, runtime.node.socket_path, portmap=False, bandwidth=False)
            wait_network_ready(runtime)
        say(f"agents ready and containerd's network ready on both nodes "
            f"({time.monotonic() - started:.1f}s)\n")
        pods = [run_pod(runtime, f"{'ab'[runtime.node.index]}{i}")
                for runtime in runtimes for i in range(pods_per_node)]
        show_pods(cluster, pods)
        show_router_routes(cluster, pods)
        say("Pings between pods on different nodes (busybox ping -c 2 inside the pod):")
        left = [p for p in pods if p.node is cluster.nodes[0]]
        right = [p for p in pods if p.node is cluster.nodes[1]]
        failures = 0
        for a, b in zip(left, right):
            for source, target in ((a, b), (b, a)):
                ok, line = ping_line(source, target)
                failures += not ok
                say(line + ("" if ok else "  FAILED"))
        say()
        failures += not show_source_check(cluster, right[0], left[0])
        for node in cluster.nodes:
            say(f"underlay-status on {node.name}:")
            say(format_pool(fetch_pool(None, node.socket_path)))
            say()
        say(OUTRO_ADDRESSES + (OUTRO_SECOND_ENI if pods_per_node >= 4 else "") + OUTRO_PATH)
        say("Cleaning up: pods (StopPodSandbox, RemovePodSandbox), containerd, agents, "
            "namespaces ...")
        for pod in pods:
            remove_pod(runtimes[pod.node.index], pod)
    left = list_leftovers(prefix)
    if left:
        say(f"left behind (remove with `make clean-net`): {', '.join(left)}")
    else:
        say(f"Done in {time.monotonic() - started:.1f}s; nothing of the run ({prefix}-*) is left.")
    if failures:
        say(f"{failures} checks failed")
    return 0 if not failures and not left else 1


def raise_interrupt(signum: int, _frame: object) -> None:
    """First Ctrl-C or SIGTERM: unwind (the cluster cleans up on the way out); further ones
    are ignored so they cannot cut the cleanup short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=4, help="pods per node (1-6, default 4)")
    parser.add_argument("--verbose", action="store_true", help="log what the harness does")
    args = parser.parse_args(argv)
    if not 1 <= args.pods <= 6:
        parser.error(f"--pods must be between 1 and 6, got {args.pods}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if os.geteuid() != 0:
        print("lab.demo: needs root (it creates network namespaces); run `sudo make demo`",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, raise_interrupt)
    signal.signal(signal.SIGINT, raise_interrupt)
    prefix = cleanup.new_prefix()
    try:
        return run_demo(args.pods, prefix)
    except KeyboardInterrupt:
        left = list_leftovers(prefix)
        print("\ninterrupted; " + (f"left behind (make clean-net removes it): {left}" if left
                                   else f"nothing of the run ({prefix}-*) is left"),
              file=sys.stderr)
        return 130
    except (subprocess.SubprocessError, RuntimeError, OSError) as exc:
        print(f"lab.demo failed: {exc}\n(anything left over: make clean-net)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
