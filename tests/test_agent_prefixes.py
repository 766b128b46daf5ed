"""Prefix delegation in the agent, against the emulated EC2 (which models /28 prefixes, the
slot limits, fragmentation and CIDR reservations): the agent as a real process, IPAM only
(datapath none), so the figures are the pool's and the cloud's, at their exact numbers.
"""
from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import boto3

from cloud.types import InstanceId
from ipam_daemon.client import AgentClient
from test_agent_helpers import (  # noqa: F401 - fixtures
    cloud_client, control, emulator, make_world, start_agent, wait_for,
)

PREFIX = dict(prefix_delegation=True, warm_ips=2, batch_size=4)


def setup_client(emulator):
    return boto3.client("ec2", endpoint_url=emulator.endpoint, region_name=emulator.region,
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def our_enis(emulator, world, node=0):
    """The node's ENIs as the cloud says, by device index."""
    cloud = cloud_client(emulator)
    enis = cloud.list_enis(InstanceId(world.instances[node].instance_id))
    return sorted(enis, key=lambda e: e.device_index or 0)


def inside(address: str, prefixes) -> bool:
    return any(ipaddress.IPv4Address(address) in ipaddress.IPv4Network(p) for p in prefixes)


def attach_all(agent, names, workers=8):
    """ADD requests from ``workers`` threads at once, each on its own connection."""
    def attach(name):
        client = AgentClient(agent.config["socket_path"], timeout=30.0)
        try:
            return agent.attach(name, client=client)
        finally:
            client.close()

    with ThreadPoolExecutor(workers) as pool:
        answers = list(pool.map(attach, names))
    bad = [(n, a) for n, a in zip(names, answers) if a[0] != 200]
    assert not bad, bad[:3]
    return [address_of(a[1]) for a in answers]


def address_of(body: dict) -> str:
    return body["result"]["ips"][0]["address"].split("/")[0]


def test_an_m5_large_runs_110_pods_on_its_primary_eni_alone(emulator, control, start_agent):
    """9 free slots x 16 = 144 addresses on the primary ENI: 110 pods take 7 prefixes (110
    + 2 warm = 112 = 7 x 16), or 8 when the burst's surge (one more warm) asks for the
    next one; the agent never creates an ENI, even while the burst holds all 9 slots."""
    world = make_world(emulator, instance_type="m5.large")
    agent = start_agent(world, **PREFIX)
    ips = attach_all(agent, [f"p{i}" for i in range(110)])
    assert len(set(ips)) == 110
    # a burst may take more (as many again as arrived lately); what is over goes back whole
    wait_for(lambda: agent.pool()["available"] >= 2 and len(our_enis(emulator, world)[0].prefixes)
             <= 8, 20, "the warm addresses, and the burst's extra prefixes back")
    enis = our_enis(emulator, world)
    assert len(enis) == 1 and enis[0].secondary_ips == ()
    held = len(enis[0].prefixes)
    assert held in (7, 8) and all(inside(ip, enis[0].prefixes) for ip in ips)
    counts = control.call_counts()
    assert counts.get("CreateNetworkInterface", 0) == 0, counts
    pool = agent.pool()
    assert (pool["mode"], pool["prefixes"], pool["enis"], pool["capacity"]) == (
        "prefixes", held, 1, 3 * 9 * 16)
    assert pool["per_eni"][0]["slots_used"] == held and pool["per_eni"][0]["capacity"] == 144
    shown = subprocess.run([sys.executable, "-m", "ipam_daemon.cli", "--socket",
                            agent.config["socket_path"]], capture_output=True, text=True,
                           timeout=30)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].startswith(f"mode prefixes  prefixes {held} (")
    assert f"{held}/9" in lines[3] and "10.0.0.16/28 (16 in use)" in lines[3]
    metrics = urllib.request.urlopen(
        f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=10).read().decode()
    in_use = sum(p["assigned"] + p["cooling"] > 0 for p in pool["per_eni"][0]["prefixes"])
    assert f'underlay_pool_prefixes{{state="in_use"}} {float(in_use)}' in metrics


