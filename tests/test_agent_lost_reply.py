"""A give-back whose reply is lost: EC2 carried out the Unassign but the agent only saw an
error. The agent must not guess that nothing happened (an address the cloud took back would
go to a pod); the addresses stay unborrowable until reconcile reads what the cloud holds.
Reconcile is kept failing meanwhile (DescribeNetworkInterfaces answers 500), which is the
window in which a guess would hand such an address out."""
from __future__ import annotations

from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, make_world, start_agent, wait_for,
)


def held_by_cloud(control, instance_id: str) -> set[str]:
    """Addresses the cloud's own state gives the instance's ENIs (no EC2 call: the control
    API's snapshot, so the faults below do not touch it)."""
    return {ip for eni in control.snapshot()["enis"] if eni["instance_id"] == instance_id
            for ip in eni["ips"]}


def test_lost_unassign_reply_never_hands_out_an_address_the_cloud_took_back(
        emulator, control, start_agent):
    world = make_world(emulator)
    instance = world.instances[0]
    agent = start_agent(world, warm_ips=2, cooldown_seconds=0.0)
    wait_for(lambda: agent.pool()["available"] == 2, 10, "the warm pool")
    for i in range(6):
        assert agent.attach(f"p{i}")[0] == 200

    control.set_faults([
        {"action": "UnassignPrivateIpAddresses", "kind": "lost_reply", "rate": 1.0},
        {"action": "DescribeNetworkInterfaces", "kind": "5xx", "rate": 1.0}], seed=1)
    try:
        for i in range(6):
            assert agent.detach(f"p{i}")[0] == 200
        wait_for(lambda: control.call_counts().get("UnassignPrivateIpAddresses", 0) >= 1, 15,
                 "the pool to give addresses back")
        for i in range(8):  # all the pool offers while it cannot reconcile, and more
            status, body = agent.attach(f"q{i}")
            if status != 200:
                continue
            ip = body["result"]["ips"][0]["address"].split("/")[0]
            assert ip in held_by_cloud(control, instance.instance_id), \
                f"{ip} handed to a pod but the cloud no longer holds it"
    finally:
        control.clear_faults()
    wait_for(lambda: {a["ip"] for a in agent.client.get("/v1/pods")[1]}
             <= held_by_cloud(control, instance.instance_id), 10, "allocations the cloud holds")
    assert "LOST ADDRESS" not in agent.log_path.read_text()
