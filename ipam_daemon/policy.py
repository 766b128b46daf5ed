"""The warm-pool decision as pure functions of counts, targets and limits: no clock, no
cloud, no kernel. The pool loop (``ipam_daemon.pool``) acts on what they return.

``decide`` is underlay's policy; AWS VPC CNI's arithmetic, which the bench replays the same
traces through for comparison, is ``bench.aws_policy``. Differences from it: cooling
addresses are never available (AWS counts them); ``warm_enis`` asks for that many ENIs'
worth of *addresses*, not whole idle ENIs; growth fills existing ENIs before creating one,
and a shortfall that cannot be met says why (the reason a starving borrow reports).

Hysteresis (tuned on ``bench.pool_efficiency``'s churn trace, seeds 1-3; see its docstring):
- addresses: a shortfall is met with one call for at least ``batch_size`` addresses (the
  room on the ENI permitting); idle addresses are freed only once ``2 * batch_size`` lie
  above the warm target, and then all but ``batch_size`` of them in ONE Unassign call (from
  the ENI that can give the most). Freeing one address per pod that leaves was 38% of the
  cloud calls; a band of one batch cost a call per few pods.
- ENIs: growth reaches for a new ENI *ahead* of need: when the addresses available plus
  the room left on attached ENIs fall below ``warm + eni_headroom``, an empty ENI is created
  (no secondary address: it holds no idle IP, only its own primary), so a burst meets a 0.3 s
  Assign instead of a 3 s create. An ENI is deleted only when the others could have held
  the peak demand of the last ``eni_min_age`` seconds plus the warm addresses and the
  headroom (``Demand.peak``, measured by the loop): deleting the second ENI as soon as
  the first covered the warm target made it come and go around 8 pods (46% of the calls).
- prefixes (``Limits.unit`` 16): during a burst growth asks for as many addresses again as
  the rise (``Demand.rise``), rounded up to prefixes, in one call.
- bursts: while the assigned count has risen by ``surge_rise`` within ``RISE_WINDOW``
  (``Demand.rise``), ``surge_ips`` more addresses are kept warm, so two borrows during one
  refill call do not find the pool empty.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from enum import Enum

from cloud.types import PREFIX_LEN
from ipam_daemon.schema import knob

logger = logging.getLogger(__name__)

PREFIX_SIZE = 2 ** (32 - PREFIX_LEN)  # addresses of a delegated /28 (one ENI address slot)


class Kind(str, Enum):
    """What a step does; ``count`` is in slots of the mode's unit (``Limits.unit``): secondary
    addresses, or /28 prefixes with prefix delegation."""

    NOTHING = "nothing"
    ASSIGN = "assign"  # assign ``count`` slots to ENI ``eni_id``
    CREATE_ENI = "create_eni"  # create and attach an ENI pre-filled with ``count`` slots
    UNASSIGN = "unassign"  # give ``count`` idle slots of ENI ``eni_id`` back (whole prefixes)
    DELETE_ENI = "delete_eni"  # detach and delete the empty ENI ``eni_id``
    RETIRE = "retire"  # give back ENI ``eni_id``'s idle holdings of the other mode (strays)


class Blocker(str, Enum):
    """Why a shortfall cannot be met by the policy itself."""

    NONE = "none"
    ENI_LIMIT = "eni_limit"  # every allowed ENI is attached and full
    MAX_IPS = "max_ips"  # the configured ceiling is reached


@dataclass(frozen=True)
class EniCounts:
    """One ENI, in addresses. With prefix delegation ``capacity`` is what it holds plus 16
    per free slot; ``giveable`` says how many whole slots could go back now (prefixes with
    all 16 free); ``strays`` are idle holdings of the other mode (secondary addresses after
    a switch to prefixes, whole prefixes after a switch back): not counted as available,
    given back (RETIRE), while pods on them keep their addresses until they leave."""

    eni_id: str
    capacity: int  # addresses the ENI can hold (what it holds + its free slots' worth)
    free: int = 0
    assigned: int = 0
    cooling: int = 0
    releasing: int = 0
    is_primary: bool = False
    age_seconds: float = 0.0
    giveable: int | None = None  # whole slots that could be unassigned now (None: ``free``)
    strays: int = 0  # idle slots of the other mode, to retire
    stray_free: int = 0  # free addresses of the other mode (not available): those strays
    # hold, and in secondary mode also the free ones of prefixes still partly used

    @property
    def total(self) -> int:
        return self.free + self.assigned + self.cooling + self.releasing + self.stray_free

    @property
    def room(self) -> int:
        return max(self.capacity - self.total, 0)

    @property
    def whole_free(self) -> int:
        return self.free if self.giveable is None else self.giveable


@dataclass(frozen=True)
class Targets:
    """The pool's knobs: the agent's configuration nests them as ``pool`` (the keys are
    also accepted at the top level of the file and as ``UNDERLAY_<KEY>``); these are the
    agent's defaults, and every one applies to a running agent."""

    warm_ips: int = knob(2, """Free addresses kept ready for the next pods. AWS's default
        (WARM_ENI_TARGET=1) keeps a whole ENI's worth; two cover a burst of two pods without
        a cloud call, the pool refills in the background in one batched call.""", live=True)
    min_ips: int = knob(0, "Addresses held at least, assigned or not.", live=True)
    max_ips: int = knob(0, "Addresses held at most (0: as many as the instance holds).",
                        live=True)
    warm_enis: int = knob(0, """ENIs' worth of free addresses kept ready (AWS's
        WARM_ENI_TARGET, counted in addresses, not in idle ENIs).""", live=True)
    max_enis: int = knob(0, "ENIs attached at most (0: the instance type's limit).",
                         live=True)
    batch_size: int = knob(4, """A shortfall is met with one call for at least this many
        addresses; idle ones are freed only once 2 x batch_size lie above warm_ips, all but
        one batch in one call: the churn of a few pods costs no cloud call.""", live=True)
    eni_min_age: float = knob(7200.0, """An ENI is deleted only when the others could have
        held the peak demand of this many seconds (AWS: 60 s, and its second ENI comes and
        goes with the load).""", live=True)
    eni_headroom: int = knob(4, """When the free addresses plus the room on attached ENIs
        fall below warm_ips + this, the next ENI is attached ahead, empty, so a burst meets
        a 0.3 s Assign instead of a 3 s create.""", live=True)
    surge_rise: int = knob(5, """A rise of this many assigned addresses within 30 s is a
        burst (0: never) ...""", live=True)
    surge_ips: int = knob(1, "... during which this many more addresses are kept warm.",
                          live=True)


