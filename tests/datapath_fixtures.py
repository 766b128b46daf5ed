"""A small static VPC per test, built from real namespaces, for the datapath tests.

                 node netns                         router netns ("the VPC")
  pod netns --veth-- [datapath under test]
                     eni0 (MAC of ENI 0) ---------- r0   10.0.1.1/32 (gateway, subnet A)
                       10.0.1.10/24 primary IP,          10.0.1.10/32, pod IPs of ENI 0
                       default via 10.0.1.1              -> r0, permanent neighbour
                     eni1 (MAC of ENI 1) ---------- r1   10.0.2.1/32 (gateway, subnet B)
                       (nothing: ensure_eni's job)       pod IPs of ENI 1 -> r1
                                                    lo   10.0.9.1/32 (a VPC host)
                                                    ro   198.51.100.1/24 --- outside netns
                                                                            198.51.100.10

The router enforces the VPC's source/destination check: a packet entering from rK whose
source is outside ENI K's subnet is blackholed (forwarded traffic only; local addresses
such as the gateways still answer, as the VPC router does). The node's primary ENI is
configured as EC2's DHCP would (address + default route in main): that is the OS's job,
not the datapath's. Nothing here touches the root namespace: every `ip` command runs with
`-n <netns>` and links are created inside their namespaces.
"""
from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cni.datapath import EniLink, PodSpec
from cni.datapath.netns import entered_netns

