"""Pool efficiency over a churn trace: underlay's default policy against AWS VPC CNI's static
watermark policies, replayed on the same simulated m5.large node.

    .venv/bin/python -m bench.pool_efficiency [--seeds 3] [--first-seed 1] [--hours 6]
                                              [--create-latency 3]

Policies (the real functions, imported):
- underlay: the agent's own ``ipam_daemon.stepper.PoolStepper`` (its gates, back-off and
  reconcile/GC schedule around ``ipam_daemon.policy.decide``) with the agent's default
  targets and intervals (``ipam_daemon.config.AgentConfig()``), as ``ipam_daemon.pool.Pool``
  drives it on a node;
- aws-default: WARM_ENI_TARGET=1 through ``bench.aws_policy`` (ipamd's arithmetic);
- aws-warm-ip: WARM_IP_TARGET=5, MINIMUM_IP_TARGET=10, same arithmetic.

Reports, summed over the seeds: idle IP-seconds, pool misses (ADDs that waited for a cloud
call or a cooldown), mutating EC2 calls by action, ADD wait p50/p99; and the ratios
underlay / aws-default. underlay's reconciles and leaked-ENI GCs are Describe calls
(``describes``, 0.1 s each, not among the mutating calls); ipamd's own reconcile is not
modelled. The issue's target: at most a third of the idle IP-seconds, no more
misses, no more cloud calls.

The policy's constants (two-batch band, headroom 4, +1 warm in a burst, eni_min_age 7200) were
tuned on seeds 1-3 at 3 s; seeds 4-8 and create latencies of 1 s and 10 s are held out
(``--first-seed 4 --seeds 5``, ``--create-latency``). Underlay / aws-default, 6 h per seed:

    seeds  latency  idle IP-s  misses    mutating calls
    1-3    3 s      0.527x     0 vs 1    224 vs 220
    1-3    1 s      0.526x     0 vs 0    224 vs 220
    1-3    10 s     0.532x     15 vs 30  220 vs 220
    4-8    3 s      0.529x     1 vs 2    346 vs 439
    4-8    1 s      0.526x     1 vs 0    346 vs 419
    4-8    10 s     0.526x     19 vs 35  346 vs 419

(before the hysteresis: 0.417x, 67 vs 1 misses, 611 vs 220 calls on seeds 1-3 at 3 s). Until
the stepper was shared, a copy of the loop in bench/ gave 0.528x, 0 vs 1, 223 vs 220 on
seeds 1-3 at 3 s; the stepper, with the old timing and free Describes, gives exactly those;
the shipped loop's differences (a gated step sleeps to the gate's end, the reconcile
minute's Describes hold the loop) move idle by under 1% and calls by 1-2. The idle target
(a third) is missed: the band keeps warm + 0..2 batches free (mean 6.56 idle IPs against
AWS's 12.4); a narrower band or a lower release point costs calls or misses on this trace,
and the calls on seeds 1-3 are 1% over (without the burst surge: 216 calls but 2 misses).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass

from ipam_daemon import policy
from ipam_daemon.config import AgentConfig
from ipam_daemon.policy import Targets

from bench import aws_policy
from bench.node_sim import SimConfig, SimResult
from bench.pool_loops import aws_loop, simulate, underlay_loop
from bench.trace import make_trace

logger = logging.getLogger(__name__)

NAME = "pool_efficiency"


def underlay_targets(config: AgentConfig | None = None) -> Targets:
    """The targets the agent's pool loop builds from its configuration (pool.Pool)."""
    return (config or AgentConfig()).pool


def sim_config(create_latency: float = 3.0, config: AgentConfig | None = None) -> SimConfig:
    """The simulated node with the agent's intervals (the stepper's gates and schedule)."""
    c = config or AgentConfig()
    return SimConfig(create_eni_latency=create_latency, cooldown=c.cooldown_seconds,
                     pool_interval=c.pool_interval, shrink_interval=c.shrink_interval,
                     reconcile_interval=c.reconcile_interval,
                     leaked_eni_interval=c.leaked_eni_interval,
                     subnet_full_backoff=c.subnet_full_backoff, max_backoff=c.max_backoff,
                     prefix_delegation=c.prefix_delegation)


def trace_plan(quick: bool = False) -> tuple[list[int], float]:
    """The seeds and hours per seed ``make bench`` replays (``--quick``: one short trace)."""
    return ([1], 2.0) if quick else ([1, 2, 3], 6.0)


AWS_DEFAULT = Targets(warm_ips=0, min_ips=0, warm_enis=1, eni_min_age=60.0)
AWS_WARM_IP = Targets(warm_ips=5, min_ips=10, warm_enis=0, eni_min_age=60.0)


def policies():
    return {
        "underlay": underlay_loop(policy.decide, underlay_targets()),
        "aws-default": aws_loop(aws_policy.decide_pool, aws_policy.decide_free_eni, AWS_DEFAULT),
        "aws-warm-ip": aws_loop(aws_policy.decide_pool, aws_policy.decide_free_eni,
                                AWS_WARM_IP),
    }


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass(frozen=True)
class Summary:
    name: str
    idle_ip_seconds: float
    cooling_ip_seconds: float
    mean_idle_ips: float
    misses: int
    adds: int
    calls: dict[str, int]
    wait_p50: float
    wait_p99: float
    peak_held: int
    describes: int  # DescribeNetworkInterfaces (reconcile, leaked-ENI GC), not mutating
    peak_enis: int = 1
    mean_enis: float = 1.0  # ENIs attached, averaged over time

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())


