"""Prefix delegation's pool efficiency: underlay in prefix mode against its own
secondary-address mode and AWS VPC CNI's prefix default, on the churn traces
``bench.pool_efficiency`` replays (same seeds, same hours, same simulated m5.large).

    .venv/bin/python -m bench.prefix_efficiency [--seeds 3] [--first-seed 1] [--hours 6]

Policies (the real functions, imported), each on the simulated node of ``bench.node_sim``
(3 ENIs x 10 address slots; in prefix mode 9 x 16 = 144 pod addresses per ENI):

- underlay-prefix: the agent's configuration with ``prefix_delegation`` on and every other
  key at its default (warm_ips 2, batch_size 4: the targets stay in addresses), driving the
  agent's own ``PoolStepper``; the node holds its addresses by the agent's store's rules
  (packed borrows, a prefix back only whole and cooled) and the loop reads them through
  the shipped ``ipam_daemon.policy.eni_counts``, as ``ipam_daemon.pool.Pool`` does;
- underlay-secondary: the same agent in secondary-address mode (``bench.pool_efficiency``'s
  underlay);
- aws-prefix, the reference: ENABLE_PREFIX_DELEGATION=true, WARM_PREFIX_TARGET=1,
  WARM_IP_TARGET and MINIMUM_IP_TARGET unset (``bench.aws_policy.decide_pool_prefix``),
  ipamd's ticker, on ipamd's datastore: borrows in Go's map order (seeded by the trace's
  seed), a prefix back when none of its addresses is assigned;
- aws-prefix-packed: the same with the store's packed borrows, so that what the policies
  do apart from the packing shows.

Reports, summed over the seeds: mutating EC2 calls, misses (ADDs that found no address
and waited), mean idle addresses (addresses held and not assigned, cooling and releasing
included, averaged over time), ENIs attached (peak, and averaged over time), and the
ratios of both underlay modes over aws-prefix. The simulated cloud never runs out of
addresses or aligned /28 blocks: fragmentation is not in these figures.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from ipam_daemon import policy
from ipam_daemon.config import AgentConfig

from bench import aws_policy
from bench.node_sim import Datastore, SimConfig
from bench.pool_efficiency import (
    Summary, ratio, sim_config, summarize, trace_args, trace_plan,
)
from bench.pool_loops import aws_loop, simulate, underlay_loop
from bench.trace import make_trace

logger = logging.getLogger(__name__)

REFERENCE = "aws-prefix"
PREFIXES = AgentConfig(prefix_delegation=True)


def policies(create_latency: float = 3.0) -> dict:
    """name -> (the simulated node, the loop factory)."""
    aws = aws_loop(aws_policy.decide_pool_prefix, aws_policy.decide_free_eni_prefix,
                   aws_policy.PrefixTargets())
    prefix_node = sim_config(create_latency, PREFIXES)
    return {
        "underlay-prefix": (prefix_node, underlay_loop(policy.decide, PREFIXES.pool)),
        "underlay-secondary": (sim_config(create_latency),
                               underlay_loop(policy.decide, AgentConfig().pool)),
        REFERENCE: (replace(prefix_node, datastore=Datastore.IPAMD), aws),
        "aws-prefix-packed": (replace(prefix_node, datastore=Datastore.IPAMD_PACKED), aws),
    }


def node_for(config: SimConfig, seed: int) -> SimConfig:
    return replace(config, seed=seed)


def measure(seeds: list[int], hours: float, create_latency: float = 3.0) -> dict[str, Summary]:
    traces = [make_trace(seed, hours) for seed in seeds]
    duration = sum(t.duration for t in traces)
    out = {}
    for name, (config, make_loop) in policies(create_latency).items():
        results = [simulate(name, trace, node_for(config, trace.seed), make_loop)
                   for trace in traces]
        out[name] = summarize(name, results, duration)
    return out


METRICS = (  # (metric, figure, format)
    ("mutating EC2 calls", lambda s: s.total_calls, "{}"),
    ("  Assign / Unassign", lambda s: "{} / {}".format(
        s.calls.get("AssignPrivateIpAddresses", 0),
        s.calls.get("UnassignPrivateIpAddresses", 0)), "{}"),
    ("pool misses (ADDs that found no address)", lambda s: s.misses, "{}"),
    ("mean idle addresses (held, not assigned)", lambda s: s.mean_idle_ips, "{:.2f}"),
    ("ENIs attached, peak", lambda s: s.peak_enis, "{}"),
    ("ENIs attached, mean", lambda s: s.mean_enis, "{:.2f}"),
    ("peak addresses held", lambda s: s.peak_held, "{}"),
)


def rows(summaries: dict[str, Summary]) -> list[dict]:
    """One row per metric and underlay mode, against aws-prefix; the packed AWS variant in
    ``also``."""
    aws, packed = summaries[REFERENCE], summaries["aws-prefix-packed"]
    out = []
    for mode in ("prefix", "secondary"):
        ours = summaries[f"underlay-{mode}"]
        for metric, get, fmt in METRICS:
            mine, theirs = get(ours), get(aws)
            numeric = isinstance(mine, (int, float))
            out.append({"metric": f"{metric} [{mode} mode]", "underlay": fmt.format(mine),
                        "reference": fmt.format(theirs),
                        "ratio": ratio(mine, theirs) if numeric else None,
                        "also": f"aws-prefix-packed {fmt.format(get(packed))}"})
    return out


def run(out: dict, *, quick: bool = False) -> None:
    """Fill ``out`` with the summaries, the ratios and the table rows (see bench.run)."""
    seeds, hours = trace_plan(quick)
    summaries = measure(seeds, hours)
    aws = summaries[REFERENCE]
    out.update({
        "seeds": seeds, "hours_per_seed": hours, "instance": "m5.large",
        "policies": {n: s.__dict__ for n, s in summaries.items()},
        "ratios_over_aws_prefix": {
            name: {"cloud_calls": ratio(s.total_calls, aws.total_calls),
                   "misses": ratio(s.misses, aws.misses),
                   "mean_idle_ips": ratio(s.mean_idle_ips, aws.mean_idle_ips),
                   "mean_enis": ratio(s.mean_enis, aws.mean_enis)}
            for name, s in summaries.items() if name.startswith("underlay")},
        "reference_name": "aws-prefix (ENABLE_PREFIX_DELEGATION, WARM_PREFIX_TARGET=1)",
        "rows": rows(summaries),
    })


def main(argv: list[str] | None = None) -> int:
    """The rows ``make bench`` prints, for other seeds, hours or create latencies."""
    seeds, hours, create_latency = trace_args(argv, __doc__.splitlines()[0])
    print(f"seeds {seeds[0]}-{seeds[-1]}, {hours:g} h each; underlay against {REFERENCE}")
    for row in rows(measure(seeds, hours, create_latency)):
        ratio_ = "" if row["ratio"] is None else f"{row['ratio']}x"
        print(f"{row['metric']:56s} {row['underlay']:>10s} {row['reference']:>10s}"
              f" {ratio_:>7s}  {row['also']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
