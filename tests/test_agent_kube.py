"""The agent PROCESS wired to Kubernetes (the fake API server, real client) and the emulated
EC2 (datapath none): identity from providerID with no instance_id configured, the per-node
override applied, pods deleted while the agent was down garbage-collected after a restart
(live ones kept), Warning events with the right reasons from real attach failures (subnet
exhausted, ENI limit, throttling, not ready), the node condition flipping when the pool is
exhausted and back when freed, and the agent serving with the API server unreachable."""
from __future__ import annotations

import json
import re

from fake_apiserver.fixtures import add_node, apiserver  # noqa: F401 - fixture
from test_agent_helpers import (  # noqa: F401 - fixtures
    AgentProcess, control, emulator, make_world, start_agent, wait_for,
)

from cni.spec import API_VERSION, Code

CONDITION = "UnderlayIPAvailable"


def kube_config(server, **extra) -> dict:
    config = dict(kubernetes="host", kube_host=server.url, kube_timeout=2.0, kube_boot_wait=2.0,
                  kube_gc_grace=0.0, kube_gc_interval=0.2, kube_status_interval=0.0,
                  kube_event_interval=60.0)
    config.update(extra)
    return config


def node_for(server, world, index: int = 0, **kwargs) -> str:
    inst = world.instances[index]
    add_node(server, inst.name, instance=inst.instance_id, **kwargs)
    return inst.name


def add_pod(server, name: str, node: str, namespace: str = "default") -> str:
    pod = server.create("pods", {"metadata": {"name": name, "namespace": namespace},
                                 "spec": {"nodeName": node,
                                          "containers": [{"name": "c", "image": "busybox"}]}},
                        namespace=namespace)
    return pod["metadata"]["uid"]


def attach_pod(agent, container: str, pod: str, uid: str = ""):
    return agent.attach(container, pod_name=pod, pod_uid=uid)


def run_pod(server, agent, node: str, container: str, pod: str):
    """The pod exists on the API server (else the pod GC would rightly release it)."""
    return attach_pod(agent, container, pod, add_pod(server, pod, node))


def events(server, reason: str, name: str | None = None) -> list[dict]:
    return [e for e in server.list("events") if e["reason"] == reason
            and (name is None or e["involvedObject"]["name"] == name)]


def condition(server, node: str) -> dict | None:
    conditions = (server.get("nodes", node).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == CONDITION), None)


def test_identity_override_and_pod_gc_across_a_restart(apiserver, emulator, control, start_agent):
    world = make_world(emulator, nodes=1)
    apiserver.create("configmaps", {"metadata": {"name": "big-pool", "namespace": "kube-system"},
                                    "data": {"config.json": json.dumps({"warm_ips": 5})}})
    node = node_for(apiserver, world, labels={"underlay.io/config": "big-pool"})
    # no instance_id in the configuration: it can only come from spec.providerID
    agent = start_agent(world, instance_id="", node_name=node, warm_ips=1, **kube_config(apiserver))
    wait_for(lambda: agent.pool()["available"] == 5, 15, "the override's 5 warm addresses")
    assert agent.pool()["targets"]["warm_ips"] == 5
    assert f"instance {world.instances[0].instance_id} from kubernetes" in agent.log_tail(200)
    # the label now names another ConfigMap: the running agent catches up, no restart
    apiserver.create("configmaps", {"metadata": {"name": "bigger", "namespace": "kube-system"},
                                    "data": {"warm_ips": "6"}})
    apiserver.patch("nodes", node, {"metadata": {"labels": {"underlay.io/config": "bigger"}}})
    wait_for(lambda: agent.pool()["available"] == 6, 15, "the new override's 6 warm addresses")

    uids = {name: add_pod(apiserver, name, node) for name in ("keep", "gone-a", "gone-b")}
    for name, uid in uids.items():
        status, body = attach_pod(agent, f"c-{name}", name, uid)
        assert status == 200, body
    assert agent.stop() == 0
    apiserver.delete("pods", "gone-a", "default")  # deleted while the agent was down
    apiserver.delete("pods", "gone-b", "default")
    agent.start()

    def pods() -> set[str]:
        status, body = agent.client.get("/v1/pods")
        assert status == 200, body
        return {p["name"] for p in body}

    wait_for(lambda: pods() == {"keep"}, 15, "the pod GC to release gone-a and gone-b")
    # logged just after each release: wait for it rather than read the log once
    wait_for(lambda: "pod GC: released" in agent.log_tail(400), 10, "the pod GC's log line")
    # a pod deleted while the agent runs goes the same way; the live one stays
    apiserver.delete("pods", "keep", "default")
    wait_for(lambda: pods() == set(), 15, "the pod GC to release keep")


