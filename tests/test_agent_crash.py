"""kill -9 of the agent process at random instants (seeded) in the middle of borrow/return
loops, restarted each time: afterwards no address is assigned twice and none is lost
(the store, the cloud and the allocations agree). Short intervals keep the pool loop busy
(grow, shrink, ENI create/delete) so that kills also land inside pool actions.

Two nodes share the emulated cloud and run their kill loops side by side (12 kills each,
24 kill points in all), which halves the wall time: most of a cycle is the restart."""
from __future__ import annotations

import http.client
import random
import sqlite3
import threading
import time

from test_agent_helpers import (  # noqa: F401 - fixtures
    cloud_client, cloud_ips, control, emulator, make_world, start_agent, wait_for,
)

from ipam_daemon.client import AgentClient

SEED = 20261129
KILLS_PER_NODE = 12
NODES = 2
KEYS = [f"pod{i}" for i in range(14)]  # more than one m5.large ENI holds (9)


class Client:
    """Drives random attach/detach and keeps the model: what the client was told."""

    def __init__(self, agent, rng: random.Random) -> None:
        self.agent = agent
        self.rng = rng
        self.held: dict[str, str] = {}  # key -> IP, from successful attaches
        self.uncertain: dict[str, str] = {}  # key -> "attach"|"detach" cut by a kill
        self.ops = 0
        self.conn = AgentClient(agent.config["socket_path"], timeout=30.0)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            key = self.rng.choice(KEYS)
            op = "detach" if key in self.held else "attach"
            self.uncertain[key] = op
            try:
                status, body = (self.agent.attach(key, client=self.conn) if op == "attach"
                                else self.agent.detach(key, client=self.conn))
            except (OSError, http.client.HTTPException):
                self.conn.close()
                return  # the agent died under us: the op stays uncertain
            self.settle(key, op, status, body)

    def settle(self, key: str, op: str, status: int, body: dict) -> None:
        assert status == 200, (key, op, status, body)
        self.uncertain.pop(key, None)
        self.ops += 1
        if op == "attach":
            ip = body["result"]["ips"][0]["address"].split("/")[0]
            if key in self.held:
                assert self.held[key] == ip, f"{key} changed address across a restart"
            assert ip not in {v for k, v in self.held.items() if k != key}, f"{ip} twice"
            self.held[key] = ip
        else:
            self.held.pop(key, None)

    def resolve(self) -> None:
        """After a restart, repeat every op a kill cut short (attach and detach are
        idempotent), so the model is exact again."""
        for key, op in list(self.uncertain.items()):
            status, body = self.agent.attach(key) if op == "attach" else self.agent.detach(key)
            self.settle(key, op, status, body)


def kill_loop(agent, client: Client, rng: random.Random) -> None:
    for _ in range(KILLS_PER_NODE):
        stop = threading.Event()
        worker = threading.Thread(target=client.run, args=(stop,))
        worker.start()
        time.sleep(rng.uniform(0.02, 0.4))
        agent.kill9()
        stop.set()
        worker.join(timeout=30)
        assert not worker.is_alive()
        agent.start()
        client.resolve()


def check_agreement(agent, client: Client, cloud, world) -> None:
    pods = {p["container_id"]: p for p in agent.client.get("/v1/pods")[1]}
    assert {k: p["ip"] for k, p in pods.items()} == client.held
    assert not any(p["lost"] for p in pods.values())
    assert agent.stop() == 0
    db = sqlite3.connect(agent.config["state_path"])
    addresses = dict(db.execute("SELECT ip, state FROM addresses").fetchall())
    allocations = dict(db.execute("SELECT container_id, ip FROM allocations").fetchall())
    db.close()
    assert allocations == client.held
    assert len(set(allocations.values())) == len(allocations)  # no address twice
    assigned = {ip for ip, state in addresses.items() if state == "assigned"}
    assert assigned == set(allocations.values())  # no assigned address without its pod
    assert "releasing" not in addresses.values()
    # none lost: the store knows exactly what the cloud holds on our ENIs
    inst = agent.instance
    assert set(addresses) == cloud_ips(cloud, inst.instance_id, world.cluster,
                                       inst.primary_eni_id)


def test_kill9_at_random_points_loses_nothing(emulator, control, start_agent):
    world = make_world(emulator, nodes=NODES)
    agents = [start_agent(world, node=n, warm_ips=2, cooldown_seconds=0.1,
                          shrink_interval=0.05, borrow_wait_seconds=5.0, log_level="WARNING")
              for n in range(NODES)]
    clients = [Client(a, random.Random(SEED + n)) for n, a in enumerate(agents)]
    errors: list[BaseException] = []

    def guarded(agent, client, rng):
        try:
            kill_loop(agent, client, rng)
        except BaseException as exc:  # re-raised on the main thread
            errors.append(exc)

    started = time.monotonic()
    loops = [threading.Thread(target=guarded, args=(a, c, random.Random(SEED * 7 + n)))
             for n, (a, c) in enumerate(zip(agents, clients))]
    for loop in loops:
        loop.start()
    for loop in loops:
        loop.join(timeout=120)
    if errors:
        raise errors[0]
    assert not any(loop.is_alive() for loop in loops)
    ops = sum(c.ops for c in clients)
    assert ops > NODES * KILLS_PER_NODE * 3, ops
    print(f"{NODES * KILLS_PER_NODE} kills, {ops} ops in {time.monotonic() - started:.1f}s")

    # leaked ENIs (an agent killed between create and attach) are swept by the agents
    cloud = cloud_client(emulator)
    wait_for(lambda: not cloud.list_leaked_enis(world.cluster, 0), 15, "leaked ENIs swept")
    for agent, client in zip(agents, clients):
        check_agreement(agent, client, cloud, world)
