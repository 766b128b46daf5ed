"""The harness ``Cluster`` with a fake API server beside it: the Nodes (providerID of their
instance) are registered and served inside each node namespace, and pods exist there from
before their ADD until their DEL succeeded (or their ADD failed), as kubelet and the
scheduler would have them. Used by the chaos run."""
from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lab.harness import Cluster, LabNode, Pod
from lab.node_io import wait_until

from .server import FakeApiServer
from .store import ApiError


@dataclass(frozen=True)
class Kube:
    """The cluster with its API server."""
    cluster: Cluster
    api: FakeApiServer
    urls: dict[str, str] = field(default_factory=dict)  # node name -> URL inside its netns

    def register(self, node: LabNode, *, provider_id: bool = True) -> None:
        """The Node (with the providerID of its instance unless ``provider_id`` is off: the
        agent must then find its instance another way), served inside its namespace."""
        assert self.cluster.cloud is not None
        zone = f"{self.cluster.cloud.region}a"
        self.api.create("nodes", {
            "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
            "spec": {"providerID": f"aws:///{zone}/{node.instance_id}"} if provider_id else {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        self.urls[node.name] = self.api.listen_in_netns(f"/run/netns/{node.netns}")

    def overrides(self, node: LabNode, base: Mapping[str, Any]) -> dict:
        """``base`` agent configuration overrides, talking to this API server."""
        return {**base, "kubernetes": "host", "kube_host": self.urls[node.name]}

    def add_pod(self, node: LabNode, name: str) -> Pod:
        self.api.create("pods", {"metadata": {"name": name, "namespace": "default"},
                                 "spec": {"nodeName": node.name,
                                          "containers": [{"name": "c", "image": "busybox"}]}},
                        namespace="default")
        try:
            return self.cluster.add_pod(node, name)
        except BaseException:
            self.api.delete("pods", name, "default")
            raise

    def del_pod(self, pod: Pod) -> None:
        self.cluster.del_pod(pod)
        with contextlib.suppress(ApiError):  # already gone
            self.api.delete("pods", pod.name, pod.namespace)

    def lose_pod(self, pod: Pod) -> None:
        """The runtime lost the sandbox (its namespace is gone) and the pod was force-deleted
        from the API server: no DEL will ever come; only the agent can notice."""
        subprocess.run(["ip", "netns", "delete", pod.netns], capture_output=True, timeout=30,
                       check=False)
        self.api.delete("pods", pod.name, pod.namespace)
        self.cluster.pods.pop((pod.namespace, pod.name), None)

    def pod_names(self) -> set[tuple[str, str]]:
        return {(p["metadata"]["namespace"], p["metadata"]["name"])
                for p in self.api.list("pods")}


def stale_allocations(kube: Kube) -> list[str]:
    """Allocations whose pod is gone from the API server."""
    names, stale = kube.pod_names(), []
    for node in kube.cluster.nodes:
        status, allocations = kube.cluster.agent_get(node, "/v1/pods")
        if status != 200:
            stale.append(f"{node.name}: /v1/pods answered {status}")
            continue
        stale += [f"{node.name}: allocation {a['container_id']} ({a['ip']}) of "
                  f"{a['namespace']}/{a['name']}, gone from the API server"
                  for a in allocations if (a["namespace"], a["name"]) not in names]
    return stale


def wait_for_pod_gc(kube: Kube, timeout: float) -> list[str]:
    """Wait (at most ``timeout`` s) until no allocation's pod is gone from the API server;
    returns what is still stale then (empty when the agents' GC caught up)."""
    stale: list[str] = []

    def done() -> bool:
        stale[:] = stale_allocations(kube)
        return not stale

    wait_until(done, timeout, step=0.5)
    return stale


def count_log_lines(cluster: Cluster, text: str) -> int:
    """Lines containing ``text`` in every agent log of the run (restarts append)."""
    return sum((n.workdir / "agent.log").read_text(errors="replace").count(text)
               for n in cluster.nodes if (n.workdir / "agent.log").exists())