def test_events_and_condition_from_real_attach_failures(apiserver, emulator, control,
                                                        start_agent):
    # ENI limit: a t3.micro holds 2 ENIs x 1 secondary address = 2 pods
    small = make_world(emulator, nodes=1, instance_type="t3.micro")
    node = node_for(apiserver, small)
    agent = start_agent(small, node_name=node, warm_ips=1, borrow_wait_seconds=3.0,
                        **kube_config(apiserver))
    wait_for(lambda: (condition(apiserver, node) or {}).get("status") == "True", 10,
             "the condition True at start")
    for i in range(2):
        status, body = run_pod(apiserver, agent, node, f"l{i}", f"pod-l{i}")
        assert status == 200, body
    status, body = run_pod(apiserver, agent, node, "l2", "pod-l2")
    assert body.get("code") == Code.ENI_LIMIT_REACHED, (body, agent.pool())
    pod_event = wait_for(lambda: events(apiserver, "ENILimitReached", "pod-l2"), 10,
                         "the ENILimitReached event")[0]
    assert pod_event["involvedObject"]["kind"] == "Pod" and pod_event["type"] == "Warning"
    assert "0 free addresses, 2 of 2 ENIs used, 2 of 2 pod IPs assigned" in pod_event["message"]
    cond = wait_for(lambda: (lambda c: c if c and c["status"] == "False" else None)(
        condition(apiserver, node)), 10, "the condition False")
    assert cond["reason"] == "ENILimitReached" and "2 of 2 ENIs used" in cond["message"], cond
    assert wait_for(lambda: events(apiserver, "ENILimitReached", node), 10, "the Node event")
    node_obj = apiserver.get("nodes", node)
    assert node_obj["metadata"]["annotations"]["underlay.io/ip-assigned"] == "2"
    assert agent.detach("l0") == (200, {})
    wait_for(lambda: (condition(apiserver, node) or {}).get("status") == "True", 10,
             "the condition back to True once an address is free")

    # subnet exhausted: a /28 has 11 usable addresses, the primary takes one, the primary
    # ENI takes 9 more (m5.large), and a second ENI needs 2
    tiny = make_world(emulator, nodes=1, subnet_cidrs=("10.0.0.0/28",))
    node = node_for(apiserver, tiny)
    agent = start_agent(tiny, node_name=node, warm_ips=1, borrow_wait_seconds=3.0,
                        **kube_config(apiserver))
    results = [run_pod(apiserver, agent, node, f"s{i}", f"pod-s{i}") for i in range(10)]
    assert [r[0] for r in results[:9]] == [200] * 9, results
    assert results[9][1]["code"] == Code.SUBNET_EXHAUSTED, results[9]
    event = wait_for(lambda: [e for e in events(apiserver, "SubnetExhausted")
                              if e["involvedObject"]["name"] == "pod-s9"], 10, "SubnetExhausted")
    message = event[0]["message"]  # the numbers: the subnet's free addresses and the pool's
    assert re.search(r"subnet-\w+ \(10\.0\.0\.0/28\) has [01] free addresses", message), message
    assert re.search(r"\d of 3 ENIs used, \d+ of \d+ pod IPs assigned", message), message

    # throttling: every AssignPrivateIpAddresses refused with RequestLimitExceeded
    world = make_world(emulator, nodes=1)
    node = node_for(apiserver, world)
    agent = start_agent(world, node_name=node, warm_ips=1, borrow_wait_seconds=1.5,
                        cloud_timeout=1.0, **kube_config(apiserver))
    wait_for(lambda: agent.pool()["available"] == 1, 10, "one warm address")
    control.set_faults([{"action": "AssignPrivateIpAddresses", "kind": "throttle", "rate": 1.0}])
    assert run_pod(apiserver, agent, node, "t0", "pod-t0")[0] == 200  # the warm address: no cloud call
    status, body = run_pod(apiserver, agent, node, "t1", "pod-t1")
    assert body["code"] == Code.CLOUD_THROTTLED, body
    event = wait_for(lambda: [e for e in events(apiserver, "CloudThrottled")
                              if e["involvedObject"]["name"] == "pod-t1"], 10, "CloudThrottled")
    assert "RequestLimitExceeded" in event[0]["message"] or "throttl" in event[0]["message"]
    control.clear_faults()


