"""Borrow round-trip over the agent socket, and the cloud calls to warm a fresh node.

    .venv/bin/python -m bench.bench_borrow [-n 300] [--warm 16]

Starts the emulated EC2 (127.0.0.1 only) and one agent process (datapath none: IPAM only,
nothing touches the kernel), counts the EC2 calls from the agent's start until the pool
holds its warm target, then times ``n`` attaches (each one a borrow committed to SQLite
before the reply) of distinct pods over the unix socket, while the pool refills in the
background. Reference measured in the same run on the same socket: ``GET /v1/status``
(a round-trip that reads the pool but writes nothing). Prints median and p99 of both and
their ratio, and a JSON line. The same arithmetic through AWS VPC CNI's default
(WARM_ENI_TARGET=1) is printed for the warm-up, from the policy functions.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import build_world
from ipam_daemon.client import AgentClient
from bench.aws_policy import decide_pool
from ipam_daemon.policy import EniCounts, Kind, Limits, Targets, decide

INSTANCE = "m5.24xlarge"  # 15 ENIs x 50 IPs: room for the pods of a long run


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def warmup_calls(policy, targets: Targets, limits: Limits) -> tuple[int, int]:
    """(cloud calls, addresses held) to warm a fresh node, replaying a policy."""
    enis = [[0, True]]  # free addresses, primary
    calls = 0
    for _ in range(100):
        counts = tuple(EniCounts(f"eni-{i}", limits.secondary_per_eni, free=e[0],
                                 is_primary=e[1], age_seconds=0) for i, e in enumerate(enis))
        action = policy(counts, targets, limits)
        if action.kind is Kind.ASSIGN:
            enis[int(action.eni_id.split("-")[1])][0] += action.count
            calls += 1
        elif action.kind is Kind.CREATE_ENI:
            enis.append([action.count, False])
            calls += 3  # create, attach, modify (delete on termination)
        else:
            break
    return calls, sum(e[0] for e in enis)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="borrows to time (>= 200)")
    parser.add_argument("--warm", type=int, default=16, help="warm_ips target")
    args = parser.parse_args(argv)
    if args.n < 1 or args.n > 600:
        parser.error("-n must be between 1 and 600 (the node's capacity)")
    emulator = EmulatedCloud.start(port=0, settings=EmulatorSettings(buckets_enabled=False))
    workdir = Path(tempfile.mkdtemp(prefix="bench-borrow-"))
    proc = None
    try:
        world = build_world(emulator.endpoint, region=emulator.region, cluster="bench",
                            instance_type=INSTANCE, subnet_cidrs=("10.0.0.0/20",))
        config = {"cluster": "bench", "instance_id": world.instances[0].instance_id,
                  "region": emulator.region, "cloud_endpoint": emulator.endpoint,
                  "datapath": "none", "warm_ips": args.warm, "pool_interval": 0.5,
                  "socket_path": str(workdir / "agent.sock"),
                  "state_path": str(workdir / "ipam.db"), "status_port": 0, "metrics_port": 0,
                  "log_level": "WARNING"}
        (workdir / "agent.json").write_text(json.dumps(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "UNDERLAY_"))}
        env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_EC2_METADATA_DISABLED="true")
        emulator.control.reset_counts()
        started = time.monotonic()
        with open(workdir / "agent.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ipam_daemon.main", "--config",
                                     str(workdir / "agent.json")], stdout=log, stderr=log,
                                    env=env)
        client = AgentClient(config["socket_path"], timeout=30)
        wait_for(lambda: client.get("/v1/pool")[1]["available"] >= args.warm, 60,
                 "the warm pool")
        warm_seconds = time.monotonic() - started
        calls = emulator.control.call_counts()
        mutating = {k: v for k, v in calls.items() if not k.startswith("Describe")}

        status_ms, borrow_ms = [], []
        for i in range(args.n):
            t = time.perf_counter()
            code, _ = client.get("/v1/status")
            status_ms.append((time.perf_counter() - t) * 1000)
            body = {"api": 1, "cni_version": "1.0.0", "network": "bench",
                    "container_id": f"bench{i}", "ifname": "eth0", "netns": f"/bench/{i}",
                    "mode": "veth", "pod_namespace": "bench", "pod_name": f"p{i}"}
            t = time.perf_counter()
            code, reply = client.post("/v1/attach", body)
            borrow_ms.append((time.perf_counter() - t) * 1000)
            if code != 200:
                raise RuntimeError(f"borrow {i} failed: {reply}")

        limits = Limits(max_enis=15, ips_per_eni=50)
        ours = warmup_calls(decide, Targets(warm_ips=args.warm), limits)
        aws = warmup_calls(decide_pool, Targets(warm_ips=0, warm_enis=1), limits)
        result = {
            "n": args.n,
            "borrow_ms_median": round(statistics.median(borrow_ms), 3),
            "borrow_ms_p99": round(percentile(borrow_ms, 0.99), 3),
            "status_ms_median": round(statistics.median(status_ms), 3),
            "status_ms_p99": round(percentile(status_ms, 0.99), 3),
            "borrow_over_status_median": round(statistics.median(borrow_ms)
                                               / statistics.median(status_ms), 2),
            "warm_target": args.warm,
            "warmup_cloud_calls": sum(calls.values()),
            "warmup_mutating_calls": mutating,
            "warmup_seconds_incl_process_start": round(warm_seconds, 2),
            "policy_replay_warmup": {"underlay": {"calls": ours[0], "held": ours[1]},
                                     "aws_warm_eni_1": {"calls": aws[0], "held": aws[1]}},
        }
        print(f"borrow over the socket (n={args.n}): median {result['borrow_ms_median']} ms,"
              f" p99 {result['borrow_ms_p99']} ms")
        print(f"reference GET /v1/status: median {result['status_ms_median']} ms,"
              f" p99 {result['status_ms_p99']} ms; borrow/status median ratio"
              f" {result['borrow_over_status_median']}")
        print(f"warming a fresh {INSTANCE} node to {args.warm} IPs: {sum(calls.values())}"
              f" EC2 calls ({json.dumps(calls, sort_keys=True)})")
        print(f"policy replay, fresh node: underlay {ours[0]} mutating call(s) holding"
              f" {ours[1]} IPs; AWS WARM_ENI_TARGET=1 {aws[0]} holding {aws[1]}")
        print(json.dumps(result, sort_keys=True))
        client.close()
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        emulator.stop()
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    sys.exit(main())
