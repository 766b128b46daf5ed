"""veth mode: one veth pair per pod, policy routing on the node (docs/architecture.md).

Runs in the node's namespace (the calling thread's); the pod's namespace is given by path.

pod side                                   node side
  <ifname>  <podIP>/32                       <host veth>  up, no address
  169.254.1.1 dev <ifname> scope link        <podIP>/32 dev <host veth> scope link
  default via 169.254.1.1                    rule to <podIP> lookup main        prio 512
  neigh 169.254.1.1 -> host veth MAC         rule from <podIP> lookup <ENI>     prio 1536
  (permanent: no ARP, no proxy_arp)          table <ENI>: default via <gw> dev <ENI link>

The peer is created directly inside the pod namespace under its final name (the kernel
allows naming a veth peer in its target namespace), the host end up and both MAC
addresses chosen here, which is the same end state as create-move-rename with three
steps fewer and no temporary name to collide on.

The requests go through ``cni.datapath.rtnl`` in batches (pyroute2 encodes each message in
about 0.5 ms): an ADD is five round trips to the kernel on the node (create + look up,
host route, stale-rule sweep, rules) and one in the pod (up, address, two routes,
neighbour); a DEL is three. setup_pod is all-or-nothing: each step registers its undo on an ExitStack
as soon as it succeeded; the stack is kept (pop_all) only when every step did.

Deleting a veth makes the kernel wait for the device's last references (about 25 ms
here), so teardown can hand the host end to a ``LinkReaper`` instead: the link is taken
down and renamed out of the way (its routes go with it at once), and the reaper deletes
it in its own thread. Without a reaper, teardown deletes it before returning.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading

from cni.datapath import (LINK_LOCAL_GW, RULE_PRIO_FROM_POD, RULE_PRIO_TO_POD,
                          DatapathError, NetnsMissing, PodSpec, SnatConfig, WiredPod)
from cni.datapath.base import KernelDatapath, validate_pod
from cni.datapath.netns import entered_netns, open_netns
from cni.datapath.rtnl import (RTM_DELROUTE, RTM_DELRULE, RTM_NEWROUTE, RTM_NEWRULE,
                               RT_SCOPE_LINK, Request, RtnlSocket, addr_add_msg, link_del_msg,
                               link_get_msg, link_info, link_set_msg, neigh_msg, route_msg,
                               rule_msg, veth_msg)
from cni.datapath.rules import Rule, find_host_route_oif, get_link, pod_rules
from cni.datapath.vethcheck import check_veth_pod

logger = logging.getLogger(__name__)

POD_PRIORITIES = (RULE_PRIO_TO_POD, RULE_PRIO_FROM_POD)
REAPED_PREFIX = "ulrm"  # host veths handed to the reaper, renamed ulrm<index in hex>
REAP_GROUP = 0x756C7264  # the link group they wait in ("ulrd"); 0 is every link's default
_SWEEP_LIMIT = 8  # stale rules of one address removed at most per sweep


def random_mac() -> str:
    """A locally administered unicast MAC, as the kernel gives a veth by default."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


NS_GET_NSTYPE = 0xB703  # ioctl on a namespace file: its CLONE_NEW* type (Linux 4.11)
CLONE_NEWNET = 0x40000000


