"""The emulated VPC fabric: real kernel namespaces and links that follow the emulated
cloud's state, so packets between nodes really cross a "VPC router".

    <prefix>-vpc          the VPC router: one veth per attached ENI, the subnet gateway
                          address on each, a /32 route and a permanent neighbour entry per
                          private IP, a /28 route per delegated prefix, route-table
                          entries, source/destination check
    <prefix>-<instance>   one namespace per instance; each attached ENI is a veth end
                          named eth<device index> carrying the ENI's MAC. The primary ENI
                          comes configured (primary IP, default via the gateway), as DHCP
                          would leave it; secondary ENIs are left down for the agent.
    <prefix>-out          an "outside" host (198.51.100.2/24) behind the router, for SNAT

Nothing is created in the root namespace. The fabric follows the cloud by reconciling
(idempotent diff against what the kernel holds) whenever the control plane reports a
change, and at least every ``poll_interval`` seconds. ``stop()`` removes every namespace,
also after errors; a crashed run is cleaned by ``python -m lab.cleanup``.
"""
from __future__ import annotations

import json
import logging
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lab import cleanup
from lab.fabric_plan import (
    CloudView,
    ENI_MTU,
    EniLink,
    FabricPlan,
    Neighbour,
    RouterRoute,
    plan_fabric,
    read_view,
)

logger = logging.getLogger(__name__)

OUTSIDE_CIDR = "198.51.100.0/24"  # TEST-NET-2: never a real destination
OUTSIDE_ROUTER_IP = "198.51.100.1"
OUTSIDE_HOST_IP = "198.51.100.2"
_COMMAND_TIMEOUT = 10.0
_ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.proxy_arp=1",  # the VPC answers ARP for every address it routes
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
)


class FabricError(RuntimeError):
    """A kernel command of the fabric failed; the message names the command."""


def run_ip(args: Sequence[str], *, netns: str | None = None, stdin: str | None = None) -> str:
    cmd = ["ip"] + (["-n", netns] if netns else []) + list(args)
    return run_command(cmd, stdin=stdin)


