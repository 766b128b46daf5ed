"""The agent as a real process against the emulated EC2 over HTTP (datapath none): warm-up
with batched calls, borrows over the socket, shrink back, a second ENI created when the
first is full and deleted when idle, the instance limit reported as ENI limit (code 101),
the status endpoint, and a clean SIGTERM."""
from __future__ import annotations

import json
import os
import stat
import urllib.request

from test_agent_helpers import (  # noqa: F401 - fixtures
    cloud_ips, control, emulator, make_world, start_agent, cloud_client, wait_for,
)

from cni.spec import Code


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_warm_up_serve_and_shrink_back(emulator, control, start_agent):
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=5, batch_size=2)  # band: 5..7 idle addresses
    wait_for(lambda: agent.pool()["available"] == 5, 10, "5 warm addresses")
    counts = control.call_counts()
    # one batched call fills the pool: not one call per address, no ENI created
    assert counts.get("AssignPrivateIpAddresses") == 1, counts
    assert counts.get("CreateNetworkInterface", 0) == 0, counts

    sock = agent.config["socket_path"]
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700

    ips = {}
    for i in range(4):
        status, body = agent.attach(f"c{i}")
        assert status == 200, body
        ips[f"c{i}"] = body["result"]["ips"][0]["address"]
        assert body["result"]["ips"][0]["gateway"] == "169.254.1.1"
        assert body["result"]["interfaces"] == [{"name": "eth0", "sandbox": f"/proc/1/ns/c{i}"}]
    assert len(set(ips.values())) == 4
    status, again = agent.attach("c0")  # idempotent per key
    assert again["result"]["ips"][0]["address"] == ips["c0"]
    wait_for(lambda: agent.pool()["available"] >= 5, 10, "the pool to refill to 5")
    assert agent.pool()["assigned"] == 4
    refilled = agent.pool()["total"]

    for i in range(4):
        assert agent.detach(f"c{i}") == (200, {})
    assert agent.detach("c0") == (200, {})  # unknown key: success
    pool = agent.pool()
    assert pool["cooling"] == 4 and pool["available"] == refilled - 4  # cooling: unavailable
    # after the cooldown, everything above warm + batch (7) goes back to the cloud
    wait_for(lambda: (lambda p: (p["total"], p["available"], p["cooling"]))(agent.pool())
             == (7, 7, 0), 10, "the pool to shrink back to 7")
    cloud = cloud_client(emulator)
    inst = world.instances[0]
    stored = {a["ip"] for e in agent.client.get("/v1/enis")[1] for a in e["addresses"]}
    assert cloud_ips(cloud, inst.instance_id, world.cluster, inst.primary_eni_id) == stored

    # the status endpoint
    assert http_get(agent.status_port, "/healthz")[0] == 200
    assert http_get(agent.status_port, "/readyz")[0] == 200
    code, raw = http_get(agent.status_port, "/v1/pool")
    assert code == 200 and json.loads(raw)["available"] == 7
    assert http_get(agent.status_port, "/metrics")[0] == 404  # metrics have their listener
    code, metrics = http_get(agent.metrics_port, "/metrics")
    text = metrics.decode()
    assert code == 200 and http_get(agent.metrics_port, "/v1/pool")[0] == 404
    assert 'underlay_ec2_request_duration_seconds_count{action="AssignPrivateIpAddresses",' \
        'outcome="ok"}' in text
    assert "underlay_borrow_seconds_count 5.0" in text
    assert 'underlay_pool_addresses{state="available"} 7.0' in text
    assert "testing" not in text and "testing" not in agent.log_tail(10_000)  # no credentials
    assert agent.stop() == 0
    assert not os.path.exists(sock)


