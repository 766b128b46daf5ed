"""Attach rollback with the real veth datapath, in a node namespace of the cluster harness:
when wiring fails (here: the pod's netns does not exist) the agent answers code 105, naming
the cause, and the borrowed address goes back to the pool: no allocation, no host veth.
Then a good pod on the same node still gets wired and its detach is idempotent."""
from __future__ import annotations

from lab.harness import Cluster
from cni.spec import Code
from ipam_daemon.client import AgentClient


def test_failed_wiring_returns_the_address():
    with Cluster(nodes=1) as cluster:
        node = cluster.nodes[0]
        cluster.run_agent(node, {"snat": False, "warm_ips": 2})
        client = AgentClient(node.socket_path, timeout=30)
        try:
            body = {"api": 1, "cni_version": "1.0.0", "network": "underlay",
                    "container_id": "rollback1", "ifname": "eth0", "mode": "veth",
                    "netns": f"/var/run/netns/{cluster.prefix}-missing",
                    "pod_namespace": "default", "pod_name": "ghost"}
            status, reply = client.post("/v1/attach", body)
            assert status == 500 and reply["code"] == Code.DATAPATH_FAILURE, reply
            assert "netns" in reply["msg"] and "does not exist" in reply["msg"], reply
            assert cluster.agent_get(node, "/v1/pods")[1] == []
            pool = cluster.agent_get(node, "/v1/pool")[1]
            assert pool["assigned"] == 0 and pool["cooling"] == 1  # returned, cooling
            links = cluster.exec_in(node, ["ip", "-o", "link", "show"]).stdout
            assert "ulay" not in links  # no host veth left behind

            pod = cluster.add_pod(node, "good")
            assert [p["ip"] for p in cluster.agent_get(node, "/v1/pods")[1]] == [pod.ip]
            cluster.del_pod(pod)
            assert cluster.agent_get(node, "/v1/pods")[1] == []
            assert client.post("/v1/detach", {"api": 1, "network": "underlay",
                                              "container_id": pod.container_id,
                                              "ifname": "eth0"}) == (200, {})
        finally:
            client.close()
