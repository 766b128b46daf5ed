"""A cluster on one machine: the emulated cloud, its VPC fabric with N nodes, one agent
per node inside the node's namespace, and pods created and deleted through libcni (the
library containerd and CRI-O use), exactly as a runtime on the node would.

    with Cluster(nodes=3) as cluster:
        for node in cluster.nodes:
            cluster.run_agent(node)
        a = cluster.add_pod(cluster.nodes[0], "a")
        b = cluster.add_pod(cluster.nodes[1], "b")
        cluster.exec_in(a, ["busybox", "ping", "-c1", b.ip])

Everything the run makes carries its prefix and is written down first in its run record
(see cleanup.py): namespaces ``<prefix>-vpc``, ``<prefix>-out``, ``<prefix>-<instance>``,
``<prefix>-p<pod>``, processes, and files under ``/run/underlay-harness/<prefix>/``.
``stop()`` removes all of it, also after errors; after a crash of the harness itself,
``python -m lab.cleanup`` does.

The host executable is built from ``cni/shim`` (Go) and copied into the run's CNI bin dir,
the conflist comes from the ``cni`` package; the agent runs as the process a node runs
(``python -m ipam_daemon.main``). ``mode`` is the agents' ``datapath``.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import cleanup
from lab.fabric import OUTSIDE_HOST_IP, Fabric
from lab.node_io import (
    AGENT_CREDENTIALS,
    build_libcni_client,
    probe_source_outside,
    query_agent,
    wait_until,
    write_cni_files,
)
from lab.imds import ImdsServer
from lab.ec2.server import EmulatedCloud
from lab.ec2.settings import EmulatorSettings
from lab.ec2.world import World, build_world

logger = logging.getLogger(__name__)

PYTHON = sys.executable
REFERENCE_PLUGINS = "/usr/lib/cni"
_POD_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?\Z")
_COMMAND_TIMEOUT = 60.0
DATAPATH_MODES = ("veth", "ipvlan")  # cni.spec.MODES, which cloud may not import
# A DEL hands the pod's host veth, down and renamed so, to the agent's reaper thread
# (cni.datapath.veth.REAPED_PREFIX, which cloud may not import).
REAPED_LINK_PREFIX = "ulrm"

# intervals short enough that a cluster settles in seconds (an agent's defaults are minutes)
FAST_AGENT_CONFIG: Mapping[str, Any] = {
    "datapath": "veth", "warm_ips": 2, "pool_interval": 0.5, "shrink_interval": 1.0,
    "reconcile_interval": 10.0, "cooldown_seconds": 1.0, "eni_min_age": 2.0,
    "borrow_wait_seconds": 10.0, "subnet_full_backoff": 2.0, "cloud_timeout": 5.0,
}


class HarnessError(RuntimeError):
    """A harness step failed; the message names the step, the node or pod, and the output."""


@dataclass(frozen=True)
class LabNode:
    index: int
    name: str
    instance_id: str
    primary_ip: str
    primary_eni_id: str
    subnet_id: str
    netns: str
    workdir: Path

    @property
    def socket_path(self) -> str:
        return str(self.workdir / "agent.sock")


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    node: LabNode
    container_id: str
    netns: str
    ifname: str
    ip: str
    result: Mapping[str, Any]

    @property
    def netns_path(self) -> str:
        return str(cleanup.NETNS_DIR / self.netns)


@dataclass
class Agent:
    node: LabNode
    config: dict[str, Any]
    process: subprocess.Popen
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Cluster:
    """Context manager; ``nodes`` instances of ``instance_type`` spread over the subnets."""

    def __init__(self, nodes: int = 2, *, instance_type: str = "m5.large",
                 vpc_cidr: str = "10.0.0.0/16",
                 subnet_cidrs: Sequence[str] = ("10.0.0.0/24", "10.0.1.0/24"),
                 settings: EmulatorSettings | None = None, mode: str = "veth",
                 libcni_client: str | None = None, prefix: str | None = None,
                 imds: bool = True) -> None:
        if nodes < 1:
            raise ValueError(f"a cluster needs at least one node, got nodes={nodes}")
        if mode not in DATAPATH_MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(DATAPATH_MODES)}")
        self.prefix = cleanup.validate_prefix(prefix or cleanup.new_prefix())
        self._node_count = nodes
        self._world_args = dict(instance_type=instance_type, vpc_cidr=vpc_cidr,
                                subnet_cidrs=tuple(subnet_cidrs))
        self._settings = settings
        self.mode = mode
        self._libcni_client = libcni_client
        self.workdir = cleanup.STATE_DIR / self.prefix
        self.record: cleanup.RunRecord | None = None
        self.cloud: EmulatedCloud | None = None
        self.world: World | None = None
        self.fabric: Fabric | None = None
        self.nodes: list[LabNode] = []
        self.agents: dict[str, Agent] = {}
        self.pods: dict[tuple[str, str], Pod] = {}
        self._endpoints: dict[str, str] = {}
        self._pods_lock = threading.Lock()
        self._adding: set[tuple[str, str]] = set()
        self._imds_on_start = imds
        self.conf_dirs: dict[str, Path] = {}  # node name -> its /etc/cni/net.d (use_conf_dir)
        self.imds: dict[str, ImdsServer] = {}  # node name -> its metadata service

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Cluster:
        self.record = cleanup.RunRecord(self.prefix)
        try:
            self.workdir.mkdir(mode=0o700, parents=True)
            self.libcni_client = self._libcni_client or build_libcni_client()
            self.cni_bin_dir, self.conflist = write_cni_files(self.workdir)
            self.cloud = EmulatedCloud.start(settings=self._settings)
            self.world = build_world(self.cloud.endpoint, region=self.cloud.region,
                                     nodes=self._node_count, cluster=f"harness-{self.prefix}",
                                     **self._world_args)
            self.fabric = Fabric(self.cloud, record=self.record, vpc_id=self.world.vpc_id)
            self.fabric.start()
            template = json.loads(Path(self.conflist).read_text())
            for index, inst in enumerate(self.world.instances):
                node = LabNode(index, inst.name, inst.instance_id, inst.primary_ip,
                            inst.primary_eni_id, inst.subnet_id,
                            self.fabric.node_netns(inst.instance_id),
                            self.workdir / f"n{index}")
                node.workdir.mkdir(mode=0o700)
                template["plugins"][0]["socket"] = node.socket_path
                (node.workdir / "05-underlay.conflist").write_text(json.dumps(template, indent=1))
                self._endpoints[node.name] = self.fabric.cloud_endpoint(node.instance_id)
                self.nodes.append(node)
                if self._imds_on_start:
                    self.serve_imds(node)
        except BaseException:
            self.stop()
            raise
        logger.info("cluster %s: %d nodes up", self.prefix, len(self.nodes))
        return self

    def stop(self) -> None:
        """Stop agents, remove pods, the fabric, the cloud and the run's files. Every step
        runs even if an earlier one failed; the run record goes last."""
        for agent in list(self.agents.values()):
            self._try(self._stop_process, agent.process)
        self.agents.clear()
        for name in list(self.imds):
            self._try(self.imds.pop(name).stop)
        if self.fabric is not None:
            self._try(self.fabric.stop)
            self.fabric = None
        if self.cloud is not None:
            self._try(self.cloud.stop)
            self.cloud = None
        self.pods.clear()
        if self.record is not None:
            self._try(cleanup.clean_run, self.prefix)  # pod namespaces and anything left
            self.record.remove()
            self.record = None

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _try(step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception:
            logger.exception("cluster teardown step %s failed", getattr(step, "__name__", step))

    # -- the instance metadata service ---------------------------------------------------
    def serve_imds(self, node_ref: int | str | LabNode) -> None:
        """IMDSv2 on 169.254.169.254 inside the node's namespace (lab.imds)."""
        node = self.node(node_ref)
        assert self.cloud is not None and self.fabric is not None
        if node.name not in self.imds:
            self.imds[node.name] = ImdsServer(node.netns, self.fabric.netns_path(node.netns),
                                              node.instance_id, self.cloud.region,
                                              self.cloud.snapshot)

    def stop_imds(self, node_ref: int | str | LabNode) -> None:
        server = self.imds.pop(self.node(node_ref).name, None)
        if server is not None:
            server.stop()

    # -- agents --------------------------------------------------------------------------
    def node(self, ref: int | str | LabNode) -> LabNode:
        if isinstance(ref, LabNode):
            return ref
        for node in self.nodes:
            if ref in (node.index, node.name, node.instance_id):
                return node
        raise KeyError(f"no node {ref!r} in cluster {self.prefix}")

    def agent_config(self, node: LabNode, overrides: Mapping[str, Any] | None = None) -> dict:
        assert self.world is not None and self.cloud is not None
        config = dict(FAST_AGENT_CONFIG, datapath=self.mode)
        config.update(cluster=self.world.cluster, node_name=node.name,
                      instance_id=node.instance_id, region=self.cloud.region,
                      cloud_endpoint=self._endpoints[node.name],
                      socket_path=node.socket_path,
                      state_path=str(node.workdir / "state" / "ipam.db"))
        config.update(overrides or {})
        return config

    def run_agent(self, node_ref: int | str | LabNode,
                  config_overrides: Mapping[str, Any] | None = None, *,
                  wait_ready: bool = True, timeout: float = 30.0) -> Agent:
        """Start ``python -m ipam_daemon.main --config FILE`` inside the node's network
        namespace. ``nsenter --net``, not ``ip netns exec``: the agent stays in the
        machine's mount namespace, as a DaemonSet pod with the host's /var/run/netns
        mounted sees the runtime's pod namespaces (a lab containerd mounts them under its
        state directory, which a private mount namespace made before would not see)."""
        node = self.node(node_ref)
        if node.name in self.agents and self.agents[node.name].process.poll() is None:
            raise HarnessError(f"an agent already runs on {node.name}")
        assert self.record is not None
        config = self.agent_config(node, config_overrides)
        config_path = node.workdir / "agent.json"
        config_path.write_text(json.dumps(config, indent=1))
        log_path = node.workdir / "agent.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "UNDERLAY_"))}
        env.update(AGENT_CREDENTIALS)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["nsenter", f"--net={cleanup.NETNS_DIR / node.netns}", PYTHON, "-m",
                 "ipam_daemon.main", "--config", str(config_path)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env,
                cwd=str(node.workdir))
        self.record.add_process(process.pid)  # nsenter execs: the pid is the agent's
        agent = Agent(node, config, process, log_path)
        self.agents[node.name] = agent
        if wait_ready:
            self.wait_agent_ready(node, timeout)
        return agent

    def wait_agent_ready(self, node_ref: int | str | LabNode, timeout: float = 30.0) -> None:
        node = self.node(node_ref)
        agent = self.agents[node.name]

        def ready() -> bool:
            if agent.process.poll() is not None:
                raise HarnessError(f"agent on {node.name} exited with "
                                   f"{agent.process.returncode}:\n{agent.log_tail()}")
            try:
                status, body = query_agent(agent.config["socket_path"], "/v1/status")
            except OSError:
                return False
            return status == 200 and bool(body.get("ready"))

        if not wait_until(ready, timeout):
            raise HarnessError(f"agent on {node.name} not ready after {timeout}s:\n"
                               f"{agent.log_tail()}")

    def stop_agent(self, node_ref: int | str | LabNode, *, kill: bool = False) -> int | None:
        """SIGTERM (or SIGKILL with ``kill``) the node's agent; returns its exit code."""
        node = self.node(node_ref)
        agent = self.agents.pop(node.name, None)
        if agent is None:
            return None
        return self._stop_process(agent.process, kill=kill)

    @staticmethod
    def _stop_process(process: subprocess.Popen, kill: bool = False) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                return process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        return process.wait(timeout=10)

    def wait_reaped(self, node_ref: int | str | LabNode, timeout: float = 10.0) -> None:
        """Wait until the node's agent has deleted the host veths of the pods deleted so far
        (each DEL hands its host veth to a reaper thread and returns)."""
        node = self.node(node_ref)

        def reaped() -> bool:
            links = self.exec_in(node, ["ip", "-o", "link"]).stdout.splitlines()
            return not any(line.split(":")[1].strip().startswith(REAPED_LINK_PREFIX)
                           for line in links)

        if not wait_until(reaped, timeout):
            raise HarnessError(f"host veths of deleted pods still on {node.name} after "
                               f"{timeout}s")

    def agent_get(self, node_ref: int | str | LabNode, path: str) -> tuple[int, Any]:
        """GET on the node agent's socket, e.g. ``/v1/pool``, ``/v1/pods``, ``/v1/enis``."""
        return query_agent(self.node(node_ref).socket_path, path)

    # -- pods ----------------------------------------------------------------------------
    def add_pod(self, node_ref: int | str | LabNode, name: str, namespace: str = "default",
                ifname: str = "eth0") -> Pod:
        """A pod sandbox (a namespace) wired by ``libcni add`` run on the node."""
        node = self.node(node_ref)
        for what, value in (("pod name", name), ("pod namespace", namespace)):
            if not _POD_NAME.match(value):
                raise ValueError(f"{what} {value!r}: 1-32 lowercase letters, digits or '-'")
        with self._pods_lock:  # add_pod/del_pod may run from many threads (churn tests)
            if (namespace, name) in self.pods or (namespace, name) in self._adding:
                raise HarnessError(f"pod {namespace}/{name} already exists")
            self._adding.add((namespace, name))
        try:
            return self._add_pod(node, name, namespace, ifname)
        finally:
            with self._pods_lock:
                self._adding.discard((namespace, name))

    def _add_pod(self, node: LabNode, name: str, namespace: str, ifname: str) -> Pod:
        assert self.record is not None
        sandbox = name if namespace == "default" else f"{namespace}.{name}"
        netns = f"{self.prefix}-p{sandbox}"
        container_id = f"{self.prefix}-{sandbox}"
        self.record.add_netns(netns)
        _run(["ip", "netns", "add", netns])
        try:
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
            out = self._libcni(node, "add", netns, container_id, ifname, namespace, name)
            result = json.loads(out)
            ip = result["ips"][0]["address"].split("/")[0]
        except BaseException:
            self._try(self._libcni, node, "del", netns, container_id, ifname, namespace, name)
            self._try(_run, ["ip", "netns", "delete", netns])
            raise
        pod = Pod(name, namespace, node, container_id, netns, ifname, ip, result)
        with self._pods_lock:
            self.pods[(namespace, name)] = pod
        logger.info("pod %s/%s on %s: %s", namespace, name, node.name, ip)
        return pod

    def del_pod(self, pod: Pod) -> None:
        """``libcni del`` on the pod's node, then the sandbox goes; idempotent."""
        self._libcni(pod.node, "del", pod.netns, pod.container_id, pod.ifname,
                     pod.namespace, pod.name)
        if (cleanup.NETNS_DIR / pod.netns).exists():
            _run(["ip", "netns", "delete", pod.netns])
        with self._pods_lock:
            self.pods.pop((pod.namespace, pod.name), None)

    def _libcni(self, node: LabNode, command: str, netns: str, container_id: str, ifname: str,
                namespace: str, name: str) -> str:
        args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};"
                f"K8S_POD_INFRA_CONTAINER_ID={container_id}")  # as containerd passes them
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
               "CNI_PATH": f"{self.cni_bin_dir}:{REFERENCE_PLUGINS}",
               "LIBCNI_CACHE_DIR": str(node.workdir / "cni-cache")}
        conflist = self.conflist_for(node)
        proc = subprocess.run(
            ["ip", "netns", "exec", node.netns, self.libcni_client, command, conflist,
             str(cleanup.NETNS_DIR / netns), container_id, ifname, args],
            capture_output=True, text=True, env=env, timeout=_COMMAND_TIMEOUT, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"libcni {command} of {namespace}/{name} on {node.name} failed: "
                               f"{proc.stdout.strip()} {proc.stderr.strip()}")
        return proc.stdout

    def conflist_for(self, node: LabNode) -> str:
        """The node's conflist: the shared one with the node's agent socket, or, once
        :meth:`use_conf_dir` named a directory for the node, the file a runtime loads from
        it: the first of its ``*.conf``/``*.conflist``/``*.json`` files in name order, as
        libcni's ConfFiles lists them and containerd and CRI-O take them."""
        conf_dir = self.conf_dirs.get(node.name)
        if conf_dir is None:
            return str(node.workdir / "05-underlay.conflist")
        found = sorted(p.name for p in conf_dir.iterdir() if p.is_file()
                       and p.suffix in (".conf", ".conflist", ".json"))
        if not found:
            raise HarnessError(f"no network configuration in {conf_dir} for {node.name}")
        return str(conf_dir / found[0])

    def use_conf_dir(self, node_ref: int | str | LabNode, conf_dir: Path) -> None:
        """Pods of the node are added and deleted with the first conflist of ``conf_dir``
        at that moment (like /etc/cni/net.d on a real node)."""
        self.conf_dirs[self.node(node_ref).name] = Path(conf_dir)

    # -- commands ------------------------------------------------------------------------
    def exec_in(self, target: LabNode | Pod | str, cmd: Sequence[str], *, check: bool = True,
                timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess:
        """Run ``cmd`` inside a node's or pod's namespace (or one named by the run)."""
        netns = target if isinstance(target, str) else target.netns
        if not netns.startswith(self.prefix + "-"):
            raise ValueError(f"namespace {netns!r} is not part of cluster {self.prefix}")
        proc = subprocess.run(["ip", "netns", "exec", netns, *cmd], capture_output=True,
                              stdin=subprocess.DEVNULL, text=True, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise HarnessError(f"{' '.join(cmd)} in {netns} exited {proc.returncode}: "
                               f"{proc.stdout.strip()} {proc.stderr.strip()}")
        return proc

    def source_seen_outside(self, target: LabNode | Pod, port: int = 8080,
                            timeout: float = 10.0) -> str:
        """Open a TCP connection from ``target`` to the outside host and return the source
        address the outside host saw (the node's primary IP when SNAT applies)."""
        assert self.fabric is not None
        return probe_source_outside(self.fabric.outside, target.netns, OUTSIDE_HOST_IP, port,
                                    timeout)


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=_COMMAND_TIMEOUT,
                          check=False)
    if proc.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout
