"""The warm-pool loop: reads counts from the store, asks the stepper (``ipam_daemon.stepper``:
the gates, back-off and schedule around the pure policy) what to do, does it against the
cloud and reports the outcome. It is the only thread that changes cloud state, so
reconcile, grow, shrink and leaked-ENI GC never race each other.

Crash safety (the agent may be killed at any instant):
- grow: the cloud assigns, then the store records; a kill in between leaves addresses the
  cloud holds and the store does not know, which the startup reconcile adds as free.
- shrink: the store marks addresses ``releasing`` (no borrow can take them), the cloud
  unassigns, the store forgets them; reconcile resolves a kill at either point.
- new ENI: created and attached in ``cloud.provision``; a kill leaves an attached ENI
  (adopted by reconcile) or an unattached one (deleted by leaked-ENI GC).

Prefix delegation (``prefix_delegation``): the policy counts addresses with a slot of 16
(``Limits.unit``); the loop assigns, creates and gives back /28 prefixes, whole ones only.
Idle secondary addresses of a node switched to prefixes are strays (not available, given
back); so are whole free prefixes of a node switched back. A subnet with no free aligned
/28 (SubnetFragmented), or an instance type that is not Nitro, blocks growth with its own
reason, or, with ``prefix_fallback``, turns the loop to secondary addresses: it tries a
prefix again once per ``subnet_full_backoff`` when it grows, and returns to prefixes when
one is given.

After a failure the loop backs off (subnet exhausted: ``subnet_full_backoff``; throttled or
unavailable: exponential up to 30 s; the stepper's table) and remembers why: a borrow that
starves reports it. Here cloud errors become a ``Failure`` kind and a ``Blocked`` message.
"""
from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from cloud import errors as ce
from cloud.api import Cloud
from cloud.types import EniId
from cni.spec import Code

from ipam_daemon.backoff import retry_until_stopped
from ipam_daemon.config import AgentConfig
from ipam_daemon.errors import kind_of
from ipam_daemon.metrics import Metrics
from ipam_daemon.policy import (
    PREFIX_SIZE, Action, Blocker, EniCounts, Kind, Limits, eni_counts,
)
from ipam_daemon.cloud_node import CloudNode
from ipam_daemon.reconcile import (
    SubnetCache, collect_leaked_enis, eni_link, eni_record, reconcile_enis,
)
from ipam_daemon.stepper import Chore, Failure, Gate, Intervals, PoolStepper
from ipam_daemon.store import Store
from cni.datapath.base import Datapath

logger = logging.getLogger(__name__)


# The stepper's wait by the kind of cloud failure (first match); the blocked code and its
# words come from the error table by the code the error carries (ipam_daemon.errors).
FAILURE_KINDS: tuple[tuple[type[ce.CloudError], Failure], ...] = (
    (ce.SubnetFragmented, Failure.SUBNET_FULL),
    (ce.SubnetExhausted, Failure.SUBNET_FULL),
    (ce.EniLimitReached, Failure.ENI_LIMIT),
    (ce.IpLimitReached, Failure.IP_LIMIT),
    (ce.PermissionDenied, Failure.PERMISSION_DENIED),
    (ce.RetryableCloudError, Failure.RETRYABLE),
)


@dataclass(frozen=True)
class Blocked:
    """Why the pool cannot grow: a CNI code and a message with the numbers."""

    code: Code
    message: str


def reconcile_at_startup(reconcile: Callable[[], None], stop: threading.Event,
                         config: AgentConfig, mode: str) -> bool:
    """Run the startup reconcile until it succeeds (True) or ``stop`` is set (False), backing
    off between failed tries; shared by the ENI pool and the vpc-route pool."""
    if stop.is_set():
        return False
    initial = min(config.pool_interval, 1.0)
    try:
        retry_until_stopped(reconcile, retry_on=ce.CloudError, stop=stop, initial=initial,
                            maximum=max(config.max_backoff, initial),
                            what=f"startup reconcile ({mode} mode)")
    except ce.CloudError:
        return False  # stopped while it still failed
    return True