NETNS_DIR = "/var/run/netns"
VPC_CIDR = "10.0.0.0/16"
PRIMARY_IP = "10.0.1.10"
VPC_HOST = "10.0.9.1"
OUTSIDE_IP = "198.51.100.10"
SUBNETS = (("10.0.1.0/24", "10.0.1.1"), ("10.0.2.0/24", "10.0.2.1"))
IP_PKTINFO = 8


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=20, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stderr.strip()}")
    return done


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def call_in_netns(path: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run fn in a fresh thread switched into the namespace; return or raise its result."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with entered_netns(path):
                box["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"in-{path.rsplit('/', 1)[-1]}")
    thread.start()
    thread.join(60)
    if thread.is_alive():
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {path} did not finish")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@dataclass
class Vpc:
    suffix: str
    node: str
    router: str
    outside: str
    enis: list[EniLink]
    pods: list[str] = field(default_factory=list)

    @property
    def node_path(self) -> str:
        return netns_path(self.node)

    def in_node(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return call_in_netns(self.node_path, fn, *args, **kwargs)

    def add_pod_netns(self) -> str:
        name = f"ulp{len(self.pods)}-{self.suffix}"
        sh("ip", "netns", "add", name)
        self.pods.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def pod_spec(self, pod_ns: str, ip: str, eni: int, name: str | None = None) -> PodSpec:
        return PodSpec(container_id=f"c-{pod_ns}", ifname="eth0", netns=netns_path(pod_ns),
                       pod_ip=ip, eni=self.enis[eni], mtu=1500, pod_namespace="default",
                       pod_name=name or f"pod-{pod_ns}")

    def route_pod_ip(self, ip: str, eni: int) -> None:
        """What the VPC does when an IP is assigned to ENI ``eni``: deliver it there."""
        sh("ip", "-n", self.router, "route", "replace", f"{ip}/32", "dev", f"r{eni}")
        sh("ip", "-n", self.router, "neigh", "replace", ip, "lladdr", self.enis[eni].mac,
           "dev", f"r{eni}", "nud", "permanent")


def _build(v: Vpc) -> None:
    n, r, o = v.node, v.router, v.outside
    for ns in (n, r, o):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    for k, eni in enumerate(v.enis):
        sh("ip", "-n", n, "link", "add", f"eni{k}", "address", eni.mac, "type", "veth",
           "peer", "name", f"r{k}", "netns", r)
        sh("ip", "-n", r, "addr", "add", f"{eni.gateway}/32", "dev", f"r{k}")
        sh("ip", "-n", r, "link", "set", f"r{k}", "up")
        # source/destination check: from rK only ENI K's subnet gets forwarded
        sh("ip", "-n", r, "rule", "add", "iif", f"r{k}", "from", eni.subnet_cidr,
           "lookup", "main", "priority", "100")
        sh("ip", "-n", r, "rule", "add", "iif", f"r{k}", "blackhole", "priority", "101")
    # the primary ENI as EC2 hands it over (DHCP): primary IP and the default route
    sh("ip", "-n", n, "addr", "add", f"{PRIMARY_IP}/24", "dev", "eni0")
    sh("ip", "-n", n, "link", "set", "eni0", "up")
    sh("ip", "-n", n, "route", "add", "default", "via", SUBNETS[0][1], "dev", "eni0")
    v.route_pod_ip(PRIMARY_IP, 0)
    sh("ip", "-n", r, "addr", "add", f"{VPC_HOST}/32", "dev", "lo")
    sh("ip", "-n", r, "link", "add", "ro", "type", "veth", "peer", "name", "eth0", "netns", o)
    sh("ip", "-n", r, "addr", "add", "198.51.100.1/24", "dev", "ro")
    sh("ip", "-n", r, "link", "set", "ro", "up")
    sh("ip", "-n", o, "addr", "add", f"{OUTSIDE_IP}/24", "dev", "eth0")
    sh("ip", "-n", o, "link", "set", "eth0", "up")
    sh("ip", "-n", o, "route", "add", "default", "via", "198.51.100.1")


@contextlib.contextmanager
def static_vpc(n_enis: int = 2) -> Iterator[Vpc]:
    suffix = secrets.token_hex(3)
    enis = [EniLink(mac=f"02:ee:{secrets.token_hex(1)}:{secrets.token_hex(1)}:00:{k:02x}",
                    device_index=k, subnet_cidr=SUBNETS[k][0], gateway=SUBNETS[k][1],
                    mtu=1500) for k in range(n_enis)]
    vpc = Vpc(suffix=suffix, node=f"uln-{suffix}", router=f"ulr-{suffix}",
              outside=f"ulo-{suffix}", enis=enis)
    try:
        _build(vpc)
        yield vpc
    finally:
        leftovers = []
        for ns in [*vpc.pods, vpc.node, vpc.router, vpc.outside]:
            done = sh("ip", "netns", "del", ns, check=False)
            if done.returncode != 0 and "No such file" not in done.stderr:
                leftovers.append(f"{ns}: {done.stderr.strip()}")
        assert not leftovers, f"could not remove namespaces: {leftovers}"


def ping(ns: str, ip: str, interface: str | None = None) -> bool:
    """One ping from namespace ``ns`` (out of ``interface``, when given)."""
    via = ["-I", interface] if interface else []
    done = sh("ip", "netns", "exec", ns, "busybox", "ping", "-c", "1", "-W", "2", *via, ip,
              check=False)
    return done.returncode == 0


@dataclass(frozen=True)
class Probe:
    seen_source: str  # the source address the receiver saw
    arrived_on: str  # the receiver's interface the packet came in on
    reply_received: bool  # the receiver's answer made it back to the sender


def udp_probe(src_ns: str, dst_ns: str, dst_ip: str, port: int = 40123,
              send_to: str | None = None, source: str | None = None,
              interface: str | None = None) -> Probe | None:
    """Send one UDP datagram from src_ns to dst_ip (served in dst_ns) and answer it.

    ``send_to`` addresses the datagram elsewhere (a Service IP DNATed to dst_ip);
    ``source`` and ``interface`` bind the sender to that address and device.
    Returns what the receiver saw, or None when nothing arrived.
    """
    ready, result = threading.Event(), {}

    def serve() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            s.bind((dst_ip, port))
            s.settimeout(3)
            ready.set()
            try:
                data, anc, _, peer = s.recvmsg(64, socket.CMSG_SPACE(12))
            except socket.timeout:
                return
            for level, kind, raw in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                    result["ifname"] = socket.if_indextoname(struct.unpack("I", raw[:4])[0])
            result["source"] = peer[0]
            s.sendto(b"pong:" + data, peer)

    def send() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if interface:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
            if source:
                s.bind((source, 0))
            s.settimeout(3)
            s.sendto(b"ping", (send_to or dst_ip, port))
            try:
                return s.recv(64) == b"pong:ping"
            except socket.timeout:
                return False

    server = threading.Thread(target=call_in_netns, args=(netns_path(dst_ns), serve))
    server.start()
    try:
        if not ready.wait(10):
            raise TimeoutError(f"UDP server in {dst_ns} did not start")
        replied = call_in_netns(netns_path(src_ns), send)
    finally:
        server.join(10)
    if "source" not in result:
        return None
    return Probe(result["source"], result.get("ifname", "?"), replied)


def kernel_state(ns: str) -> dict[str, str]:
    """Links, IPv4 addresses, routes (all tables) and rules, and iptables of a namespace."""
    def run(*args: str) -> str:
        return sh("ip", "-n", ns, *args, check=False).stdout

    tables = sh("ip", "netns", "exec", ns, "iptables-save", check=False).stdout
    # IPv4 only: the datapath is IPv4, and IPv6 link-local addresses and routes appear
    # by themselves some time after a link comes up
    return {"links": run("-o", "link", "show"), "addresses": run("-4", "-o", "addr", "show"),
            "routes": run("-4", "route", "show", "table", "all"),
            "rules": run("-4", "rule", "show"),
            "iptables": "\n".join(line for line in tables.splitlines()
                                  if not line.startswith("#"))}