def summarize(name: str, results: list[SimResult], duration: float) -> Summary:
    calls: dict[str, int] = {}
    for r in results:
        for action, n in r.calls.items():
            calls[action] = calls.get(action, 0) + n
    waits = [w for r in results for w in r.waits]
    idle = sum(r.idle_ip_seconds for r in results)
    cooling = sum(r.cooling_ip_seconds for r in results)
    return Summary(name, idle, cooling, idle / duration, sum(r.misses for r in results),
                   sum(r.adds for r in results), dict(sorted(calls.items())),
                   percentile(waits, 0.5), percentile(waits, 0.99),
                   max(r.peak_held for r in results), sum(r.describes for r in results),
                   max(r.peak_enis for r in results),
                   sum(r.eni_seconds for r in results) / duration)


def measure(seeds: list[int], hours: float, create_latency: float) -> dict[str, Summary]:
    config = sim_config(create_latency)
    traces = [make_trace(seed, hours) for seed in seeds]
    out = {}
    for name, make_loop in policies().items():
        results = [simulate(name, trace, config, make_loop) for trace in traces]
        out[name] = summarize(name, results, sum(t.duration for t in traces))
    return out


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def run(out: dict, *, quick: bool = False) -> None:
    """Fill ``out`` with the summaries, the ratios and the table rows (see bench.run)."""
    seeds, hours = trace_plan(quick)
    summaries = measure(seeds, hours, create_latency=3.0)
    ours, aws = summaries["underlay"], summaries["aws-default"]
    ratios = {"idle_ip_seconds": ratio(ours.idle_ip_seconds, aws.idle_ip_seconds),
              "misses": ratio(ours.misses, aws.misses),
              "cloud_calls": ratio(ours.total_calls, aws.total_calls)}
    met = {"idle_at_most_a_third": ours.idle_ip_seconds <= aws.idle_ip_seconds / 3,
           "no_more_misses": ours.misses <= aws.misses,
           "no_more_cloud_calls": ours.total_calls <= aws.total_calls}
    out.update({"seeds": seeds, "hours_per_seed": hours, "instance": "m5.large",
                "policies": {n: s.__dict__ for n, s in summaries.items()},
                "ratios_underlay_over_aws_default": ratios, "target_met": met})
    rows = []
    for metric, get, fmt in (
            ("idle IP-seconds", lambda s: s.idle_ip_seconds, "{:.0f}"),
            ("  of which cooling (IP-seconds)", lambda s: s.cooling_ip_seconds, "{:.0f}"),
            ("mean idle IPs", lambda s: s.mean_idle_ips, "{:.2f}"),
            ("pool misses (ADDs that waited)", lambda s: s.misses, "{}"),
            ("mutating EC2 calls", lambda s: s.total_calls, "{}"),
            ("  ENI create+attach+modify / detach+delete", lambda s: "{} / {}".format(
                3 * s.calls.get("CreateNetworkInterface", 0),
                2 * s.calls.get("DeleteNetworkInterface", 0)), "{}"),
            ("  Assign / Unassign", lambda s: "{} / {}".format(
                s.calls.get("AssignPrivateIpAddresses", 0),
                s.calls.get("UnassignPrivateIpAddresses", 0)), "{}"),
            ("ADD wait p50 (s, simulated)", lambda s: s.wait_p50, "{:.2f}"),
            ("ADD wait p99 (s, simulated)", lambda s: s.wait_p99, "{:.2f}"),
            ("peak IPs held", lambda s: s.peak_held, "{}")):
        mine, theirs = get(ours), get(aws)
        numeric = isinstance(mine, (int, float))
        rows.append({"metric": metric, "underlay": fmt.format(mine),
                     "reference": fmt.format(theirs),
                     "ratio": ratio(mine, theirs) if numeric else None,
                     "also": f"aws-warm-ip {fmt.format(get(summaries['aws-warm-ip']))}"})
    out["reference_name"] = "aws-default (WARM_ENI_TARGET=1)"
    out["rows"] = rows


def trace_args(argv: list[str] | None, description: str) -> tuple[list[int], float, float]:
    """The command line of a trace replay: (seeds, hours per seed, ENI create latency)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seeds", type=int, default=3, help="how many seeds")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="the first seed (4 with --seeds 5: the held-out seeds)")
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--create-latency", type=float, default=3.0,
                        help="seconds to create and attach an ENI")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.hours <= 0 or args.create_latency < 0:
        parser.error("--seeds >= 1, --hours > 0 and --create-latency >= 0 please")
    return (list(range(args.first_seed, args.first_seed + args.seeds)), args.hours,
            args.create_latency)


def main(argv: list[str] | None = None) -> int:
    seeds, hours, create_latency = trace_args(argv, __doc__.splitlines()[0])
    summaries = measure(seeds, hours, create_latency)
    print(f"{'policy':12s} {'idle IP-s':>10s} {'idle IPs':>8s} {'misses':>6s} {'calls':>6s}"
          f" {'p50 s':>6s} {'p99 s':>6s} {'describes':>9s}  calls by action")
    for s in summaries.values():
        print(f"{s.name:12s} {s.idle_ip_seconds:10.0f} {s.mean_idle_ips:8.2f} {s.misses:6d}"
              f" {s.total_calls:6d} {s.wait_p50:6.2f} {s.wait_p99:6.2f} {s.describes:9d}"
              f"  {json.dumps(s.calls)}")
    ours, aws = summaries["underlay"], summaries["aws-default"]
    print(f"underlay / aws-default: idle {ratio(ours.idle_ip_seconds, aws.idle_ip_seconds)}x,"
          f" misses {ours.misses} vs {aws.misses}, calls {ours.total_calls} vs"
          f" {aws.total_calls} (seeds {seeds[0]}-{seeds[-1]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
