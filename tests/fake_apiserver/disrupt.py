"""Disrupt a fake API server the way a control plane does under load, until stopped:
every ``period`` seconds all watches are dropped; on round ``compact_round`` the history is
compacted first (behind a write the watchers of pods and nodes do not see, so their
resume point is older than the compaction and the resumed watch answers 410 Gone); on
round ``outage_round`` the server goes down for ``outage_seconds`` and comes back.

    figures = Disruptions()
    thread = threading.Thread(target=disrupt, args=(server, stop, random.Random(1), figures))
"""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass

from .server import FakeApiServer

logger = logging.getLogger(__name__)


@dataclass
class Disruptions:
    drops: int = 0
    compactions: int = 0
    outages: int = 0


def disrupt(server: FakeApiServer, stop: threading.Event, rng: random.Random,
            figures: Disruptions, *, period: tuple[float, float] = (0.5, 1.5),
            compact_round: int = 3, outage_round: int = 5, outage_seconds: float = 1.0) -> None:
    """Run the disruptions until ``stop``; the server is up when this returns."""
    round_ = 0
    try:
        while not stop.wait(rng.uniform(*period)):
            round_ += 1
            if round_ == outage_round:
                server.go_down()
                figures.outages += 1
                stop.wait(outage_seconds)
                server.come_up()
                continue
            if round_ == compact_round:
                server.create("configmaps", {"metadata": {"name": f"compaction-{round_}",
                                                          "namespace": "kube-system"}, "data": {}})
                server.compact()
                figures.compactions += 1
            server.drop_watches()
            figures.drops += 1
    finally:
        if server.down.is_set():
            server.come_up()
    logger.info("API server disrupted: %s", figures)