@dataclass(frozen=True)
class Limits:
    max_enis: int
    ips_per_eni: int  # address slots, including the one of the ENI's primary address
    unit: int = 1  # addresses per slot: 1, or 16 with prefix delegation (a /28 per slot)

    @property
    def secondary_per_eni(self) -> int:
        """Slots for pods on one ENI."""
        return self.ips_per_eni - 1

    @property
    def per_eni(self) -> int:
        """Pod addresses one ENI can hold."""
        return self.secondary_per_eni * self.unit


@dataclass(frozen=True)
class Holdings:
    """What one ENI holds at one instant, as the store counts it (cooled addresses count as
    free): the store's ``EniUsage`` is one, and so is each ENI of the pool simulator in
    ``bench/``."""

    free: int  # borrowable now
    assigned: int
    cooling: int  # still cooling
    releasing: int
    singles: int = 0  # secondary addresses held (each takes an address slot of the ENI)
    free_singles: int = 0  # ... of them free
    prefixes: int = 0  # delegated /28 prefixes held (each takes one slot too)
    free_prefixes: int = 0  # ... of them with all 16 addresses free: whole, giveable

    @property
    def total(self) -> int:
        return self.free + self.assigned + self.cooling + self.releasing

    @property
    def slots(self) -> int:
        """The ENI's address slots in use, besides its own primary address."""
        return self.singles + self.prefixes


def eni_counts(eni_id: str, held: Holdings, limits: Limits, *, prefix_delegation: bool,
               is_primary: bool, age: float) -> EniCounts:
    """One ENI as the policy sees it in the mode the loop runs in (``limits.unit``: 16 hands
    out prefixes, 1 secondary addresses); ``prefix_delegation``: the node is asked for
    prefixes (with ``unit`` 1 it is falling back). The other mode's idle holdings are
    strays: free secondary addresses in prefix mode, whole free prefixes in secondary mode
    (not while falling back: those prefixes are the node's own mode). In secondary mode no
    free address of a prefix counts as available, so new pods get secondary addresses and
    a partly used prefix drains instead of taking every new pod."""
    unit = limits.unit
    free_slots = max(limits.secondary_per_eni - held.slots, 0)
    if unit == PREFIX_SIZE:  # prefixes: free secondary addresses are strays
        strays, stray_free, giveable = held.free_singles, held.free_singles, held.free_prefixes
    elif prefix_delegation:  # falling back to secondary addresses: prefixes stay
        strays, stray_free, giveable = 0, 0, held.free_singles
    else:  # secondary addresses: whole free prefixes are strays, and no free address of a
        # prefix is available (a partly used one's too): the pool holds secondary addresses
        # for new pods, which the store hands out first, so the prefixes drain and go back
        strays, stray_free = held.free_prefixes, held.free - held.free_singles
        giveable = held.free_singles
    return EniCounts(eni_id, held.total + free_slots * unit, held.free - stray_free,
                     held.assigned, held.cooling, held.releasing, is_primary, age,
                     giveable=giveable, strays=strays, stray_free=stray_free)


