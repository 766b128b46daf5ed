"""The warm-pool decision as pure functions of counts, targets and limits: no clock, no
cloud, no kernel. The pool loop (``ipam_daemon.pool``) acts on what they return.

``decide`` is underlay's policy; ``decide_aws`` is AWS VPC CNI's arithmetic, kept for
comparison (the bench replays traces through both):

    short = max(warm - available, minimum - total, 0)
    over  = max(min(available - warm, total - minimum), 0)
    WARM_ENI_TARGET mode (no warm IP target): keep ``warm_enis`` whole ENIs unused.

Differences in ``decide``: cooling addresses are never available (AWS counts them);
``warm_enis`` asks for that many ENIs' worth of *addresses*, not whole idle ENIs; growth
fills existing ENIs before creating one, and a shortfall that cannot be met says why (the
reason a starving borrow reports).

Hysteresis: ``batch_size`` is the width of a band above the warm target. A shortfall is met
with one call for at least ``batch_size`` addresses (the room on the ENI permitting), and
idle addresses are freed only above ``warm + batch_size``. Pod churn smaller than the band
costs no cloud call at all, and the idle addresses a node holds stay below
``warm + batch_size`` (AWS's default holds a whole ENI's worth).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

logger = logging.getLogger(__name__)


class Kind(str, Enum):
    NOTHING = "nothing"
    ASSIGN = "assign"  # assign ``count`` IPs to ENI ``eni_id``
    CREATE_ENI = "create_eni"  # create and attach an ENI pre-filled with ``count`` IPs
    UNASSIGN = "unassign"  # give ``count`` idle IPs of ENI ``eni_id`` back
    DELETE_ENI = "delete_eni"  # detach and delete the empty ENI ``eni_id``


class Blocker(str, Enum):
    """Why a shortfall cannot be met by the policy itself."""

    NONE = "none"
    ENI_LIMIT = "eni_limit"  # every allowed ENI is attached and full
    MAX_IPS = "max_ips"  # the configured ceiling is reached


@dataclass(frozen=True)
class EniCounts:
    eni_id: str
    capacity: int  # secondary addresses the ENI can hold
    free: int = 0
    assigned: int = 0
    cooling: int = 0
    releasing: int = 0
    is_primary: bool = False
    age_seconds: float = 0.0

    @property
    def total(self) -> int:
        return self.free + self.assigned + self.cooling + self.releasing

    @property
    def room(self) -> int:
        return max(self.capacity - self.total, 0)


@dataclass(frozen=True)
class Targets:
    warm_ips: int = 2
    min_ips: int = 0
    max_ips: int = 0  # 0: no ceiling beyond the instance
    warm_enis: int = 0
    max_enis: int = 0  # 0: the instance limit
    batch_size: int = 4
    eni_min_age: float = 60.0


@dataclass(frozen=True)
class Limits:
    max_enis: int
    ips_per_eni: int  # including the ENI's primary address

    @property
    def secondary_per_eni(self) -> int:
        return self.ips_per_eni - 1


@dataclass(frozen=True)
class Action:
    kind: Kind
    count: int = 0
    eni_id: str = ""
    reason: str = ""
    blocker: Blocker = Blocker.NONE


@dataclass(frozen=True)
class Totals:
    total: int
    available: int
    assigned: int
    cooling: int


def sum_counts(enis: tuple[EniCounts, ...]) -> Totals:
    return Totals(total=sum(e.total for e in enis), available=sum(e.free for e in enis),
                  assigned=sum(e.assigned for e in enis), cooling=sum(e.cooling for e in enis))


def eni_ceiling(targets: Targets, limits: Limits) -> int:
    if targets.max_enis:
        return min(targets.max_enis, limits.max_enis)
    return limits.max_enis


def shortfall(t: Totals, targets: Targets, limits: Limits) -> int:
    want_available = max(targets.warm_ips, targets.warm_enis * limits.secondary_per_eni)
    return max(want_available - t.available, targets.min_ips - t.total, 0)


def surplus(t: Totals, targets: Targets, limits: Limits) -> int:
    want_available = max(targets.warm_ips, targets.warm_enis * limits.secondary_per_eni)
    over = max(min(t.available - want_available, t.total - targets.min_ips), 0)
    over = max(over - targets.batch_size, 0)  # inside the band: keep
    if targets.max_ips and t.total - over > targets.max_ips:
        over = t.total - targets.max_ips
    return min(over, t.available)


def decide(enis: tuple[EniCounts, ...], targets: Targets, limits: Limits) -> Action:
    """One step towards the targets. ``enis`` in device order, the primary first."""
    t = sum_counts(enis)
    short = shortfall(t, targets, limits)
    if short:
        return _grow(enis, t, short, targets, limits)
    over = surplus(t, targets, limits)
    return _shrink(enis, t, over, targets, limits)


def _grow(enis, t: Totals, short: int, targets: Targets, limits: Limits) -> Action:
    if targets.max_ips:
        room_total = targets.max_ips - t.total
        if room_total <= 0:
            return Action(Kind.NOTHING, reason=f"short {short} but max_ips={targets.max_ips}"
                          f" reached ({t.total} held)", blocker=Blocker.MAX_IPS)
        short = min(short, room_total)
    step = max(short, targets.batch_size)
    if targets.max_ips:
        step = min(step, targets.max_ips - t.total)
    for eni in enis:
        if eni.room:
            count = min(step, eni.room)
            return Action(Kind.ASSIGN, count, eni.eni_id,
                          f"short {short}: {t.available} available, {t.total} held")
    ceiling = eni_ceiling(targets, limits)
    if len(enis) < ceiling:
        count = min(step, limits.secondary_per_eni)
        return Action(Kind.CREATE_ENI, count, reason=f"short {short}; ENIs full"
                      f" ({len(enis)} of {ceiling} attached)")
    return Action(Kind.NOTHING, reason=f"short {short} but ENI limit reached: {len(enis)} of"
                  f" {ceiling} ENIs, all full ({t.assigned} assigned, {t.cooling} cooling)",
                  blocker=Blocker.ENI_LIMIT)


def _shrink(enis, t: Totals, over: int, targets: Targets, limits: Limits) -> Action:
    want_available = max(targets.warm_ips, targets.warm_enis * limits.secondary_per_eni)
    # An ENI with nothing assigned or cooling is deleted whole when what it holds is not
    # needed; higher device indexes first, never the primary, never a young one.
    for eni in reversed(enis):
        if eni.is_primary or eni.assigned or eni.cooling or eni.releasing:
            continue
        if eni.age_seconds < targets.eni_min_age:
            continue
        if t.available - eni.free >= want_available and t.total - eni.total >= targets.min_ips:
            return Action(Kind.DELETE_ENI, eni_id=eni.eni_id,
                          reason=f"ENI idle ({eni.free} free, nothing assigned)")
    if over <= 0:
        return Action(Kind.NOTHING, reason=f"at target: {t.available} available,"
                      f" {t.total} held")
    # Free idle addresses from the ENI closest to empty, so it can be deleted next.
    candidates = [(index, e) for index, e in enumerate(enis) if e.free]
    _, eni = min(candidates, key=lambda p: (p[1].is_primary, p[1].assigned + p[1].cooling,
                                            -p[0]))
    count = min(over, eni.free)
    return Action(Kind.UNASSIGN, count, eni.eni_id,
                  f"over by {over}: {t.available} available, {t.total} held")


# ---- AWS VPC CNI, for comparison ---------------------------------------------------------

def decide_aws(enis: tuple[EniCounts, ...], targets: Targets, limits: Limits) -> Action:
    """AWS VPC CNI's arithmetic: cooling counts as available; with no warm IP or minimum
    target, WARM_ENI_TARGET keeps ``warm_enis`` whole ENIs free of pods."""
    total = sum(e.total for e in enis)
    available = sum(e.free + e.cooling for e in enis)  # the cooldown bug, faithfully
    ceiling = eni_ceiling(targets, limits)
    if targets.warm_ips or targets.min_ips:
        short = max(targets.warm_ips - available, targets.min_ips - total, 0)
        over = max(min(available - targets.warm_ips, total - targets.min_ips), 0)
        if short:
            for eni in enis:
                if eni.room:
                    return Action(Kind.ASSIGN, min(short, eni.room), eni.eni_id, "aws: short")
            if len(enis) < ceiling:
                return Action(Kind.CREATE_ENI, limits.secondary_per_eni, reason="aws: short")
            return Action(Kind.NOTHING, reason="aws: ENI limit", blocker=Blocker.ENI_LIMIT)
        if over:
            eni = next((e for e in reversed(enis) if e.free), None)
            if eni is not None:
                return Action(Kind.UNASSIGN, min(over, eni.free), eni.eni_id, "aws: over")
        return Action(Kind.NOTHING, reason="aws: at target")
    idle_enis = [e for e in enis if not e.assigned]
    if len(idle_enis) < targets.warm_enis:
        for eni in enis:
            if eni.room:
                return Action(Kind.ASSIGN, eni.room, eni.eni_id, "aws: fill ENI")
        if len(enis) < ceiling:
            return Action(Kind.CREATE_ENI, limits.secondary_per_eni, reason="aws: warm ENI")
        return Action(Kind.NOTHING, reason="aws: ENI limit", blocker=Blocker.ENI_LIMIT)
    for eni in enis:
        if eni.room:
            return Action(Kind.ASSIGN, eni.room, eni.eni_id, "aws: fill ENI")
    if len(idle_enis) > targets.warm_enis:
        for eni in reversed(idle_enis):
            if not eni.is_primary and eni.age_seconds >= targets.eni_min_age:
                return Action(Kind.DELETE_ENI, eni_id=eni.eni_id, reason="aws: surplus ENI")
    return Action(Kind.NOTHING, reason="aws: at target")