def test_attach_before_ready_gets_agent_not_ready(apiserver, emulator, control, tmp_path):
    world = make_world(emulator, nodes=1)
    node = node_for(apiserver, world)
    # the first reconcile cannot list the ENIs: the agent serves but is not ready
    control.set_faults([{"action": "DescribeNetworkInterfaces", "kind": "5xx", "rate": 1.0}])
    agent = AgentProcess(tmp_path, emulator, world, node_name=node, cloud_timeout=1.0,
                         **kube_config(apiserver))
    try:
        agent.start(wait_ready=False)
        status, body = wait_for(lambda: (lambda r: r if r[0] != 0 else None)(
            _attach_or_refused(agent)), 20, "the socket to answer")
        assert body["code"] == Code.TRY_AGAIN_LATER and "not ready" in body["msg"], body
        event = wait_for(lambda: events(apiserver, "AgentNotReady"), 10, "AgentNotReady")
        assert event[0]["involvedObject"]["name"] == "pod-early"
        control.clear_faults()
        wait_for(agent.ready, 20, "the agent to become ready")
        assert attach_pod(agent, "early", "pod-early")[0] == 200
    finally:
        agent.kill9()


def _attach_or_refused(agent) -> tuple[int, dict]:
    try:
        return attach_pod(agent, "early", "pod-early")
    except OSError:
        agent.client.close()
        return 0, {}


def test_agent_serves_with_the_api_server_unreachable(apiserver, emulator, control, start_agent):
    world = make_world(emulator, nodes=1)
    node = node_for(apiserver, world)
    apiserver.go_down()
    agent = start_agent(world, node_name=node, **kube_config(apiserver, kube_boot_wait=0.5))
    status, body = attach_pod(agent, "u0", "pod-u0")
    assert status == 200, body
    assert "API server unavailable" in agent.log_tail(200)
    apiserver.come_up()  # it catches up: the condition gets published
    wait_for(lambda: condition(apiserver, node), 20, "the condition once the API server is back")
    assert agent.stop() == 0


def test_detach_accepts_the_next_api_version(emulator, control, start_agent):
    """A newer executable's DEL during a rollout still releases; its ADD is refused."""
    world = make_world(emulator, nodes=1)
    agent = start_agent(world)
    assert agent.attach("r0")[0] == 200
    status, body = agent.attach("r1", api=API_VERSION + 1)
    assert body["code"] == Code.INCOMPATIBLE_VERSION, body
    assert agent.client.post("/v1/detach", {"api": API_VERSION + 2, "network": "net",
                                            "container_id": "r0", "ifname": "eth0"})[1]["code"] \
        == Code.INCOMPATIBLE_VERSION
    assert agent.pool()["assigned"] == 1
    assert agent.client.post("/v1/detach", {"api": API_VERSION + 1, "network": "net",
                                            "container_id": "r0", "ifname": "eth0"}) == (200, {})
    assert agent.pool()["assigned"] == 0