@dataclass(frozen=True)
class Demand:
    """Recent history, measured by the loop and passed in as data (no clock in here)."""

    peak: int = 0  # most addresses assigned at once over the last ``eni_min_age`` seconds
    rise: int = 0  # assigned now minus the fewest assigned over the last RISE_WINDOW seconds
    waiting: int = 0  # borrows waiting right now because no address was free


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


RISE_WINDOW = 30.0  # seconds: how far back ``Demand.rise`` looks


def want_available(targets: Targets, limits: Limits, demand: Demand | None = None) -> int:
    """The warm target; one ``surge_ips`` higher while pods arrive in a burst (a refill is
    under way when the next borrows come: the last warm address must not be the only one)."""
    want = max(targets.warm_ips, targets.warm_enis * limits.per_eni)
    if demand is None:
        return want
    if targets.surge_rise and demand.rise >= targets.surge_rise:
        want += targets.surge_ips
    # a pod waiting for an address is demand whatever the targets (warm_ips 0 included)
    return want + demand.waiting


def eni_headroom(targets: Targets, limits: Limits) -> int:
    """At most half an ENI ahead: on a small instance an early create would hold the loop
    (one call at a time) while borrows wait."""
    return min(targets.eni_headroom, limits.per_eni // 2)


def shortfall(t: Totals, targets: Targets, limits: Limits,
              demand: Demand | None = None) -> int:
    return max(want_available(targets, limits, demand) - t.available,
               targets.min_ips - t.total, 0)


def surplus(t: Totals, targets: Targets, limits: Limits) -> int:
    """Idle addresses to free now, in whole slots: none until a batch and a slot (two
    batches for single addresses) lie above the warm target (and the minimum), then all
    but one batch."""
    want = want_available(targets, limits)  # not a burst's: the band stays where it is
    unit, batch = limits.unit, targets.batch_size
    above = min(t.available - want, t.total - targets.min_ips)
    over = (above - batch) // unit * unit if above >= batch + max(batch, unit) else 0
    if targets.max_ips and t.total - over > targets.max_ips:
        over = -(-(t.total - targets.max_ips) // unit) * unit
    return max(min(over, t.available // unit * unit), 0)


def decide(enis: tuple[EniCounts, ...], targets: Targets, limits: Limits,
           demand: Demand | None = None) -> Action:
    """One step towards the targets. ``enis`` in device order, the primary first;
    ``demand``: the loop's recent history (none: the current assignment is the peak)."""
    t = sum_counts(enis)
    peak = max(demand.peak if demand else 0, t.assigned)
    short = shortfall(t, targets, limits, demand)
    if short:
        return _grow(enis, t, short, targets, limits, demand)
    strays = max(enis, key=lambda e: e.strays, default=None)
    if strays is not None and strays.strays:
        return Action(Kind.RETIRE, strays.strays, strays.eni_id,
                      f"{strays.strays} idle slots of the other mode go back ({strays.stray_free}"
                      " of its addresses free)")
    ahead = _eni_ahead(enis, t, targets, limits, demand)
    if ahead is not None:
        return ahead
    return _shrink(enis, t, surplus(t, targets, limits), peak, targets, limits, demand)


def _eni_ahead(enis, t: Totals, targets: Targets, limits: Limits,
               demand: Demand | None) -> Action | None:
    """An empty ENI attached before the attached ones run out of room."""
    reach = t.available + sum(e.room for e in enis)
    want = want_available(targets, limits, demand) + eni_headroom(targets, limits)
    if reach >= want or len(enis) >= eni_ceiling(targets, limits):
        return None
    if targets.max_ips and t.total + reach >= targets.max_ips:
        return None  # the ceiling is within reach already
    return Action(Kind.CREATE_ENI, 0, reason=f"{reach} addresses within reach (available +"
                  f" room) < warm + headroom {want}: next ENI ahead, empty")


def _grow(enis, t: Totals, short: int, targets: Targets, limits: Limits,
          demand: Demand | None = None) -> Action:
    unit = limits.unit
    if unit > 1 and demand is not None and targets.surge_rise \
            and demand.rise >= targets.surge_rise:
        # prefixes in a burst: as many again as arrived lately, in one call (a /28 per
        # call made a 100-pod burst wait through 7 calls in turn; what is over goes back
        # whole once the burst is over)
        short = max(short, demand.rise)
    if targets.max_ips:
        room_total = (targets.max_ips - t.total) // unit * unit  # whole slots under it
        if room_total <= 0:
            return Action(Kind.NOTHING, reason=f"short {short} but max_ips={targets.max_ips}"
                          f" reached ({t.total} held)", blocker=Blocker.MAX_IPS)
        short = min(short, room_total)
    step = max(short, targets.batch_size)
    if targets.max_ips:
        step = min(step, room_total)
    slots, batch = -(-step // unit), -(-targets.batch_size // unit)  # rounded up to slots
    roomy = [e for e in enis if e.room >= unit]
    if roomy:  # the first ENI with room for a batch (low ENIs fill first, high ones can
        # empty), else the first that takes the whole step in one call, else the roomiest
        eni = next((e for e in roomy if e.room // unit >= min(slots, batch)), None) or \
            next((e for e in roomy if e.room // unit >= slots),
                 max(roomy, key=lambda e: e.room))
        return Action(Kind.ASSIGN, min(slots, eni.room // unit), eni.eni_id,
                      f"short {short}: {t.available} available, {t.total} held")
    ceiling = eni_ceiling(targets, limits)
    if len(enis) < ceiling:
        count = min(slots, limits.secondary_per_eni)
        return Action(Kind.CREATE_ENI, count, reason=f"short {short}; ENIs full"
                      f" ({len(enis)} of {ceiling} attached)")
    return Action(Kind.NOTHING, reason=f"short {short} but ENI limit reached: {len(enis)} of"
                  f" {ceiling} ENIs, all full ({t.assigned} assigned, {t.cooling} cooling)",
                  blocker=Blocker.ENI_LIMIT)


def _shrink(enis, t: Totals, over: int, peak: int, targets: Targets, limits: Limits,
            demand: Demand | None) -> Action:
    want = want_available(targets, limits, demand)
    need = peak + want + eni_headroom(targets, limits)
    # An ENI with nothing assigned or cooling is deleted whole when the others could have
    # held the recent peak; higher device indexes first, never the primary, never a young one.
    for eni in reversed(enis):
        if eni.is_primary or eni.assigned or eni.cooling or eni.releasing:
            continue
        if eni.age_seconds < targets.eni_min_age:
            continue
        others = sum(e.capacity for e in enis if e.eni_id != eni.eni_id)
        if (others >= need and t.available - eni.free >= want
                and t.total - eni.total >= targets.min_ips):
            return Action(Kind.DELETE_ENI, eni_id=eni.eni_id,
                          reason=f"ENI idle ({eni.free} free, nothing assigned); the others"
                          f" hold {others} >= peak {peak} + warm {want} + headroom")
    if over <= 0:
        return Action(Kind.NOTHING, reason=f"at target: {t.available} available,"
                      f" {t.total} held")
    # One call: a secondary ENI with nothing in use first (emptied, it can be deleted once
    # not needed), else the ENI that can give the most of the surplus; the primary last.
    # Only whole slots go back: with prefixes, those with all 16 addresses free.
    unit = limits.unit
    candidates = [(index, e) for index, e in enumerate(enis) if e.whole_free]
    if not candidates:
        return Action(Kind.NOTHING, reason=f"over by {over}, but no whole prefix is free"
                      f" ({t.available} available in partly used prefixes)")
    _, eni = min(candidates, key=lambda p: (
        p[1].is_primary or bool(p[1].assigned + p[1].cooling),
        -min(p[1].whole_free * unit, over), p[1].is_primary, p[1].assigned + p[1].cooling,
        -p[0]))
    count = min(over // unit, eni.whole_free)
    return Action(Kind.UNASSIGN, count, eni.eni_id,
                  f"over by {over}: {t.available} available, {t.total} held")


class PeakWindow:
    """From samples of the assigned count: the most among those of the last ``window``
    seconds (``Demand.peak``) and the rise over the fewest of the last ``RISE_WINDOW``
    (``Demand.rise``). The loop feeds it its own clock's reading with each sample: nothing
    here reads time. Two monotonic queues: each sample is pushed and dropped once."""

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError(f"window must be >= 0 seconds, got {window!r}")
        self.window = window
        self._highs: deque[tuple[float, int]] = deque()
        self._lows: deque[tuple[float, int]] = deque()

    def observe(self, now: float, assigned: int) -> Demand:
        highs, lows = self._highs, self._lows
        while highs and highs[-1][1] <= assigned:
            highs.pop()
        highs.append((now, assigned))
        while highs[0][0] < now - self.window:
            highs.popleft()
        while lows and lows[-1][1] >= assigned:
            lows.pop()
        lows.append((now, assigned))
        while lows[0][0] < now - RISE_WINDOW:
            lows.popleft()
        return Demand(peak=highs[0][1], rise=assigned - lows[0][1])

