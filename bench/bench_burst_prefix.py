"""Burst in prefix mode: 100 pods created 10 at a time on a fresh m5.large whose agent runs
with ``prefix_delegation``, against the lower bound measured in the same run.

    .venv/bin/python -m bench.run --only burst_prefix

Two m5.large nodes (Nitro; 3 ENIs x 10 address slots, so with prefixes 9 x 16 = 144 pod
addresses per ENI) share one emulated cloud whose AttachNetworkInterface takes 1 s, as in
``bench.bench_burst`` (whose method and code this reuses):

- the fresh node's agent starts with ``prefix_delegation`` on and every other key at its
  default (warm_ips 2) and gets the burst as soon as it is ready: time until all 100 pods
  are wired, failed ADDs, the EC2 calls it made, the prefixes and ENIs it holds after;
- the reference node's agent, in prefix mode too, is pre-warmed with ``min_ips`` = the
  burst (7 prefixes), so the same burst there costs only the per-ADD work (libcni,
  executable, agent, datapath, the /28's routes) under the same concurrency, with no cloud
  call in the way.

The lower bound is the EC2 calls the burst cannot avoid at the emulated latency plus the
reference burst time. The fresh node must get its 100 addresses as prefixes: 7 of them
(112 >= 100) fit in the primary ENI's 9 free slots, so no ENI has to be attached (new ENIs
needed x 1 s = 0, from the pool's own capacity and ENI count, as ``bench_burst`` reckons
it), and one AssignPrivateIpAddresses call for 7 prefixes is enough. The emulator delays
only attaches: an Assign costs its own few milliseconds, which the bound leaves out, so the
bound is lower than any real minimum and the ratio errs against underlay. ratio = fresh
burst time / lower bound; the target is the secondary-address burst's, at most 1.3x with
zero failed ADDs.
"""
from __future__ import annotations

import logging

from bench.bench_burst import TARGET, BurstPlan, burst_rows, measure

logger = logging.getLogger(__name__)

PLAN = BurstPlan(pods=100, concurrency=10, instance_type="m5.large",
                 agent={"prefix_delegation": True})


def run(out: dict, *, quick: bool = False) -> None:
    out.update(measure(PLAN))
    pool, calls = out["pool_after"], out["cloud_calls"]
    out["reference_name"] = ("lower bound (new ENIs x attach latency + pre-warmed burst),"
                             " prefix mode")
    out["rows"] = burst_rows(out, TARGET) + [
        {"metric": "fresh node's EC2 calls in the burst: Assign / CreateNetworkInterface",
         "underlay": f"{calls.get('AssignPrivateIpAddresses', 0)} /"
                     f" {calls.get('CreateNetworkInterface', 0)}",
         "also": f"at least 1 / 0; {pool.get('prefixes')} prefixes on {pool['enis']} ENI(s)"
                 f" after, mode {pool.get('mode')!r}"},
    ]