def run_command(cmd: Sequence[str], *, stdin: str | None = None) -> str:
    try:
        result = subprocess.run(list(cmd), input=stdin, capture_output=True, text=True,
                                timeout=_COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise FabricError(f"{' '.join(cmd)} timed out") from None
    if result.returncode != 0:
        raise FabricError(f"{' '.join(cmd)} failed: {result.stderr.strip()}")
    return result.stdout


class Fabric:
    """``Fabric(emulated_cloud, prefix)``; use as a context manager or start()/stop().

    With ``vpc_id`` the fabric is that one VPC; otherwise every VPC of the account.
    ``emulated_cloud`` needs ``.snapshot()`` or ``.control.snapshot()``; its
    ``.subscribe(callback)`` (called after each mutating call) is used when present, so a
    change is followed at once; the fabric also polls every ``poll_interval`` seconds."""

    def __init__(self, emulated_cloud: Any, prefix: str | None = None, *,
                 poll_interval: float = 0.1, record: cleanup.RunRecord | None = None,
                 snapshot: Callable[[], Mapping[str, Any]] | None = None,
                 vpc_id: str | None = None) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        self.prefix = cleanup.validate_prefix(prefix or (record.prefix if record else
                                                         cleanup.new_prefix()))
        if record is not None and record.prefix != self.prefix:
            raise ValueError(f"record prefix {record.prefix} differs from {self.prefix}")
        self._cloud = emulated_cloud
        # in-process when the emulator offers it, else its control API over HTTP
        self._snapshot = snapshot or getattr(emulated_cloud, "snapshot", None) \
            or emulated_cloud.control.snapshot
        self._poll_interval = poll_interval
        self.vpc_id = vpc_id  # None: every VPC of the account
        self._record = record
        self._owns_record = record is None
        self.router = f"{self.prefix}-vpc"
        self.outside = f"{self.prefix}-out"
        self._nodes: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied: CloudView | None = None
        self._applied_filter: str | None = None
        self.generation = 0  # bumps after each successful reconcile that changed something

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Fabric:
        if self._record is None:
            self._record = cleanup.RunRecord(self.prefix)
        try:
            self._create_router()
            self.sync_now()
            subscribe = getattr(self._cloud, "subscribe", None)
            if callable(subscribe):
                subscribe(self._wake.set)
            self._thread = threading.Thread(target=self._follow, name=f"fabric-{self.prefix}",
                                            daemon=True)
            self._thread.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Remove every namespace of the fabric (and any process left inside one)."""
        self._stopping.set()
        self._wake.set()
        unsubscribe = getattr(self._cloud, "unsubscribe", None)
        if callable(unsubscribe):
            unsubscribe(self._wake.set)
        if self._thread is not None:
            self._thread.join(timeout=_COMMAND_TIMEOUT)
            self._thread = None
        with self._lock:
            names = [self.node_netns(node) for node in sorted(self._nodes)]
            for name in names + [self.outside, self.router]:
                try:
                    self._delete_namespace(name)
                except Exception:  # keep going: the rest must still go
                    logger.exception("could not delete namespace %s", name)
            self._nodes.clear()
            if self._record is not None and self._owns_record:
                cleanup.clean_run(self.prefix)  # anything a failed step left
                self._record.remove()

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries -------------------------------------------------------------------------
    def node_netns(self, instance_id: str) -> str:
        return f"{self.prefix}-{instance_id}"

    def netns_path(self, name: str) -> str:
        return str(cleanup.NETNS_DIR / name)

    def cloud_endpoint(self, instance_id: str) -> str:
        """The EC2 endpoint as the node sees it (127.0.0.1:<port> inside its namespace)."""
        return self._cloud.listen_in_netns(self.netns_path(self.node_netns(instance_id)))

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted(self._nodes))

    # -- following the cloud -------------------------------------------------------------
    def _follow(self) -> None:
        last_error = ""
        while not self._stopping.is_set():
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.sync_now()
                last_error = ""
            except Exception as exc:  # retried on the next tick; the loop must not die
                if str(exc) != last_error:  # once per distinct failure, not every tick
                    logger.exception("fabric %s: reconcile failed, retrying", self.prefix)
                last_error = str(exc)

    def sync_now(self) -> bool:
        """Reconcile once with the cloud's current state; True if anything changed."""
        snapshot = self._snapshot()
        view = read_view(snapshot, self.vpc_id)
        with self._lock:
            if self._stopping.is_set():
                return False
            if self._applied == view:
                return False
            plan = plan_fabric(view)
            self._reconcile_nodes(plan)
            self._reconcile_links(plan)
            self._reconcile_router_tables(plan)
            if plan.filter_rules != self._applied_filter:
                run_command(["ip", "netns", "exec", self.router, "iptables-restore"],
                            stdin=plan.filter_rules)
                self._applied_filter = plan.filter_rules
            self._applied = view
            self.generation += 1
            return True

    # -- namespaces ----------------------------------------------------------------------
    def _create_namespace(self, name: str) -> None:
        assert self._record is not None
        self._record.add_netns(name)  # recorded before it exists: a crash cannot leak it
        run_ip(["netns", "add", name])
        run_ip(["link", "set", "lo", "up"], netns=name)

    def _delete_namespace(self, name: str) -> None:
        if not (cleanup.NETNS_DIR / name).exists():
            return
        leftovers = [cleanup.ProcessId(pid, start) for pid in cleanup.list_netns_pids(name)
                     if (start := cleanup.read_start_time(pid)) is not None]
        cleanup.stop_processes(leftovers)
        run_ip(["netns", "delete", name])

    def _create_router(self) -> None:
        self._create_namespace(self.router)
        run_command(["ip", "netns", "exec", self.router, "sysctl", "-q", "-w", *_ROUTER_SYSCTLS])
        self._create_namespace(self.outside)
        run_ip(["link", "add", "outside", "type", "veth", "peer", "name", "eth0",
                "netns", self.outside], netns=self.router)
        run_ip(["-batch", "-"], netns=self.router, stdin=(
            f"addr add {OUTSIDE_ROUTER_IP}/24 dev outside\nlink set outside up\n"))
        run_ip(["-batch", "-"], netns=self.outside, stdin=(
            f"addr add {OUTSIDE_HOST_IP}/24 dev eth0\nlink set eth0 up\n"
            f"route add default via {OUTSIDE_ROUTER_IP} dev eth0\n"))
        run_command(["ip", "netns", "exec", self.router, "iptables-restore"],
                    stdin=plan_fabric(read_view({"enis": ()})).filter_rules)

    def _reconcile_nodes(self, plan: FabricPlan) -> None:
        for node in plan.nodes:
            if node not in self._nodes:
                self._create_namespace(self.node_netns(node))
                self._nodes.add(node)
                logger.info("fabric %s: node %s is namespace %s", self.prefix, node,
                            self.node_netns(node))
        for node in sorted(self._nodes - set(plan.nodes)):
            logger.info("fabric %s: instance %s is gone, removing its namespace",
                        self.prefix, node)
            self._delete_namespace(self.node_netns(node))
            self._nodes.discard(node)

    # -- ENI links -----------------------------------------------------------------------
    def _read_router_links(self) -> dict[str, str]:
        links = json.loads(run_ip(["-j", "link", "show", "type", "veth"], netns=self.router))
        return {link["ifname"]: link.get("ifalias", "") for link in links
                if link["ifname"] != "outside"}

    def _reconcile_links(self, plan: FabricPlan) -> None:
        present = self._read_router_links()
        wanted = {link.router_ifname: link for link in plan.links}
        for ifname, alias in present.items():
            if ifname not in wanted or wanted[ifname].alias != alias:
                logger.info("fabric %s: removing ENI link %s (%s)", self.prefix, ifname, alias)
                run_ip(["link", "delete", ifname], netns=self.router)
        for ifname, link in wanted.items():
            if present.get(ifname) != link.alias:
                self._plug_eni(link)

    def _plug_eni(self, link: EniLink) -> None:
        node_ns = self.node_netns(link.node)
        eni = link.eni
        logger.info("fabric %s: plugging %s (%s) into %s as %s", self.prefix, eni.id, eni.mac,
                    link.node, link.ifname)
        run_ip(["link", "add", link.router_ifname, "mtu", str(ENI_MTU), "type", "veth",
                "peer", "name", link.ifname, "address", eni.mac, "mtu", str(ENI_MTU),
                "netns", node_ns], netns=self.router)
        try:
            run_ip(["-batch", "-"], netns=self.router, stdin="\n".join([
                f"link set {link.router_ifname} alias \"{link.alias}\"",
                f"ntable change name arp_cache dev {link.router_ifname} proxy_delay 0",
                f"addr add {link.gateway}/32 dev {link.router_ifname}",
                f"link set {link.router_ifname} up", ""]))
            if eni.device_index == 0:
                # what DHCP leaves on an instance's primary interface
                run_ip(["-batch", "-"], netns=node_ns, stdin="\n".join([
                    f"addr add {eni.primary_ip}/{link.prefix_len} dev {link.ifname}",
                    f"link set {link.ifname} up",
                    f"route replace default via {link.gateway} dev {link.ifname}", ""]))
        except FabricError:
            run_ip(["link", "delete", link.router_ifname], netns=self.router)
            raise

    # -- routes and neighbours -----------------------------------------------------------
    def _read_router_tables(self) -> tuple[set[RouterRoute], set[Neighbour]]:
        routes = set()
        for r in json.loads(run_ip(["-j", "route", "show", "proto", "static"], netns=self.router)):
            dst = r["dst"] if "/" in r["dst"] else f"{r['dst']}/32"
            routes.add(RouterRoute(dst, r["dev"], r.get("gateway")))
        neighbours = set()
        for n in json.loads(run_ip(["-j", "neigh", "show", "nud", "permanent"],
                                   netns=self.router)):
            neighbours.add(Neighbour(n["dst"], n["dev"], n.get("lladdr", "").lower()))
        return routes, neighbours

    def _reconcile_router_tables(self, plan: FabricPlan) -> None:
        routes, neighbours = self._read_router_tables()
        commands = [f"route del {r.dst} dev {r.dev}" for r in sorted(routes - plan.routes,
                                                                     key=repr)]
        commands += [f"neigh del {n.ip} dev {n.dev}" for n in sorted(neighbours - plan.neighbours,
                                                                     key=repr)]
        commands += [f"neigh replace {n.ip} lladdr {n.mac} dev {n.dev} nud permanent"
                     for n in sorted(plan.neighbours - neighbours, key=repr)]
        for r in sorted(plan.routes - routes, key=repr):
            via = f" via {r.via} onlink" if r.via else ""
            commands.append(f"route replace {r.dst}{via} dev {r.dev} proto static")
        if commands:
            run_ip(["-batch", "-"], netns=self.router, stdin="\n".join(commands) + "\n")
