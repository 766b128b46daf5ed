"""containerd as the container runtime of an emulated node: the kubelet's runtime, which runs
the underlay executable for every pod sandbox.

    runtime = NodeRuntime(cluster, node)   # config, pause image; not started
    runtime.start()                        # containerd inside the node's network namespace
    with runtime.client() as cri:          # lab.cri.client.CriClient on its socket
        sandbox = cri.run_pod_sandbox(...)
    runtime.stop()                         # sandboxes stopped and removed, nothing left

Each node's containerd (Debian's 1.6, CRI plugin built in) has its own root, state, gRPC
socket and runc root under the node's work directory, and its CNI ``bin_dir`` and
``conf_dir`` in the node's host tree (``<node>/host/opt/cni/bin`` and ``.../etc/cni/net.d``),
where the underlay installer puts the executable and, once the agent is ready, the
conflist. Two settings this machine needs (see the project's REFERENCE notes): containerd
is started with ``nsenter --net`` (``ip netns exec`` would hide /sys/fs/cgroup from runc)
and ``restrict_oom_score_adj`` (the sandbox asks for an oom_score_adj the VM refuses).
Sandbox network namespaces are mounted under the state directory, and every sandbox's
cgroups under ``/<run prefix>-pods`` (the cgroup parent the lab's kubelet stand-in sets),
so that stopping a runtime, or ``cleanup.clean_run`` after a crash, can find all of it.
The machine's own containerd, if any, is never touched.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lab import cleanup
from lab.harness import Cluster, HarnessError, LabNode
from lab.node_io import build_shim, install_shim, wait_until
from lab.cri.client import CriClient, CriError, PodPort, SandboxRequest
from lab.pause_image import PAUSE_IMAGE, build_pause_image

logger = logging.getLogger(__name__)

REFERENCE_PLUGINS = Path("/usr/lib/cni")
CHAINED_PLUGINS = ("loopback", "portmap", "bandwidth", "host-local", "ptp")
SHIM_SOCKETS = cleanup.SHIM_SOCKET_DIRS[0]  # hard-coded by containerd 1.6 for shim sockets
_START_TIMEOUT = 30.0

CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{bin_dir}"
  conf_dir = "{conf_dir}"
  max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  Root = "{runc_root}"
  SystemdCgroup = false
"""