class Pool:
    def __init__(self, config: AgentConfig, cloud: Cloud, store: Store, node: CloudNode, *,
                 datapath: Datapath, metrics: Metrics | None = None, clock=time.time,
                 monotonic=time.monotonic, stop: threading.Event | None = None) -> None:
        self.config = config
        self.cloud = cloud
        self.store = store
        self.node = node
        self.datapath = datapath
        self.metrics = metrics
        self.subnets = SubnetCache(cloud)
        self.targets = config.pool
        self._fallback_retry = math.inf  # in fallback: when to try a prefix again
        self.notice: Blocked | None = None  # a condition worth an event that blocks nothing
        self.limits = Limits(node.limits.max_enis, node.limits.ips_per_eni,
                             PREFIX_SIZE if config.prefix_delegation else 1)
        self.stepper = PoolStepper(self.targets, self.limits, Intervals.from_config(config))
        self.reconciled = threading.Event()
        self._clock = clock
        self._monotonic = monotonic
        self._stop = stop if stop is not None else threading.Event()
        self._wake = threading.Event()
        self._changed = threading.Condition()
        self._blocked: Blocked | None = None
        self._cordoned = False
        self._idle_until = 0.0  # after a step that did nothing: look again by then
        self._thread: threading.Thread | None = None
        self._waiting = 0  # borrows waiting for an address (see waiting_borrow)
        self._waiting_lock = threading.Lock()
        self._check_prefix_support()

    # ---- what borrowers see -------------------------------------------------------------

    @property
    def blocked(self) -> Blocked | None:
        return self._blocked

    def set_cordoned(self, cordoned: bool) -> None:
        """While the node is cordoned the pool does not grow (shrinking goes on)."""
        if cordoned != self._cordoned:
            logger.info("node %s: pool growth %s", "cordoned" if cordoned else "uncordoned",
                        "paused" if cordoned else "resumed")
        self._cordoned = cordoned
        self._wake.set()

    def apply_config(self, config: AgentConfig) -> None:
        """New pool targets (a per-node override that arrived after boot)."""
        self.config = config
        self.targets = config.pool
        self.stepper.configure(self.targets, Intervals.from_config(config))
        self._wake.set()

    def wake(self) -> None:
        """A borrow took the pool below target, or found it empty: act now."""
        self._wake.set()

    @contextlib.contextmanager
    def waiting_borrow(self) -> Iterator[None]:
        """A borrow found no free address and waits: the policy counts it as demand."""
        with self._waiting_lock:
            self._waiting += 1
        self._wake.set()
        try:
            yield
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def wait_for_change(self, timeout: float) -> None:
        with self._changed:
            self._changed.wait(timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _set_blocked(self, blocked: Blocked | None) -> None:
        if blocked != self._blocked:
            if blocked is not None:
                logger.warning("pool cannot grow: %s", blocked.message)
            elif self._blocked is not None:
                logger.info("pool can grow again (was: %s)", self._blocked.message)
        self._blocked = blocked
        self._notify()

    # ---- lifecycle ----------------------------------------------------------------------

    def reconcile_until_done(self) -> None:
        if reconcile_at_startup(self.reconcile, self._stop, self.config, "ENI"):
            self.reconciled.set()

    def reconcile(self) -> None:
        report = reconcile_enis(self.cloud, self.store, self.node, self.subnets, self.datapath,
                                self.config.mtu, clock=self._clock,
                                cooldown=self.config.cooldown_seconds)
        self.stepper.reconciled(self._monotonic())
        if self.metrics:
            self.metrics.reconciled()
        logger.info("reconciled: %d ENIs, %d addresses, adopted %s, lost %s", report.enis,
                    report.addresses, list(report.adopted), list(report.lost))
        self._notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pool", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the step: a wake-up during it is not lost
            try:
                wait = 0.0 if self.step() else self._idle_until - self._monotonic()
            except Exception:
                logger.exception("pool step failed")
                wait = self.config.pool_interval
            if wait > 0:
                self._wake.wait(wait)

    # ---- one step -----------------------------------------------------------------------

    def counts(self) -> tuple[EniCounts, ...]:
        now = self._clock()
        return tuple(eni_counts(u.eni.id, u, self.limits,
                                prefix_delegation=self.config.prefix_delegation,
                                is_primary=u.eni.is_primary,
                                age=max(now - u.eni.created_at, 0.0))
                     for u in self.store.usage() if not u.eni.deleting)

    def step(self) -> bool:
        """Do at most one thing; True when something was done (look again at once)."""
        self._do_chores(self._monotonic())
        if self._unsupported:  # blocked for good: keep the store in step, change nothing
            self._idle_until = self._monotonic() + self.config.pool_interval
            return False
        step = self.stepper.step(self._monotonic(), self.counts(), waiting=self._waiting,
                                 cordoned=self._cordoned)  # the clock after the chores' I/O
        if step.gate is Gate.AT_TARGET:
            self._note_policy_blocker(step.action)
        if not step.go:
            self._idle_until = step.until
            return False
        action = step.action
        try:
            self._act(action)
        except ce.CloudError as exc:
            self._record_failure(action, exc)
            self._idle_until = self._monotonic() + self.config.pool_interval
            return False
        finally:
            self._notify()
        self.stepper.succeeded()
        if action.kind in (Kind.ASSIGN, Kind.CREATE_ENI):
            self._set_blocked(None)
        if self.metrics:
            self.metrics.pool_actions.labels(action.kind.value, "ok").inc()
        return True

    def _do_chores(self, now: float) -> None:
        try:
            for chore in self.stepper.chores_due(now):
                if chore is Chore.RECONCILE:
                    self.reconcile()
                else:
                    self.stepper.start_leak_gc(now)
                    collect_leaked_enis(self.cloud, self.node.cluster,
                                        self.config.leaked_eni_age)
        except ce.CloudError as exc:
            logger.warning("reconcile/GC failed: %s", exc)
            self.stepper.chore_failed(now)

    def _note_policy_blocker(self, action: Action) -> None:
        if action.blocker is Blocker.ENI_LIMIT:
            self._set_blocked(Blocked(Code.ENI_LIMIT_REACHED, action.reason))
        elif action.blocker is Blocker.MAX_IPS:
            self._set_blocked(Blocked(Code.NO_CAPACITY, action.reason))
        else:
            self._set_blocked(None)

    @property
    def _unsupported(self) -> bool:
        """Prefix mode on a type that cannot hold prefixes, with no fallback."""
        return (self.config.prefix_delegation and not self.node.limits.nitro
                and not self.config.prefix_fallback)

    @property
    def in_prefixes(self) -> bool:
        """Whether the loop hands out prefixes now (not falling back)."""
        return self.limits.unit == PREFIX_SIZE

    def _act(self, action: Action) -> None:
        logger.info("pool: %s %s %s%s (%s)", action.kind.value, action.count or "",
                    action.eni_id, " [prefixes]" if self.in_prefixes else "", action.reason)
        if action.kind is Kind.ASSIGN:
            if self.in_prefixes:
                self._assign_prefixes(action.eni_id, action.count)
            else:
                self._assign(action.eni_id, action.count)
        elif action.kind is Kind.CREATE_ENI:
            self._create_eni(action.count)
        elif action.kind is Kind.UNASSIGN:
            self._give_back(action.eni_id, action.count, prefixes=self.in_prefixes)
        elif action.kind is Kind.RETIRE:  # the other mode's idle holdings
            self._give_back(action.eni_id, action.count, prefixes=not self.in_prefixes)
        elif action.kind is Kind.DELETE_ENI:
            self._delete_eni(action.eni_id)

    def _give_back(self, eni_id: str, count: int, *, prefixes: bool) -> None:
        """Reserve (no borrow takes them), unassign in one call, forget: ``count`` secondary
        addresses, or ``count`` whole prefixes."""
        if prefixes:
            held = self.store.reserve_prefixes(eni_id, count)
            unassign, forget = self.cloud.unassign_prefixes, self.store.remove_prefixes
        else:
            held = self.store.reserve_free(eni_id, count)
            unassign, forget = self.cloud.unassign_ips, self.store.remove_addresses
        if not held:
            return
        try:
            unassign(EniId(eni_id), held)
        except ce.NotFound:
            pass  # already gone: forget them
        except BaseException:
            self._settle_by_reconcile()
            raise
        forget(held)

    # ---- prefix delegation ----------------------------------------------------------------

    def _check_prefix_support(self) -> None:
        """At start in prefix mode: an instance type that is not Nitro cannot hold
        prefixes; the loop blocks with that reason, or falls back to secondary addresses."""
        if not self.config.prefix_delegation or self.node.limits.nitro:
            return
        limits = self.node.limits
        detail = (f"{limits.instance_type} is not built on the Nitro system"
                  f" ({limits.hypervisor or 'unknown'} hypervisor); EC2 delegates /28"
                  " prefixes to Nitro instance types only")
        if self.config.prefix_fallback:
            self._fall_back(Code.PREFIXES_UNSUPPORTED, detail, retry=False)
        else:
            self._set_blocked(Blocked(Code.PREFIXES_UNSUPPORTED, kind_of(
                Code.PREFIXES_UNSUPPORTED).message(
                f"{detail}. Turn prefix_delegation off for this node (a per-node override)"
                " or prefix_fallback on")))

    def _set_unit(self, unit: int) -> None:
        self.limits = replace(self.limits, unit=unit)
        self.stepper.limits = self.limits

    def _fall_back(self, code: Code, detail: str, *, retry: bool = True) -> None:
        """Hand out secondary addresses instead of prefixes; try a prefix again once per
        ``subnet_full_backoff`` when growing (never, on a type that cannot hold one)."""
        self._set_unit(1)
        self._fallback_retry = (self._monotonic() + self.config.subnet_full_backoff
                                if retry else math.inf)
        self.notice = Blocked(code, kind_of(code).message(
            f"{detail}; falling back to secondary addresses (prefix_fallback)"))
        logger.warning("pool: %s", self.notice.message)
        self._notify()

    @contextlib.contextmanager
    def _fragmented_falls_back(self) -> Iterator[None]:
        """A subnet with no free aligned /28 turns the loop to secondary addresses when
        ``prefix_fallback`` is on (the next step grows so); otherwise the error blocks."""
        try:
            yield
        except ce.SubnetFragmented as exc:
            if not self.config.prefix_fallback:
                raise
            self._fall_back(Code.SUBNET_FRAGMENTED, self._subnet_message(exc))

    def _assign_prefixes(self, eni_id: str, count: int) -> None:
        """One AssignPrivateIpAddresses for ``count`` prefixes."""
        with self._fragmented_falls_back():
            self.store.add_prefixes(eni_id, self.cloud.assign_prefixes(EniId(eni_id), count))

    def _retry_prefix(self, eni_id: str) -> bool:
        """Falling back and growing: once per ``subnet_full_backoff``, one prefix first;
        when the subnet gives it, back to prefixes."""
        if not self.config.prefix_delegation or self._monotonic() < self._fallback_retry:
            return False
        try:
            self.store.add_prefixes(eni_id, self.cloud.assign_prefixes(EniId(eni_id), 1))
        except ce.SubnetFragmented:
            self._fallback_retry = self._monotonic() + self.config.subnet_full_backoff
            return False
        self._set_unit(PREFIX_SIZE)
        self._fallback_retry = math.inf
        self.notice = None
        logger.info("pool: the subnet gave a /28 prefix again: back to prefixes")
        return True

    def _assign(self, eni_id: str, count: int) -> None:
        """One AssignPrivateIpAddresses; when the subnet cannot give ``count``, ask once
        more for what it still has (a batch must not turn a nearly full subnet into none)."""
        if self._retry_prefix(eni_id):
            return
        try:
            ips = self.cloud.assign_ips(EniId(eni_id), count)
        except ce.SubnetExhausted:
            subnet_id = next((e.subnet_id for e in self.store.enis() if e.id == eni_id), None)
            subnets = self.subnets.describe([subnet_id]) if subnet_id else []
            left = subnets[0].free_addresses if subnets else 0
            if not 0 < left < count:
                raise
            ips = self.cloud.assign_ips(EniId(eni_id), left)
        self.store.add_addresses(eni_id, ips)

    def _create_eni(self, count: int) -> None:
        from cloud.provision import provision_eni

        prefixes = self.in_prefixes
        subnet_id, count = self._pick_subnet(count * PREFIX_SIZE if prefixes else count)
        if prefixes:
            count = count // PREFIX_SIZE  # what the subnet's free addresses could hold
        if not count and not self._subnet_spares_an_eni(subnet_id):
            self.stepper.pause_eni_ahead(self._monotonic())
            logger.info("pool: no ENI ahead: subnet %s cannot spare an address for an empty"
                        " ENI beyond the room on the attached ones", subnet_id)
            return
        eni = None
        with self._fragmented_falls_back():
            eni = provision_eni(self.cloud, self.node.instance, self.node.limits, subnet_id,
                                self.node.security_groups, 0 if prefixes else count,
                                self.node.cluster, self.node.name,
                                prefix_count=count if prefixes else 0)
        if eni is None:
            return
        known = {e.id: e for e in self.store.enis()}
        record = eni_record(eni, self.node, self.subnets, known, self._clock())
        self.datapath.ensure_eni(eni_link(record, self.config.mtu))
        self.store.add_eni(record, eni.secondary_ips, eni.prefixes)
        logger.info("pool: ENI %s attached at device %d with %d addresses and %d prefixes",
                    eni.id, record.device_index, len(eni.secondary_ips), len(eni.prefixes))

    def _subnet_spares_an_eni(self, subnet_id: str) -> bool:
        """An empty ENI ahead takes one subnet address (its primary): only when the subnet
        still has more than the attached ENIs' room, so no pod loses that address."""
        room = sum(c.room for c in self.counts())
        free = next((s.free_addresses for s in self.subnets.describe([subnet_id])), 0)
        return free > room + 1

    def _pick_subnet(self, count: int) -> tuple[str, int]:
        """The configured subnet with the most free addresses, and how many secondary
        addresses a new ENI there can get (its own primary takes one); none: exhausted."""
        subnets = self.subnets.describe(self.node.subnet_ids)
        best = max(subnets, key=lambda s: s.free_addresses, default=None)
        if best is None or best.free_addresses < 2:
            numbers = ", ".join(f"{s.id} ({s.cidr}) has {s.free_addresses} free" for s in subnets)
            raise ce.SubnetExhausted(f"a new ENI needs at least 2 free addresses; {numbers}",
                                     code="InsufficientFreeAddressesInSubnet",
                                     action="CreateNetworkInterface")
        return best.id, min(count, best.free_addresses - 1)

    def _delete_eni(self, eni_id: str) -> None:
        from cloud.provision import release_eni

        ips = self.store.reserve_eni(eni_id)
        if ips is None:
            return
        try:
            eni = self.cloud.describe_eni(EniId(eni_id))
            release_eni(self.cloud, eni)
        except ce.NotFound:
            pass
        except BaseException:
            self._settle_by_reconcile()
            raise
        self.store.remove_eni(eni_id)
        logger.info("pool: deleted idle ENI %s", eni_id)

    def _settle_by_reconcile(self) -> None:
        """A give-back failed, and a failure does not say whether the cloud did it: a timed
        out or retried call may have been carried out. Making the addresses free again on a
        guess could hand a pod an address the cloud already took back; they stay releasing
        (never borrowable) until the next step's reconcile reads what the cloud holds and
        frees exactly those still there."""
        self.stepper.reconcile_soon(self._monotonic())

    def _record_failure(self, action: Action, exc: ce.CloudError) -> None:
        if self.metrics:
            self.metrics.pool_actions.labels(action.kind.value, type(exc).__name__).inc()
        failure = next((kind for cls, kind in FAILURE_KINDS if isinstance(exc, cls)),
                       Failure.OTHER)
        if failure not in (Failure.IP_LIMIT, Failure.OTHER):  # the others pass unseen
            kind = kind_of(exc.cni_code)
            self._set_blocked(Blocked(Code(exc.cni_code),
                                      kind.message(self._blocked_detail(action, exc))))
        wait = self.stepper.failed(self._monotonic(), failure)
        logger.warning("pool %s failed (%s: %s); next try in %.1fs", action.kind.value,
                       type(exc).__name__, exc, wait)

    def _blocked_detail(self, action: Action, exc: ce.CloudError) -> str:
        """The numbers behind a failure that blocks growth, for the table's words."""
        if isinstance(exc, (ce.SubnetExhausted, ce.SubnetFragmented)):
            return self._subnet_message(exc)
        if isinstance(exc, ce.EniLimitReached):
            return (f"the cloud refused another ENI ({len(self.counts())} of"
                    f" {self.limits.max_enis} attached): {exc}")
        if isinstance(exc, ce.RetryableCloudError):
            state = "throttled" if isinstance(exc, ce.Throttled) else "unavailable"
            return f"cloud API {state} on {exc.action or action.kind.value}: {exc}"
        return f"{exc.action}: {exc}" if exc.action else str(exc)

    def _subnet_message(self, exc: ce.CloudError) -> str:
        try:
            subnets = self.subnets.describe(self.node.subnet_ids)
            numbers = "; ".join(f"{s.id} ({s.cidr}) has {s.free_addresses} free addresses"
                                for s in subnets)
        except ce.CloudError:
            numbers = "free addresses unknown (describe failed)"
        return f"{numbers} ({exc})"
