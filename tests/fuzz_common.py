"""What the two fuzz suites share: hypothesis settings, the spec codes an error may carry
(never the internal-error catch-all), and one real agent (datapath "none") holding two
allocations, ``keep-a`` and ``keep-b``, that a wrongly accepted DEL or GC would remove."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, settings
from test_agent_helpers import AgentProcess, make_world

from lab.ec2.server import EmulatedCloud
from cni.spec import Code

SPEC_CODES = {int(c) for c in Code} - {int(Code.AGENT_INTERNAL)}
# derandomized in `make test` (see conftest.py); `make fuzz` explores many more examples
EXPLORE = os.environ.get("UNDERLAY_FUZZ") == "explore"
FUZZ = settings(max_examples=2000 if EXPLORE else 150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
KEPT = ("keep-a", "keep-b")


@contextmanager
def agent_holding_two(workdir: Path, emulator: EmulatedCloud, network: str
                      ) -> Iterator[AgentProcess]:
    agent = AgentProcess(workdir, emulator, make_world(emulator), warm_ips=2)
    try:
        agent.start()
        for container_id in KEPT:
            status, body = agent.attach(container_id, network=network)
            assert status == 200, body
        yield agent
    finally:
        agent.kill9()