def test_a_t3_small_holds_48_pod_addresses_per_eni(emulator, control, start_agent):
    """t3.small: 4 address slots per ENI, one the ENI's own: 3 prefixes = 48 addresses.
    The 49th pod needs the second ENI, created with its prefix in the same call. (Nothing
    warm, no burst surge, no ENI ahead, one pod at a time: the pool holds exactly what the
    pods need.)"""
    world = make_world(emulator, instance_type="t3.small")
    agent = start_agent(world, **dict(PREFIX, warm_ips=0, batch_size=1, surge_rise=0,
                                      eni_headroom=0))
    ips = attach_all(agent, [f"s{i}" for i in range(48)], workers=1)
    enis = our_enis(emulator, world)
    assert len(enis) == 1 and len(enis[0].prefixes) == 3 and len(set(ips)) == 48
    assert control.call_counts().get("CreateNetworkInterface", 0) == 0
    status, body = agent.attach("s48")
    assert status == 200, body
    enis = our_enis(emulator, world)
    assert len(enis) == 2 and len(enis[1].prefixes) == 1 and inside(address_of(body), enis[1].prefixes)
    assert agent.pool()["capacity"] == 3 * 48  # 3 ENIs on a t3.small


def test_a_type_that_is_not_nitro_is_refused_with_its_reason(emulator, control, start_agent):
    """t2.medium runs on Xen: EC2 delegates no prefix to it. The agent asks for none, says
    why in its pool status and in every ADD's error; with prefix_fallback it serves
    secondary addresses instead and says that."""
    world = make_world(emulator, instance_type="t2.medium")
    agent = start_agent(world, **dict(PREFIX, borrow_wait_seconds=0.5))
    blocked = agent.pool()["blocked"]
    assert blocked["code"] == 109
    assert "t2.medium is not built on the Nitro system (xen hypervisor)" in blocked["msg"]
    status, body = agent.attach("x0")
    assert status != 200 and "Nitro" in body["msg"], body
    assert control.call_counts().get("AssignPrivateIpAddresses", 0) == 0
    agent.stop()

    fallback = start_agent(make_world(emulator, instance_type="t2.medium"),
                           **dict(PREFIX, prefix_fallback=True))
    status, body = fallback.attach("x1")
    assert status == 200, body
    pool = fallback.pool()
    assert pool["mode"] == "secondary addresses" and pool["prefixes"] == 0
    assert pool["notice"]["code"] == 109 and "falling back" in pool["notice"]["msg"]


def fragment(ec2, world, skip=()):
    """One address inside each aligned /28 of 10.0.0.0/24 that could be a prefix (blocks
    1-14; block 0 holds the node's own addresses, block 15 the broadcast), on an ENI that
    is not the node's."""
    addresses = [f"10.0.0.{16 * block + 5}" for block in range(1, 15) if block not in skip]
    return ec2.create_network_interface(
        SubnetId=world.subnet_ids[0],
        PrivateIpAddresses=[{"PrivateIpAddress": a, "Primary": i == 0}
                            for i, a in enumerate(addresses)])["NetworkInterface"]


def test_a_fragmented_24_blocks_with_its_reason_and_a_reservation_still_gives(
        emulator, control, start_agent):
    """A /24 with one address taken in every aligned /28 still has 200+ free addresses but
    no prefix: the agent blocks with SubnetFragmented (code 108) naming the subnet. A
    prefix reservation made beforehand keeps a /28 for prefixes: the next node gets it."""
    ec2 = setup_client(emulator)
    world = make_world(emulator, instance_type="m5.large")
    fragment(ec2, world)
    agent = start_agent(world, **dict(PREFIX, borrow_wait_seconds=0.5))
    blocked = wait_for(lambda: agent.pool()["blocked"], 10, "the pool to say it is blocked")
    assert blocked["code"] == 108 and world.subnet_ids[0] in blocked["msg"]
    assert "fragmented" in blocked["msg"]
    status, body = agent.attach("f0")
    assert status != 200 and body["code"] in (51, 108), body
    assert our_enis(emulator, world)[0].prefixes == ()
    agent.stop()

    reserved = make_world(emulator, instance_type="m5.large")
    ec2.create_subnet_cidr_reservation(SubnetId=reserved.subnet_ids[0], Cidr="10.0.0.128/28",
                                       ReservationType="prefix")
    fragment(ec2, reserved, skip=(8,))
    agent = start_agent(reserved, **dict(PREFIX, warm_ips=1))
    status, body = agent.attach("r0")
    assert status == 200, body
    assert inside(address_of(body), ["10.0.0.128/28"])
    assert our_enis(emulator, reserved)[0].prefixes == ("10.0.0.128/28",)


