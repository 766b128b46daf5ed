"""Prometheus metrics of one agent, in their own registry (several agents can live in one
test process). Served on their own listener (``metrics_address:metrics_port``, see
:mod:`ipam_daemon.status`), never beside the introspection API.

Names follow Prometheus's conventions and pass ``promtool check metrics`` (a test runs it
on a live agent): counters end in ``_total``, nothing else does; durations are
``_seconds``; one metric with a ``state`` label instead of one metric per state.

    underlay_build_info{version, python_version}          1
    underlay_pool_addresses{state}                         assigned, available, cooling,
                                                           releasing: the addresses held
    underlay_pool_capacity_addresses                       addresses this node may hold
    underlay_pool_enis / underlay_pool_max_enis            ENIs attached / allowed
    underlay_eni_addresses{eni, state}                     per ENI: free, assigned, cooling
    underlay_last_reconcile_timestamp_seconds              last successful reconcile
    underlay_borrow_seconds                                histogram: borrowing an address
    underlay_ec2_request_duration_seconds{action, outcome} histogram: every EC2 attempt
    underlay_attach_errors_total{code}                     failed attaches by CNI code
    underlay_pool_actions_total{kind, outcome}             pool actions

Pool gauges are read from the store at scrape time; EC2 attempts arrive through
``on_call(action, outcome, seconds)``, the hook ``cloud.ec2.Ec2Cloud`` calls after every
request. Labels carry action names and error codes only, never credentials."""
from __future__ import annotations

import logging
import platform
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ipam_daemon.version import VERSION

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
POOL_STATES = ("assigned", "available", "cooling", "releasing")
ENI_STATES = ("free", "assigned", "cooling")
# EC2 answers in tens of milliseconds; an attach or a throttled retry takes seconds
EC2_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def pool_gauges(pool: dict) -> list[GaugeMetricFamily]:
    """The pool's figures (``Service.pool_summary``) as gauge families (pure)."""
    held = GaugeMetricFamily("underlay_pool_addresses", "Addresses this node holds, by state.",
                             labels=["state"])
    counted = {state: float(pool.get(state, 0)) for state in POOL_STATES[:3]}
    counted["releasing"] = max(float(pool.get("total", 0)) - sum(counted.values()), 0.0)
    for state in POOL_STATES:
        held.add_metric([state], counted[state])
    capacity = GaugeMetricFamily("underlay_pool_capacity_addresses",
                                 "Pod addresses this node may hold (instance and config limits).",
                                 value=float(pool.get("capacity", 0)))
    enis = GaugeMetricFamily("underlay_pool_enis", "ENIs of ours attached to this node.",
                             value=float(pool.get("enis", 0)))
    max_enis = GaugeMetricFamily("underlay_pool_max_enis", "ENIs this node may attach.",
                                 value=float(pool.get("max_enis", 0)))
    per_eni = GaugeMetricFamily("underlay_eni_addresses", "Addresses per ENI, by state.",
                                labels=["eni", "state"])
    for eni in pool.get("per_eni", []):
        for state in ENI_STATES:
            per_eni.add_metric([eni["id"], state], float(eni[state]))
    prefixes = GaugeMetricFamily(
        "underlay_pool_prefixes", "Delegated /28 prefixes this node holds: whole free (all 16"
        " addresses free, can go back) or in use.", labels=["state"])
    free = float(pool.get("prefixes_free", 0))
    prefixes.add_metric(["free"], free)
    prefixes.add_metric(["in_use"], max(float(pool.get("prefixes", 0)) - free, 0.0))
    return [held, capacity, enis, max_enis, per_eni, prefixes]


class _PoolCollector:
    def __init__(self, read_pool: Callable[[], dict]) -> None:
        self._read_pool = read_pool

    def collect(self):
        try:
            pool = self._read_pool()
        except Exception:  # a scrape must not fail because the store is busy
            logger.exception("pool gauges unavailable")
            return
        yield from pool_gauges(pool)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        build = Gauge("underlay_build_info", "The running underlay's version (always 1).",
                      ["version", "python_version"], registry=self.registry)
        build.labels(VERSION, platform.python_version()).set(1)
        self.borrow_seconds = Histogram(
            "underlay_borrow_seconds", "Time to borrow an address (attach, IPAM part).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry)
        self.attach_errors = Counter("underlay_attach_errors", "Failed attaches by CNI code.",
                                     ["code"], registry=self.registry)
        self.ec2_seconds = Histogram(
            "underlay_ec2_request_duration_seconds",
            "EC2 request attempts by action and outcome (ok or the error code).",
            ["action", "outcome"], buckets=EC2_BUCKETS, registry=self.registry)
        self.pool_actions = Counter("underlay_pool_actions", "Pool actions taken by kind.",
                                    ["kind", "outcome"], registry=self.registry)
        self.last_reconcile = Gauge(
            "underlay_last_reconcile_timestamp_seconds",
            "Unix time of the last successful reconcile with the cloud (0: none yet).",
            registry=self.registry)

    def watch_pool(self, read_pool: Callable[[], dict]) -> None:
        self.registry.register(_PoolCollector(read_pool))

    def on_call(self, action: str, outcome: str, seconds: float) -> None:
        self.ec2_seconds.labels(action, outcome).observe(seconds)

    def reconciled(self) -> None:
        self.last_reconcile.set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