def _open_netns_fd(path: str) -> int:
    """An fd of the network namespace at ``path``. A path that exists but is no namespace is
    what an agent sees of a runtime's netns mount that did not propagate to it (the empty
    mount point): named as such, not as the kernel's bare EINVAL."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsMissing(f"network namespace {path} does not exist") from None
    except OSError as exc:
        raise DatapathError(f"cannot open network namespace {path}: {exc.strerror}") from None
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = None
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise DatapathError(f"{path} is not a network namespace as the agent sees it (an "
                            "empty mount point: mount the runtime's netns directory into the "
                            "agent with HostToContainer propagation)")
    return fd


class LinkReaper:
    """Deletes host veths in a thread of its own, so that a DEL does not wait while the
    kernel unregisters them. Teardown takes a link down, renames it out of the pod's way
    (``ulrm<index>``) and puts it in link group ``REAP_GROUP``; the reaper deletes the
    whole group at once (one wait for the kernel however many DELs came meanwhile). Links
    a killed agent left in the group go at the next start (``sweep``)."""

    def __init__(self) -> None:
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._handed = self._deleted = 0
        self._stopping = False
        # a thread inherits the namespace of the thread that starts it: the node's
        self._thread = threading.Thread(target=self._run, name="link-reaper", daemon=True)
        self._thread.start()

    def submit(self) -> None:
        """One more link is in the group."""
        with self._idle:
            self._handed += 1
        self._wake.set()

    def sweep(self) -> None:
        self.submit()

    def wait_idle(self, timeout: float) -> bool:
        """True once every link handed over so far is deleted."""
        with self._idle:
            return self._idle.wait_for(lambda: self._deleted >= self._handed, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        with RtnlSocket() as nl:
            while True:
                self._wake.wait()
                self._wake.clear()
                with self._idle:
                    handed = self._handed
                if handed > self._deleted:
                    try:
                        nl.run([Request(link_del_msg(0, group=REAP_GROUP),
                                        "deleting the host veths of deleted pods",
                                        ok=(errno.ENODEV,))])
                    except (DatapathError, OSError) as exc:
                        logger.warning("reaper: %s", exc)
                    with self._idle:
                        self._deleted = handed
                        self._idle.notify_all()
                if self._stopping:
                    return


def _create_veth(host: RtnlSocket, pod: PodSpec, host_mac: str, pod_mac: str,
                 reaper: LinkReaper | None) -> tuple[int, int]:
    """Create the pair and return (host index, pod-side index)."""
    def attempt() -> tuple[int, int, int]:
        nsfd = _open_netns_fd(pod.netns)
        try:
            [(code, _), (_, found)] = host.run([
                Request(veth_msg(pod.host_ifname, host_mac, pod.ifname, pod_mac, nsfd,
                                 pod.mtu), f"creating veth {pod.host_ifname} <-> "
                        f"{pod.ifname} in {pod.netns}", ok=(errno.EEXIST,)),
                Request(link_get_msg(pod.host_ifname), f"looking up {pod.host_ifname}",
                        ok=(errno.ENODEV,))])
        finally:
            os.close(nsfd)
        index, peer = link_info(found[0]) if found else (None, None)
        return code, index, peer

    code, index, peer = attempt()
    if code == errno.EEXIST:
        if index is not None:  # our name: an earlier sandbox of the same pod left it
            logger.info("removing stale host veth %s before wiring %s", pod.host_ifname,
                        pod.container_id)
            host.run([Request(link_del_msg(index), f"removing stale host veth "
                              f"{pod.host_ifname}", ok=(errno.ENODEV,))])
        elif reaper is not None:  # the pod's end of a pair the reaper has not deleted yet
            reaper.wait_idle(5.0)
        code, index, peer = attempt()
        if code:
            raise DatapathError(f"creating veth {pod.host_ifname} <-> {pod.ifname} in "
                                f"{pod.netns} failed: {os.strerror(code)} (errno {code})")
    if index is None or peer is None:
        raise DatapathError(f"host veth {pod.host_ifname} vanished right after creation")
    return index, peer


def _wire_pod_side(pod: PodSpec, index: int, host_mac: str) -> None:
    metric = pod.route_metric(index)  # a second attachment's routes go beside the first's
    with entered_netns(pod.netns):
        nl = RtnlSocket()  # bound in the pod's namespace
    with nl:
        nl.run([
            Request(link_set_msg(index, up=True), f"bringing up pod {pod.ifname}"),
            Request(addr_add_msg(index, pod.pod_ip, 32),
                    f"adding {pod.pod_ip}/32 to pod {pod.ifname}"),
            Request(route_msg(RTM_NEWROUTE, LINK_LOCAL_GW, 32, oif=index, scope=RT_SCOPE_LINK,
                              metric=metric),
                    f"adding route {LINK_LOCAL_GW} dev {pod.ifname} scope link in pod"),
            Request(route_msg(RTM_NEWROUTE, "0.0.0.0", 0, oif=index, gateway=LINK_LOCAL_GW,
                              metric=metric),
                    f"adding default via {LINK_LOCAL_GW} dev {pod.ifname} in pod"),
            Request(neigh_msg(index, LINK_LOCAL_GW, host_mac),
                    f"adding neighbour {LINK_LOCAL_GW} -> {host_mac} in pod"),
        ])


def sweep_rules(nl: RtnlSocket, pod_ip: str, known: tuple[Rule, ...] = ()) -> None:
    """Remove the ``known`` rules and every other rule of ours naming ``pod_ip``, whatever
    its table: a delete that names no table matches any (the kernel compares only what a
    request sets), so the sweep repeats until both such deletes find nothing."""
    exact = [Request(rule_msg(RTM_DELRULE, r.priority, table=r.table, src=r.src, dst=r.dst),
                     f"deleting {r.describe()}", ok=(errno.ENOENT,)) for r in known]
    for _ in range(_SWEEP_LIMIT):
        answers = nl.run(exact + [
            Request(rule_msg(RTM_DELRULE, RULE_PRIO_TO_POD, dst=pod_ip),
                    f"deleting rule to {pod_ip}", ok=(errno.ENOENT,)),
            Request(rule_msg(RTM_DELRULE, RULE_PRIO_FROM_POD, src=pod_ip),
                    f"deleting rule from {pod_ip}", ok=(errno.ENOENT,))])
        if all(code for code, _ in answers[len(exact):]):
            return
        exact = []
    logger.warning("more than %d stale rules name %s; some are left", _SWEEP_LIMIT, pod_ip)


def setup_pod(pod: PodSpec, reaper: LinkReaper | None = None) -> WiredPod:
    """Wire one pod in veth mode; on any failure nothing of it is left behind."""
    validate_pod(pod)
    host_mac, pod_mac = random_mac(), random_mac()
    with RtnlSocket() as host, contextlib.ExitStack() as undo:
        index, pod_index = _create_veth(host, pod, host_mac, pod_mac, reaper)
        # deleting the host end deletes the pod end (and every route on either) with it
        undo.callback(_undo, host, Request(link_del_msg(index), f"rollback: deleting veth "
                                           f"{pod.host_ifname}", ok=(errno.ENODEV,)))
        _wire_pod_side(pod, pod_index, host_mac)
        # EEXIST here means another live interface already carries this IP: two pods
        # holding one address. Fail (and roll back) rather than steal its traffic.
        host.run([Request(route_msg(RTM_NEWROUTE, pod.pod_ip, 32, oif=index,
                                    scope=RT_SCOPE_LINK),
                          f"adding host route {pod.pod_ip}/32 dev {pod.host_ifname} "
                          "(is the IP already wired to another pod?)")])
        rules = pod_rules(pod)
        if rules:
            # The route went in, so no live pod holds this IP: rules still naming it are
            # leftovers of a pod whose teardown never ran.
            sweep_rules(host, pod.pod_ip)
            undo.callback(_undo_rules, host, pod.pod_ip, rules)
            host.run([Request(rule_msg(RTM_NEWRULE, r.priority, table=r.table, src=r.src,
                                       dst=r.dst), f"adding {r.describe()}") for r in rules])
        undo.pop_all()
    logger.info("wired pod %s/%s (%s) %s on %s, table %d", pod.pod_namespace, pod.pod_name,
                pod.container_id, pod.pod_ip, pod.host_ifname, pod.eni.table)
    return WiredPod(host_ifname=pod.host_ifname, pod_mac=pod_mac, pod_ifindex=pod_index,
                    host_mac=host_mac)


def _undo(nl: RtnlSocket, request: Request) -> None:
    try:
        nl.run([request])
    except DatapathError as exc:
        logger.warning("%s", exc)


def _undo_rules(nl: RtnlSocket, pod_ip: str, rules: tuple[Rule, ...]) -> None:
    try:
        sweep_rules(nl, pod_ip, rules)
    except DatapathError as exc:
        logger.warning("rollback: %s", exc)


def _peer_in_pod_netns(pod: PodSpec, host_index: int) -> bool:
    """True when the host veth's peer is pod.ifname inside pod.netns (mutual indexes)."""
    from pyroute2 import IPRoute

    try:
        with IPRoute() as ipr:
            host_link = get_link(ipr, host_index)
        if host_link is None:
            return False
        with open_netns(pod.netns) as ns:
            found = ns.link_lookup(ifname=pod.ifname)
            if not found:
                return False
            peer = ns.get_links(found[0])[0]
            return (peer.get_attr("IFLA_LINK") == host_index
                    and host_link.get_attr("IFLA_LINK") == found[0])
    except DatapathError:
        return False


