"""Prometheus metrics of one agent, in their own registry (several agents can live in one
test process). Pool gauges are read from the store at scrape time; cloud calls and errors
arrive through ``on_call(action, outcome)``, the hook ``cloud.ec2.Ec2Cloud`` calls after
every EC2 request. Labels carry action names and error codes only, never credentials."""
from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _PoolCollector:
    def __init__(self, read_pool: Callable[[], dict]) -> None:
        self._read_pool = read_pool

    def collect(self):
        try:
            pool = self._read_pool()
        except Exception:  # a scrape must not fail because the store is busy
            logger.exception("pool gauges unavailable")
            return
        for name in ("capacity", "total", "assigned", "available", "cooling", "enis"):
            gauge = GaugeMetricFamily(f"underlay_pool_{name}", f"Pool {name} on this node.")
            gauge.add_metric([], float(pool.get(name, 0)))
            yield gauge
        eni_gauge = GaugeMetricFamily("underlay_eni_addresses", "Addresses per ENI by state.",
                                      labels=["eni", "state"])
        for eni in pool.get("per_eni", []):
            for state in ("free", "assigned", "cooling"):
                eni_gauge.add_metric([eni["id"], state], float(eni[state]))
        yield eni_gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.borrow_seconds = Histogram(
            "underlay_borrow_seconds", "Time to borrow an address (attach, IPAM part).",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=self.registry)
        self.attach_errors = Counter("underlay_attach_errors", "Failed attaches by CNI code.",
                                     ["code"], registry=self.registry)
        self.cloud_calls = Counter("underlay_cloud_calls", "EC2 calls by action.", ["action"],
                                   registry=self.registry)
        self.cloud_errors = Counter("underlay_cloud_errors", "Failed EC2 calls by action and"
                                    " error code.", ["action", "code"], registry=self.registry)
        self.pool_actions = Counter("underlay_pool_actions", "Pool actions taken by kind.",
                                    ["kind", "outcome"], registry=self.registry)

    def watch_pool(self, read_pool: Callable[[], dict]) -> None:
        self.registry.register(_PoolCollector(read_pool))

    def on_call(self, action: str, outcome: str) -> None:
        self.cloud_calls.labels(action).inc()
        if outcome != "ok":
            self.cloud_errors.labels(action, outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
