"""``CriClient``: the RuntimeService calls a kubelet makes for a pod's sandbox, over the
runtime's gRPC unix socket, each with a deadline.

``sandbox_config`` fills a PodSandboxConfig the way the kubelet does for a pod: metadata
(name, namespace, uid, attempt), hostname, a log directory, port mappings (hostPort),
annotations (the bandwidth ones among them), and a Linux part with the cgroup parent, the
pod's own network namespace and a container PID namespace.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from lab.cri import load_api

logger = logging.getLogger(__name__)

CALL_TIMEOUT = 60.0  # seconds: RunPodSandbox includes the CNI ADD and its retries


@dataclass(frozen=True)
class PodPort:
    container_port: int
    host_port: int
    protocol: str = "TCP"
    host_ip: str = ""


@dataclass(frozen=True)
class SandboxRequest:
    """A pod as the kubelet hands it to the runtime."""

    name: str
    namespace: str
    uid: str
    attempt: int = 0
    ports: Sequence[PodPort] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SandboxStatus:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    ready: bool
    ip: str
    annotations: Mapping[str, str]
    netns: str = ""  # the sandbox's network namespace (from the verbose status)


class CriError(RuntimeError):
    """A RuntimeService call failed; the message names the call and the runtime's reason."""

    def __init__(self, call: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{call} failed: {code.name}: {details}")
        self.code = code
        self.details = details


class CriClient:
    def __init__(self, socket_path: str, *, cgroup_parent: str, log_root: str) -> None:
        self.socket_path = socket_path
        self.cgroup_parent = cgroup_parent
        self.log_root = log_root
        self._pb, grpc_stubs = load_api()
        self._channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._stub = grpc_stubs.RuntimeServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, name: str, request: Any, timeout: float = CALL_TIMEOUT) -> Any:
        try:
            return getattr(self._stub, name)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CriError(name, exc.code(), exc.details() or "") from None

    # ---- the runtime -----------------------------------------------------------------

    def version(self) -> tuple[str, str]:
        reply = self._call("Version", self._pb.VersionRequest(version="v1"), timeout=10)
        return reply.runtime_name, reply.runtime_version

    def conditions(self) -> dict[str, tuple[bool, str, str]]:
        """Status: {type: (status, reason, message)}, e.g. NetworkReady."""
        reply = self._call("Status", self._pb.StatusRequest(), timeout=10)
        return {c.type: (c.status, c.reason, c.message) for c in reply.status.conditions}

    # ---- sandboxes -------------------------------------------------------------------

    def sandbox_config(self, pod: SandboxRequest) -> Any:
        pb = self._pb
        ports = [pb.PortMapping(protocol=pb.Protocol.Value(p.protocol), container_port=p.container_port,
                                host_port=p.host_port, host_ip=p.host_ip) for p in pod.ports]
        security = pb.LinuxSandboxSecurityContext(namespace_options=pb.NamespaceOption(
            network=pb.POD, pid=pb.CONTAINER, ipc=pb.POD))
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=pod.name, namespace=pod.namespace, uid=pod.uid,
                                           attempt=pod.attempt),
            hostname=pod.name,
            log_directory=f"{self.log_root}/{pod.namespace}_{pod.name}_{pod.uid}",
            port_mappings=ports, labels=dict(pod.labels), annotations=dict(pod.annotations),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=f"{self.cgroup_parent}/pod{pod.uid}",
                                           security_context=security))

    def run_pod_sandbox(self, pod: SandboxRequest) -> str:
        reply = self._call("RunPodSandbox", self._pb.RunPodSandboxRequest(
            config=self.sandbox_config(pod)))
        return reply.pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("StopPodSandbox", self._pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self._call("RemovePodSandbox",
                   self._pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def pod_sandbox_status(self, sandbox_id: str) -> SandboxStatus:
        reply = self._call("PodSandboxStatus", self._pb.PodSandboxStatusRequest(
            pod_sandbox_id=sandbox_id, verbose=True), timeout=10)
        status = reply.status
        return SandboxStatus(status.id, status.metadata.name, status.metadata.namespace,
                             status.metadata.uid, status.metadata.attempt,
                             status.state == self._pb.SANDBOX_READY, status.network.ip,
                             dict(status.annotations), _netns_path(reply.info.get("info", "")))

    def list_pod_sandboxes(self) -> list[SandboxStatus]:
        reply = self._call("ListPodSandbox", self._pb.ListPodSandboxRequest(), timeout=10)
        return [SandboxStatus(item.id, item.metadata.name, item.metadata.namespace,
                              item.metadata.uid, item.metadata.attempt,
                              item.state == self._pb.SANDBOX_READY, "", dict(item.annotations))
                for item in reply.items]


def _netns_path(info: str) -> str:
    """The network namespace path in the runtime's verbose sandbox info (containerd puts
    the OCI runtime spec there), or ""."""
    try:
        spec = json.loads(info).get("runtimeSpec", {})
    except ValueError:
        return ""
    for namespace in spec.get("linux", {}).get("namespaces", []):
        if namespace.get("type") == "network":
            return namespace.get("path", "")
    return ""