def _routed_elsewhere(pod: PodSpec, own_index: int | None) -> int | None:
    """The index of a live link other than ``own_index`` that the pod IP is routed to."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        oif = find_host_route_oif(ipr, pod.pod_ip)
        if oif is None or oif == own_index or get_link(ipr, oif) is None:
            return None  # a route on a link already gone goes with its dying netns
        return oif


def teardown_pod(pod: PodSpec, reaper: LinkReaper | None = None) -> None:
    """Undo setup_pod. Idempotent: a missing netns, veth, route or rule is fine.

    The host veth is removed only when it is provably this pod's (it carries the pod's
    host route, or its peer is the pod's interface): a stale DEL for an earlier sandbox
    of the same pod must not cut the new one. Rules are matched by the pod IP, and left
    alone when the IP is routed to some other live link (the IP has a new owner).
    """
    validate_pod(pod)
    with RtnlSocket() as host:
        index = host.link_index(pod.host_ifname)
        routed_here = False
        if index is not None:
            [(code, _)] = host.run([Request(
                route_msg(RTM_DELROUTE, pod.pod_ip, 32, oif=index, scope=RT_SCOPE_LINK),
                f"deleting host route {pod.pod_ip}/32", ok=(errno.ESRCH, errno.ENOENT))])
            routed_here = code == 0
            if routed_here or _peer_in_pod_netns(pod, index):
                _remove_host_veth(host, pod, index, reaper)
            else:
                logger.warning("host veth %s is not wired to %s in %s; left in place",
                               pod.host_ifname, pod.pod_ip, pod.netns)
        if not routed_here:
            other = _routed_elsewhere(pod, index)
            if other is not None:
                logger.warning("%s is routed to another link (index %d); its rules are left",
                               pod.pod_ip, other)
                return
        if pod.policy_routing:
            sweep_rules(host, pod.pod_ip, pod_rules(pod))
    logger.info("tore down pod %s/%s (%s) %s", pod.pod_namespace, pod.pod_name,
                pod.container_id, pod.pod_ip)


def _remove_host_veth(host: RtnlSocket, pod: PodSpec, index: int,
                      reaper: LinkReaper | None) -> None:
    what = f"deleting host veth {pod.host_ifname}"
    if reaper is None:
        host.run([Request(link_del_msg(index), what, ok=(errno.ENODEV,))])
        return
    reaped = f"{REAPED_PREFIX}{index:x}"
    answers = host.run([
        Request(link_set_msg(index, up=False), f"taking {pod.host_ifname} down",
                ok=(errno.ENODEV,)),
        Request(link_set_msg(index, name=reaped, group=REAP_GROUP),
                f"handing {pod.host_ifname} to the reaper as {reaped}",
                ok=(errno.ENODEV, errno.EEXIST))])
    if any(code for code, _ in answers):  # gone meanwhile, or the name is taken
        host.run([Request(link_del_msg(index), what, ok=(errno.ENODEV,))])
        return
    reaper.submit()


def check_pod(pod: PodSpec) -> list[str]:
    validate_pod(pod)
    return check_veth_pod(pod)


class VethDatapath(KernelDatapath):
    """veth mode: the module's functions, with a reaper for the host ends DEL hands over."""

    name = "veth"

    def __init__(self, record_path: str | None = None) -> None:
        super().__init__(record_path)
        self._reaper: LinkReaper | None = None

    def prepare_host(self, snat: SnatConfig | None) -> None:
        super().prepare_host(snat)
        if self._reaper is None:
            self._reaper = LinkReaper()  # started here: in the node's namespace
            self._reaper.sweep()  # what a killed agent had not deleted yet

    def setup(self, pod: PodSpec) -> WiredPod:
        return setup_pod(pod, self._reaper)

    def teardown(self, pod: PodSpec) -> None:
        teardown_pod(pod, self._reaper)

    def check(self, pod: PodSpec) -> list[str]:
        return check_pod(pod)

    def shutdown(self) -> None:
        """Host ends already handed to the reaper are deleted first (bounded)."""
        if self._reaper is not None:
            self._reaper.wait_idle(10.0)
            self._reaper.stop()
            self._reaper = None