def test_second_eni_when_full_and_deleted_when_idle(emulator, control, start_agent):
    world = make_world(emulator)  # m5.large: 9 secondary addresses per ENI
    agent = start_agent(world, warm_ips=2, batch_size=1)
    for i in range(9):
        status, body = agent.attach(f"c{i}")
        assert status == 200, body
    wait_for(lambda: agent.pool()["enis"] == 2 and agent.pool()["available"] >= 2, 10,
             "a second ENI with the warm addresses")
    counts = control.call_counts()
    assert counts.get("CreateNetworkInterface") == 1 and counts.get("AttachNetworkInterface") == 1
    per_eni = agent.pool()["per_eni"]
    assert per_eni[0]["assigned"] == 9 and per_eni[1]["device_index"] == 1
    status, body = agent.attach("c9")
    assert status == 200, body
    pods = {p["container_id"]: p["eni"] for p in agent.client.get("/v1/pods")[1]}
    assert pods["c9"] == per_eni[1]["id"]
    for i in range(10):
        assert agent.detach(f"c{i}")[0] == 200
    wait_for(lambda: len(agent.client.get("/v1/enis")[1]) == 1, 10,
             "the idle second ENI to be deleted")
    counts = control.call_counts()
    assert counts.get("DeleteNetworkInterface") == 1 and counts.get("DetachNetworkInterface") == 1
    wait_for(lambda: agent.pool()["total"] == 3, 10, "the pool to shrink to warm + batch")
    cloud = cloud_client(emulator)
    inst = world.instances[0]
    assert [e.id for e in cloud.list_enis(inst.instance_id)] == [inst.primary_eni_id]


def test_instance_limit_reports_eni_limit(emulator, control, start_agent):
    world = make_world(emulator, instance_type="t3.small")  # 3 ENIs x 4 IPs: 9 for pods
    agent = start_agent(world, warm_ips=1, borrow_wait_seconds=1.0)
    for i in range(9):
        status, body = agent.attach(f"c{i}")
        assert status == 200, (i, body)
    status, body = agent.attach("c9")
    assert status == 500 or status == 503
    assert body["code"] == Code.ENI_LIMIT_REACHED, body
    assert "ENI limit reached: 3 of 3" in body["msg"], body
    assert "9 assigned" in body["details"]
    pool = agent.pool()
    assert pool["blocked"]["code"] == Code.ENI_LIMIT_REACHED
    assert (pool["enis"], pool["assigned"], pool["capacity"]) == (3, 9, 9)
    # returning one lets the next pod in once its cooldown has passed
    assert agent.detach("c0")[0] == 200
    status, body = agent.attach("c9")
    assert status == 200, body


def test_bad_requests_change_nothing(emulator, control, start_agent):
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=2)
    wait_for(lambda: agent.pool()["available"] >= 2, 10, "warm pool")
    before = agent.client.get("/v1/enis")[1]
    cases = [
        ({"api": 1, "cni_version": "1.0.0", "network": "net", "ifname": "eth0",
          "netns": "/x", "mode": "veth"}, "'container_id' is required"),
        ({"api": 1, "cni_version": "1.0.0", "network": "net", "container_id": 5,
          "ifname": "eth0", "netns": "/x", "mode": "veth"}, "'container_id' must be a string"),
        ({"api": 9, "cni_version": "1.0.0"}, "api version 9 not supported"),
        ({"api": 1, "cni_version": "9.9.9", "network": "n", "container_id": "c",
          "ifname": "eth0", "netns": "/x", "mode": "veth"}, "cni_version '9.9.9'"),
    ]
    for body, message in cases:
        status, reply = agent.client.post("/v1/attach", body)
        assert status == 400 and message in reply["msg"], reply
    status, reply = agent.client.post("/v1/gc", {"api": 1, "network": "net",
                                                 "valid_attachments": [{"containerID": 1}]})
    assert status == 400 and "valid_attachments[0]" in reply["msg"]
    status, reply = agent.client.post("/v1/attach", {"api": 1, "pad": "x" * 70_000})
    assert status == 413 and "exceeds the 65536 byte limit" in reply["msg"]
    agent.client.close()
    status, reply = agent.client.post("/v1/nope", {"api": 1})
    assert status == 404
    assert agent.client.get("/v1/enis")[1] == before
    assert agent.client.get("/v1/pods")[1] == []


