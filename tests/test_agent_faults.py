"""Throttling and 5xx injected in the emulated EC2 (control.set_faults): borrows from the
warm pool keep succeeding, a borrow that finds the pool empty fails with the precise reason
(throttled: 102; cloud unavailable: 11), and the pool recovers when the faults stop. A full
subnet is reported as subnet exhausted (100) with its free-address numbers."""
from __future__ import annotations

import urllib.request

from test_agent_helpers import control, emulator, make_world, start_agent, wait_for  # noqa: F401

from cni.spec import Code


def blocked_code(agent):
    blocked = agent.pool()["blocked"]
    return blocked and blocked["code"]


def test_faults_spare_the_warm_pool_and_the_pool_recovers(emulator, control, start_agent):
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=6, borrow_wait_seconds=1.0, cloud_timeout=1.0)
    wait_for(lambda: agent.pool()["available"] == 6, 10, "the warm pool")

    control.set_faults([{"action": "*", "kind": "throttle", "rate": 1.0}], seed=1)
    for i in range(3):
        status, body = agent.attach(f"t{i}")
        assert status == 200, body
    wait_for(lambda: blocked_code(agent) == Code.CLOUD_THROTTLED, 15, "the pool to see throttling")

    control.set_faults([{"action": "*", "kind": "5xx", "rate": 1.0}], seed=1)
    for i in range(3):
        status, body = agent.attach(f"f{i}")
        assert status == 200, body
    wait_for(lambda: blocked_code(agent) == Code.TRY_AGAIN_LATER, 15, "the pool to see 5xx")
    status, body = agent.attach("starved")
    assert body["code"] == Code.TRY_AGAIN_LATER and "unavailable" in body["msg"], body
    assert "0 available, 6 assigned" in body["details"]

    control.set_faults([{"action": "*", "kind": "throttle", "rate": 1.0}], seed=1)
    wait_for(lambda: blocked_code(agent) == Code.CLOUD_THROTTLED, 15, "throttled again")
    status, body = agent.attach("starved")
    assert body["code"] == Code.CLOUD_THROTTLED and "throttled" in body["msg"], body

    with urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics",
                                timeout=5) as reply:
        metrics = reply.read().decode()
    for outcome in ("RequestLimitExceeded", "InternalError"):
        assert ('underlay_ec2_request_duration_seconds_count{action="AssignPrivateIpAddresses",'
                f'outcome="{outcome}"}}') in metrics
    counts_during = control.call_counts()
    control.clear_faults()
    wait_for(lambda: (lambda p: p["available"] >= 6 and p["blocked"] is None)(agent.pool()),
             20, "the pool to recover")
    assert control.call_counts().get("AssignPrivateIpAddresses", 0) > \
        counts_during.get("AssignPrivateIpAddresses", 0)
    status, body = agent.attach("starved")
    assert status == 200, body
    assert agent.pool()["assigned"] == 7


def test_subnet_exhausted_names_the_numbers(emulator, control, start_agent):
    # a /28 has 11 usable addresses; the node's primary IP takes one, the primary ENI holds
    # 9 more, and a second ENI would need 2 (its own primary and one secondary): 1 is left
    world = make_world(emulator, vpc_cidr="10.1.0.0/16", subnet_cidrs=("10.1.0.0/28",))
    agent = start_agent(world, warm_ips=2, borrow_wait_seconds=1.0)
    got = []
    for i in range(12):
        status, body = agent.attach(f"c{i}")
        if status != 200:
            break
        got.append(body["result"]["ips"][0]["address"])
    assert len(got) == 9, got
    assert body["code"] == Code.SUBNET_EXHAUSTED, body
    assert "subnet exhausted" in body["msg"] and "has 1 free addresses" in body["msg"], body
    assert world.subnet_ids[0] in body["msg"]


def test_not_ready_until_the_first_reconcile(emulator, control, start_agent, tmp_path):
    import urllib.error

    def get(agent, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{agent.status_port}{path}",
                                        timeout=5) as reply:
                return reply.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    world = make_world(emulator)
    agent = start_agent(world, warm_ips=2)
    assert agent.stop() == 0
    # the cloud fails every call: the agent serves healthz, says not ready, has no socket
    control.set_faults([{"action": "*", "kind": "5xx", "rate": 1.0}], seed=3)
    agent.start(wait_ready=False)
    wait_for(lambda: get(agent, "/healthz") == 200, 20, "healthz")
    assert get(agent, "/readyz") == 503
    assert not agent.ready()
    control.clear_faults()
    wait_for(agent.ready, 20, "the agent to reconcile and serve")
    assert get(agent, "/readyz") == 200


def test_empty_pool_borrow_waits_for_the_refill(emulator, control, start_agent):
    """A borrow that finds the pool empty waits (bounded) for the new ENI instead of failing;
    if the refill takes longer than borrow_wait_seconds it fails with code 103 and numbers."""
    world = make_world(emulator, instance_type="t3.small")  # 3 pod addresses per ENI
    agent = start_agent(world, warm_ips=1, borrow_wait_seconds=0.5)
    control.set_attach_latency(2.0)
    got = [agent.attach(f"c{i}") for i in range(4)]  # the 4th needs a second ENI
    failed = [body for status, body in got if status != 200]
    assert len(failed) == 1, got
    assert failed[0]["code"] == Code.NO_CAPACITY, failed
    assert "did not refill within 0.5s" in failed[0]["msg"], failed
    assert "0 available, 3 assigned" in failed[0]["details"], failed

    agent2 = start_agent(make_world(emulator, instance_type="t3.small"), warm_ips=1,
                         borrow_wait_seconds=10.0)
    statuses = [agent2.attach(f"c{i}")[0] for i in range(4)]
    assert statuses == [200] * 4  # the 4th waited for the ENI instead of failing
    assert agent2.pool()["enis"] == 2