def test_fragmented_with_fallback_serves_secondary_addresses_and_says_so(
        emulator, control, start_agent):
    ec2 = setup_client(emulator)
    world = make_world(emulator, instance_type="m5.large")
    fragment(ec2, world)
    agent = start_agent(world, **dict(PREFIX, prefix_fallback=True))
    status, body = agent.attach("g0")
    assert status == 200, body
    pool = agent.pool()
    assert pool["mode"] == "secondary addresses" and pool["blocked"] is None
    assert pool["notice"]["code"] == 108 and "falling back" in pool["notice"]["msg"]
    eni = our_enis(emulator, world)[0]
    assert address_of(body) in eni.secondary_ips and eni.prefixes == ()


def test_prefixes_go_back_only_whole(emulator, control, start_agent):
    """40 pods fill 3 prefixes (packed); 30 leave; the pool gives back whole prefixes only
    (one call) and keeps the prefix the remaining pods use, whoever arrived first."""
    world = make_world(emulator, instance_type="m5.large")
    agent = start_agent(world, **dict(PREFIX, warm_ips=2, batch_size=4))
    names = [f"w{i}" for i in range(40)]
    ips = dict(zip(names, attach_all(agent, names)))
    for name in names[5:35]:
        assert agent.detach(name)[0] == 200
    try:  # a throttled Unassign backs off for seconds: allow for it, and say what held it
        wait_for(lambda: len(our_enis(emulator, world)[0].prefixes) <= 2, 45,
                 "idle prefixes to go back")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npool: {agent.pool()}\n{agent.log_tail(60)}") from None
    kept = our_enis(emulator, world)[0].prefixes
    remaining = [ips[n] for n in names[:5] + names[35:]]
    assert all(inside(ip, kept) for ip in remaining), (kept, remaining)
    pool = agent.pool()
    assert pool["assigned"] == 10 and pool["available"] >= 2


def test_switching_modes_keeps_every_running_pods_address(emulator, control, start_agent,
                                                           tmp_path):
    """Secondary addresses -> prefixes -> secondary addresses, with pods running across
    both restarts: every pod keeps its address (its allocation and the cloud's), new pods
    get the new mode's addresses, the old mode's idle holdings go back."""
    world = make_world(emulator, instance_type="m5.large")
    agent = start_agent(world, warm_ips=2, batch_size=1)
    before = dict(zip(["a0", "a1", "a2"], attach_all(agent, ["a0", "a1", "a2"])))
    agent.stop()

    agent.config.update(PREFIX)
    agent.config_path.write_text(json.dumps(agent.config))
    agent.start()
    for name, ip in before.items():  # ADD again is idempotent: the same address
        assert address_of(agent.attach(name)[1]) == ip
    new = address_of(agent.attach("b0")[1])
    eni = wait_for(lambda: (e := our_enis(emulator, world)[0]).prefixes
                   and len(e.secondary_ips) == 3 and e, 20, "the idle singles to go back")
    assert inside(new, eni.prefixes) and set(eni.secondary_ips) == set(before.values())
    agent.stop()

    agent.config.update(prefix_delegation=False)
    agent.config_path.write_text(json.dumps(agent.config))
    agent.start()
    for name, ip in list(before.items()) + [("b0", new)]:
        assert address_of(agent.attach(name)[1]) == ip
    assert agent.detach("b0")[0] == 200
    eni = wait_for(lambda: (e := our_enis(emulator, world)[0]).prefixes == () and e, 20,
                   "the emptied prefix to go back")
    assert set(before.values()) <= set(eni.secondary_ips)
    assert agent.pool()["mode"] == "secondary addresses"