def test_check_and_gc(emulator, control, start_agent):
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=3)
    ips = {c: agent.attach(c)[1]["result"]["ips"][0]["address"] for c in ("a", "b", "c")}
    check = {"api": 1, "cni_version": "1.0.0", "network": "net", "container_id": "a",
             "ifname": "eth0", "netns": "/x", "prev_result": {"ips": [{"address": ips["a"]}]}}
    assert agent.client.post("/v1/check", check) == (200, {})
    status, reply = agent.client.post("/v1/check", dict(check, container_id="zz"))
    assert status == 500 and reply["code"] == Code.CHECK_FAILED
    status, reply = agent.client.post("/v1/check", dict(check, prev_result={
        "ips": [{"address": ips["b"]}]}))
    assert reply["code"] == Code.CHECK_FAILED and "prevResult" in reply["msg"]
    status, reply = agent.client.post("/v1/gc", {"api": 1, "network": "net",
                                                 "valid_attachments": [
                                                     {"containerID": "b", "ifname": "eth0"}]})
    assert status == 200
    assert sorted(r["containerID"] for r in reply["released"]) == ["a", "c"]
    assert [p["container_id"] for p in agent.client.get("/v1/pods")[1]] == ["b"]


def test_status_cli_prints_the_pool(emulator, control, start_agent):
    import subprocess
    import sys

    world = make_world(emulator)
    agent = start_agent(world, warm_ips=2, batch_size=1)
    agent.attach("a")
    wait_for(lambda: agent.pool()["available"] == 2, 10, "warm pool")
    for source in (["--socket", agent.config["socket_path"]],
                   ["--endpoint", f"http://127.0.0.1:{agent.status_port}"]):
        out = subprocess.run([sys.executable, "-m", "ipam_daemon.cli", *source],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("capacity 27  held 3  assigned 1  warm 2  cooling 0")
        assert lines[1].split() == ["ENI", "DEV", "SUBNET", "CAP", "FREE", "ASSIGNED", "COOLING",
                                    "SLOTS", "PREFIXES"]
        assert lines[2].split() == [world.instances[0].primary_eni_id, "*", "0",
                                    world.subnet_ids[0], "9", "2", "1", "0", "3/9", "-"]
    out = subprocess.run([sys.executable, "-m", "ipam_daemon.cli", "--socket",
                          agent.config["socket_path"] + ".missing"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "cannot read the pool" in out.stderr


def test_startup_adopts_ours_ignores_foreign_and_sweeps_leaked(emulator, control, start_agent):
    from cloud import errors as ce
    from cloud.provision import provision_eni

    world = make_world(emulator)
    cloud = cloud_client(emulator)
    inst = cloud.describe_instance(world.instances[0].instance_id)
    limits = cloud.instance_limits(inst.instance_type)
    ours = provision_eni(cloud, inst, limits, inst.subnet_id, inst.security_groups, 3,
                         world.cluster, world.instances[0].name)
    foreign = cloud.create_eni(inst.subnet_id, inst.security_groups, 1, cluster="other",
                               node="x")
    cloud.attach_eni(foreign.id, inst.id, 2)
    leaked = cloud.create_eni(inst.subnet_id, inst.security_groups, 1, cluster=world.cluster,
                              node="gone")
    agent = start_agent(world, warm_ips=2, leaked_eni_age=0.5)
    enis = {e["id"]: e for e in agent.client.get("/v1/enis")[1]}
    assert set(enis) == {inst.primary_eni_id, ours.id}  # adopted before serving
    adopted = {a["ip"] for a in enis[ours.id]["addresses"]}
    assert adopted and adopted <= set(ours.secondary_ips)  # its addresses joined the pool

    def leaked_gone():
        try:
            cloud.describe_eni(leaked.id)
        except ce.NotFound:
            return True
        return False

    wait_for(leaked_gone, 10, "the leaked ENI to be deleted")
    assert cloud.describe_eni(foreign.id).instance_id == inst.id  # never touched
    assert foreign.id not in {e["id"] for e in agent.client.get("/v1/enis")[1]}


def test_warm_ips_zero_still_gives_a_waiting_pod_an_address(emulator, start_agent):
    """No warm pool at all (warm_ips 0, min_ips 0): a borrow that finds nothing free is
    itself the demand; the pool assigns for it and the pod gets its address."""
    world = make_world(emulator)
    agent = start_agent(world, warm_ips=0, min_ips=0, borrow_wait_seconds=10.0)
    assert agent.pool()["available"] == 0
    status, body = agent.attach("cold")
    assert status == 200, body
    wait_for(lambda: agent.pool()["assigned"] == 1, 5, "the allocation")