class NodeRuntime:
    """One node's containerd; see the module docstring."""

    def __init__(self, cluster: Cluster, node: LabNode) -> None:
        self.cluster, self.node = cluster, node
        self.dir = node.workdir / "ctd"
        self.socket = str(self.dir / "containerd.sock")
        self.host = node.workdir / "host"  # the node's /: opt/cni/bin, etc/cni/net.d
        self.bin_dir = self.host / "opt" / "cni" / "bin"
        self.conf_dir = self.host / "etc" / "cni" / "net.d"
        self.runc_root = self.dir / "runc"
        self.cgroup_parent = f"/{cluster.prefix}-pods"
        self.process: subprocess.Popen | None = None
        self.log_path = self.dir / "containerd.log"
        self._prepared = False

    # ---- lifecycle -------------------------------------------------------------------

    def prepare(self) -> None:
        """Directories, the config, the reference plugins the runtime runs beside ours."""
        if self._prepared:
            return
        for path in (self.dir, self.bin_dir, self.conf_dir, self.dir / "logs"):
            path.mkdir(parents=True, exist_ok=True)
        for name in CHAINED_PLUGINS:
            target = self.bin_dir / name
            if not target.exists():
                target.symlink_to(REFERENCE_PLUGINS / name)
        (self.dir / "config.toml").write_text(CONFIG.format(
            root=self.dir / "root", state=self.dir / "state", socket=self.socket,
            pause=PAUSE_IMAGE, bin_dir=self.bin_dir, conf_dir=self.conf_dir,
            runc_root=self.runc_root))
        self._prepared = True

    def install_executable(self) -> str:
        """The underlay executable into the node's CNI bin dir, as the installer would."""
        self.prepare()
        return install_shim(self.bin_dir)

    def start(self) -> None:
        self.prepare()
        assert self.cluster.record is not None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["nsenter", f"--net={cleanup.NETNS_DIR / self.node.netns}", "containerd",
                 "--config", str(self.dir / "config.toml")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        self.cluster.record.add_process(self.process.pid)  # nsenter execs: containerd's pid
        if not wait_until(self._answers, _START_TIMEOUT, step=0.05):
            raise HarnessError(f"containerd on {self.node.name} did not answer within "
                               f"{_START_TIMEOUT}s:\n{self.log_tail()}")
        self._import_pause_image()

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise HarnessError(f"containerd on {self.node.name} exited with "
                               f"{self.process.returncode}:\n{self.log_tail()}")
        if not os.path.exists(self.socket):
            return False
        try:
            with self.client() as cri:
                cri.version()
            return True
        except CriError:
            return False

    def _import_pause_image(self) -> None:
        image = build_pause_image()
        proc = subprocess.run(["ctr", "--address", self.socket, "-n", "k8s.io", "images",
                               "import", str(image)], capture_output=True, text=True,
                              timeout=120, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"importing the pause image into containerd on "
                               f"{self.node.name} failed: {proc.stderr.strip()}")

    def kill(self) -> None:
        """SIGKILL containerd alone (its shims and the sandboxes keep running)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop and remove every sandbox through the CRI, stop containerd, then remove
        what is left of it: runc containers, shims, mounts, cgroups, shim sockets."""
        ids = []
        if self.process is not None and self.process.poll() is None:
            try:
                with self.client() as cri:
                    for sandbox in cri.list_pod_sandboxes():
                        ids.append(sandbox.id)
                        self._quietly(cri.stop_pod_sandbox, sandbox.id)
                        self._quietly(cri.remove_pod_sandbox, sandbox.id)
            except CriError as exc:
                logger.warning("containerd on %s: %s", self.node.name, exc)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        self.remove_leftovers(ids)

    def remove_leftovers(self, known_ids: list[str] = ()) -> None:
        runc_dir = self.runc_root / "k8s.io"
        ids = set(known_ids) | ({p.name for p in runc_dir.iterdir()} if runc_dir.is_dir() else set())
        for container in sorted(ids):
            subprocess.run(["runc", "--root", str(runc_dir), "delete", "--force", container],
                           capture_output=True, timeout=30, check=False)
        for pid in self._shim_pids():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        cleanup.kill_cgroup_processes(self.cluster.prefix)
        cleanup.unmount_under(self.dir)
        cleanup.remove_cgroups(self.cluster.prefix)
        for container in ids:  # a killed shim leaves its socket behind
            (SHIM_SOCKETS / shim_socket_name(self.socket, container)).unlink(missing_ok=True)
        for empty in cleanup.SHIM_SOCKET_DIRS:
            try:
                empty.rmdir()
            except OSError:
                pass  # not empty (the machine's own containerd) or gone

    def _shim_pids(self) -> list[int]:
        """containerd-shim-runc-v2 processes that belong to this containerd."""
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and \
                    self.socket.encode() in argv:
                pids.append(int(proc.name))
        return pids

    @staticmethod
    def _quietly(call, *args) -> None:
        try:
            call(*args)
        except CriError as exc:
            logger.warning("%s", exc)

    # ---- use -------------------------------------------------------------------------

    def client(self) -> CriClient:
        return CriClient(self.socket, cgroup_parent=self.cgroup_parent,
                         log_root=str(self.dir / "logs"))

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def shim_socket_name(containerd_socket: str, sandbox_id: str, namespace: str = "k8s.io") -> str:
    """The name containerd 1.6 gives a sandbox shim's socket under /run/containerd/s."""
    return hashlib.sha256(os.path.join(containerd_socket, namespace,
                                       sandbox_id).encode()).hexdigest()


def wait_network_ready(runtime: NodeRuntime, timeout: float = 30.0) -> None:
    def ready() -> bool:
        with runtime.client() as cri:
            return cri.conditions().get("NetworkReady", (False, "", ""))[0]

    deadline = time.monotonic() + timeout
    if not wait_until(ready, max(0.0, deadline - time.monotonic()), step=0.1):
        with runtime.client() as cri:
            raise HarnessError(f"containerd on {runtime.node.name}: NetworkReady is still "
                               f"{cri.conditions().get('NetworkReady')}")



def install_underlay(runtime: NodeRuntime, agent_socket: str, *, wait_seconds: float = 60.0,
                     portmap: bool = True, bandwidth: bool = True) -> None:
    """What the DaemonSet's init and conflist containers do on the node: the installer puts
    the executable into the CNI bin dir and, once the agent answers ready, the conflist."""
    from cni.conflist import ConflistOptions, render_conflist_json

    runtime.prepare()
    template = runtime.dir / "underlay.conflist.template"
    template.write_text(render_conflist_json(ConflistOptions(
        socket=agent_socket, portmap=portmap, bandwidth=bandwidth)))
    proc = subprocess.run(
        [sys.executable, "-m", "ipam_daemon.installer", "--host-root", str(runtime.host),
         "install", "--plugin-source", build_shim(), "--conflist-template", str(template),
         "--agent-socket", agent_socket, "--wait-seconds", str(wait_seconds)],
        capture_output=True, text=True, timeout=wait_seconds + 60, check=False)
    if proc.returncode != 0:
        raise HarnessError(f"underlay-install on {runtime.node.name} failed: {proc.stderr}")


@dataclass(frozen=True)
class RuntimePod:
    """A pod sandbox created through the runtime (the kubelet's way)."""

    sandbox_id: str
    name: str
    namespace: str
    uid: str
    ip: str
    netns: str
    node: LabNode

    def exec(self, cmd: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a command inside the sandbox's network namespace."""
        return subprocess.run(["nsenter", f"--net={self.netns}", *cmd], capture_output=True,
                              text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)


def run_pod(runtime: NodeRuntime, name: str, namespace: str = "default", *, attempt: int = 0,
            uid: str | None = None, ports: Sequence[PodPort] = (),
            annotations: Mapping[str, str] | None = None) -> RuntimePod:
    """RunPodSandbox as the kubelet does it, then read back what the runtime reports."""
    request = SandboxRequest(name=name, namespace=namespace,
                             uid=uid or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{name}")),
                             attempt=attempt, ports=tuple(ports),
                             annotations=dict(annotations or {}))
    with runtime.client() as cri:
        sandbox_id = cri.run_pod_sandbox(request)
        status = cri.pod_sandbox_status(sandbox_id)
    if not status.ready or not status.ip or not status.netns:
        raise HarnessError(f"sandbox {namespace}/{name} on {runtime.node.name} is not ready "
                           f"with an address: {status}")
    return RuntimePod(sandbox_id, name, namespace, request.uid, status.ip, status.netns,
                      runtime.node)


def remove_pod(runtime: NodeRuntime, pod: RuntimePod) -> None:
    """StopPodSandbox then RemovePodSandbox, as the kubelet ends a pod."""
    with runtime.client() as cri:
        cri.stop_pod_sandbox(pod.sandbox_id)
        cri.remove_pod_sandbox(pod.sandbox_id)


@contextmanager
def node_runtimes(cluster: Cluster) -> Iterator[list[NodeRuntime]]:
    """One containerd per node of ``cluster``, started; all stopped and cleaned at exit."""
    runtimes = [NodeRuntime(cluster, node) for node in cluster.nodes]
    try:
        for runtime in runtimes:
            runtime.start()
        yield runtimes
    finally:
        for runtime in runtimes:
            try:
                runtime.stop()
            except Exception:  # noqa: BLE001 - every runtime gets its turn
                logger.exception("stopping containerd on %s", runtime.node.name)
