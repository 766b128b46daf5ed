"""The pool policy as tables: counts + targets + limits -> action. No clock, cloud, kernel."""
from __future__ import annotations

import pytest

from bench.aws_policy import decide_pool
from ipam_daemon.policy import (
    Action, Blocker, Demand, EniCounts, Kind, Limits, PeakWindow, Targets, decide,
)

M5L = Limits(max_enis=3, ips_per_eni=10)  # 9 secondaries per ENI


def eni(name, free=0, assigned=0, cooling=0, primary=False, age=9000.0, capacity=9):
    return EniCounts(name, capacity, free=free, assigned=assigned, cooling=cooling,
                     is_primary=primary, age_seconds=age)


P = "eni-p"  # the primary ENI

CASES = [
    # (id, enis, targets, expected kind, count, eni, blocker); default batch_size is 4
    ("fresh node grows by the shortfall in one call",
     (eni(P, primary=True),), Targets(warm_ips=5), Kind.ASSIGN, 5, P, Blocker.NONE),
    ("a small shortfall grows by a whole batch (hysteresis band)",
     (eni(P, free=1, assigned=3, primary=True),), Targets(warm_ips=2), Kind.ASSIGN, 4, P,
     Blocker.NONE),
    ("minimum counts held addresses",
     (eni(P, free=2, primary=True),), Targets(warm_ips=2, min_ips=7), Kind.ASSIGN, 5, P,
     Blocker.NONE),
    ("at target does nothing",
     (eni(P, free=2, assigned=3, primary=True),), Targets(warm_ips=2), Kind.NOTHING, 0, "",
     Blocker.NONE),
    ("cooling addresses are not available",
     (eni(P, free=0, cooling=2, assigned=1, primary=True),), Targets(warm_ips=2, batch_size=1),
     Kind.ASSIGN, 2, P, Blocker.NONE),
    ("full primary: create a pre-filled ENI with a batch",
     (eni(P, free=1, assigned=8, primary=True),), Targets(warm_ips=3), Kind.CREATE_ENI, 4, "",
     Blocker.NONE),
    ("fill the existing ENI with room before creating one",
     (eni(P, assigned=9, primary=True), eni("eni-2", assigned=4)), Targets(warm_ips=2),
     Kind.ASSIGN, 4, "eni-2", Blocker.NONE),
    ("grow is capped by the room on that ENI",
     (eni(P, assigned=8, primary=True),), Targets(warm_ips=3), Kind.ASSIGN, 1, P,
     Blocker.NONE),
    ("ENI limit: nothing, with the reason",
     (eni(P, assigned=9, primary=True), eni("eni-2", assigned=9), eni("eni-3", assigned=9)),
     Targets(warm_ips=2), Kind.NOTHING, 0, "", Blocker.ENI_LIMIT),
    ("configured max_enis below the instance limit",
     (eni(P, assigned=9, primary=True),), Targets(warm_ips=2, max_enis=1), Kind.NOTHING, 0, "",
     Blocker.ENI_LIMIT),
    ("max_ips ceiling",
     (eni(P, assigned=6, primary=True),), Targets(warm_ips=2, max_ips=6), Kind.NOTHING, 0, "",
     Blocker.MAX_IPS),
    ("max_ips trims the growth, batch included",
     (eni(P, assigned=5, primary=True),), Targets(warm_ips=3, max_ips=6), Kind.ASSIGN, 1, P,
     Blocker.NONE),
    ("warm_enis asks for an ENI's worth of addresses",
     (eni(P, primary=True),), Targets(warm_ips=0, warm_enis=1), Kind.ASSIGN, 9, P,
     Blocker.NONE),
    ("idle addresses inside the band are kept",
     (eni(P, free=6, assigned=1, primary=True),), Targets(warm_ips=2), Kind.NOTHING, 0, "",
     Blocker.NONE),
    ("less than two batches above warm: kept (no call per departing pod)",
     (eni(P, free=8, assigned=1, primary=True),), Targets(warm_ips=2), Kind.NOTHING, 0, "",
     Blocker.NONE),
    ("two batches above warm: all but one batch freed in one call",
     (eni(P, free=8, assigned=1, primary=True),), Targets(warm_ips=2, batch_size=2),
     Kind.UNASSIGN, 4, P, Blocker.NONE),
    ("surplus keeps the minimum",
     (eni(P, free=9, primary=True),), Targets(warm_ips=2, min_ips=7, batch_size=1),
     Kind.UNASSIGN, 1, P, Blocker.NONE),
    ("surplus drains the non-primary ENI first",
     (eni(P, free=2, assigned=3, primary=True), eni("eni-2", free=3, assigned=1)),
     Targets(warm_ips=2, batch_size=1), Kind.UNASSIGN, 2, "eni-2", Blocker.NONE),
    ("idle non-primary ENI is deleted when the others hold assigned + warm + headroom",
     (eni(P, free=3, assigned=3, primary=True), eni("eni-2", free=4)), Targets(warm_ips=2),
     Kind.DELETE_ENI, 0, "eni-2", Blocker.NONE),
    ("idle ENI kept while the others could not hold assigned + warm + headroom",
     (eni(P, free=3, assigned=6, primary=True), eni("eni-2", free=4)), Targets(warm_ips=2),
     Kind.NOTHING, 0, "", Blocker.NONE),
    ("young idle ENI is kept (eni_min_age); its surplus is unassigned instead",
     (eni(P, free=3, assigned=3, primary=True), eni("eni-2", free=4, age=5)),
     Targets(warm_ips=2, batch_size=2, eni_min_age=60), Kind.UNASSIGN, 3, "eni-2",
     Blocker.NONE),
    ("the surplus comes from the ENI that can give the most of it",
     (eni(P, free=1, assigned=2, primary=True), eni("eni-2", free=2, assigned=1),
      eni("eni-3", free=6, assigned=3)), Targets(warm_ips=1, batch_size=2), Kind.UNASSIGN, 6,
     "eni-3", Blocker.NONE),
    ("next ENI ahead, empty: available + room below warm + headroom",
     (eni(P, free=2, assigned=5, primary=True),), Targets(warm_ips=2), Kind.CREATE_ENI, 0, "",
     Blocker.NONE),
    ("no ENI ahead at the instance limit",
     (eni(P, assigned=9, primary=True), eni("eni-2", assigned=9), eni("eni-3", free=2,
                                                                      assigned=5)),
     Targets(warm_ips=2), Kind.NOTHING, 0, "", Blocker.NONE),
    ("no ENI ahead when max_ips is within reach",
     (eni(P, free=2, assigned=5, primary=True),), Targets(warm_ips=2, max_ips=8), Kind.NOTHING,
     0, "", Blocker.NONE),
    ("a shortfall goes to the first ENI that takes the whole batch in one call",
     (eni(P, assigned=8, primary=True), eni("eni-2", assigned=1)), Targets(warm_ips=1),
     Kind.ASSIGN, 4, "eni-2", Blocker.NONE),
    ("ENI with a cooling address is not deleted",
     (eni(P, free=8, assigned=1, primary=True), eni("eni-2", free=0, cooling=1)),
     Targets(warm_ips=2, batch_size=1), Kind.UNASSIGN, 5, P, Blocker.NONE),
    ("empty ENI with no addresses is deleted",
     (eni(P, free=2, assigned=3, primary=True), eni("eni-2")), Targets(warm_ips=2),
     Kind.DELETE_ENI, 0, "eni-2", Blocker.NONE),
    ("the primary ENI is never deleted",
     (eni(P, primary=True),), Targets(warm_ips=0), Kind.NOTHING, 0, "", Blocker.NONE),
    ("idle ENI kept when its free addresses are the warm pool",
     (eni(P, assigned=9, primary=True), eni("eni-2", free=2)), Targets(warm_ips=2),
     Kind.NOTHING, 0, "", Blocker.NONE),
]


@pytest.mark.parametrize("name,enis,targets,kind,count,eni_id,blocker", CASES,
                         ids=[c[0] for c in CASES])
def test_decide(name, enis, targets, kind, count, eni_id, blocker):
    action = decide(enis, targets, M5L)
    assert (action.kind, action.count, action.eni_id, action.blocker) == (
        kind, count, eni_id, blocker), action
    assert action.reason


def test_decide_reason_names_the_eni_limit():
    full = (eni(P, assigned=9, primary=True), eni("eni-2", assigned=9), eni("eni-3", assigned=9))
    action = decide(full, Targets(warm_ips=1), M5L)
    assert "ENI limit reached: 3 of 3" in action.reason


def test_policy_converges_without_oscillation():
    """Applying the policy's own actions reaches a fixed point from many start states."""
    targets = Targets(warm_ips=3, min_ips=4, batch_size=4, eni_min_age=0)
    for assigned in range(0, 25):
        enis = {P: [0, min(assigned, 9)]}
        rest = assigned - enis[P][1]
        n = 2
        while rest > 0:
            enis[f"eni-{n}"] = [0, min(rest, 9)]
            rest -= min(rest, 9)
            n += 1
        for _ in range(50):
            counts = tuple(eni(k, free=v[0], assigned=v[1], primary=k == P) for k, v in enis.items())
            action = decide(counts, targets, M5L)
            if action.kind is Kind.NOTHING:
                break
            if action.kind is Kind.ASSIGN:
                enis[action.eni_id][0] += action.count
            elif action.kind is Kind.CREATE_ENI:
                enis[f"eni-{len(enis) + 1}"] = [action.count, 0]
            elif action.kind is Kind.UNASSIGN:
                enis[action.eni_id][0] -= action.count
            elif action.kind is Kind.DELETE_ENI:
                del enis[action.eni_id]
        else:
            pytest.fail(f"no fixed point for {assigned} assigned: {enis}")
        free = sum(v[0] for v in enis.values())
        held = sum(v[0] + v[1] for v in enis.values())
        assert free >= 3 and held >= 4, (assigned, enis)
        assert min(free - 3, held - 4) <= 4, (assigned, enis)  # nothing above the band


AWS_CASES = [
    ("cooling counted as available (the known bug)",
     (eni(P, cooling=2, assigned=1, primary=True),), Targets(warm_ips=2), Kind.NOTHING, 0),
    ("short = max(warm - available, minimum - total)",
     (eni(P, free=1, assigned=1, primary=True),), Targets(warm_ips=2, min_ips=6), Kind.ASSIGN, 4),
    ("over = min(available - warm, total - minimum)",
     (eni(P, free=6, assigned=1, primary=True),), Targets(warm_ips=2, min_ips=5), Kind.UNASSIGN, 2),
    ("WARM_ENI_TARGET=1 on a fresh node fills a whole ENI",
     (eni(P, primary=True),), Targets(warm_ips=0, warm_enis=1), Kind.ASSIGN, 9),
    ("WARM_ENI_TARGET=1: one pod on the only ENI -> a whole second ENI",
     (eni(P, free=8, assigned=1, primary=True),), Targets(warm_ips=0, warm_enis=1),
     Kind.CREATE_ENI, 9),
]


@pytest.mark.parametrize("name,enis,targets,kind,count", AWS_CASES, ids=[c[0] for c in AWS_CASES])
def test_aws_arithmetic(name, enis, targets, kind, count):
    action = decide_pool(enis, targets, M5L)
    assert (action.kind, action.count) == (kind, count), action


def test_underlay_holds_fewer_idle_ips_than_aws_defaults():
    """One pod on a fresh m5.large: AWS defaults (WARM_ENI_TARGET=1) end up holding a second
    whole ENI; underlay's defaults (warm_ips=2, batch 4) grow by four addresses."""
    ours = decide((eni(P, free=0, assigned=1, primary=True),), Targets(), M5L)
    theirs = decide_pool((eni(P, free=8, assigned=1, primary=True),),
                        Targets(warm_ips=0, warm_enis=1), M5L)
    assert ours.count == 4 and theirs.count == 9
    assert isinstance(ours, Action)


def test_recent_peak_keeps_an_idle_eni_until_it_has_passed():
    enis = (eni(P, free=3, assigned=3, primary=True), eni("eni-2"))
    kept = decide(enis, Targets(warm_ips=2), M5L, Demand(peak=8))
    assert kept.kind is Kind.NOTHING, kept  # 9 on the primary < peak 8 + warm 2 + headroom 4
    gone = decide(enis, Targets(warm_ips=2), M5L, Demand(peak=3))
    assert (gone.kind, gone.eni_id) == (Kind.DELETE_ENI, "eni-2"), gone
    assert "peak 3" in gone.reason


def test_headroom_is_at_most_half_an_eni():
    small = Limits(max_enis=3, ips_per_eni=4)  # t3.small: 3 secondaries per ENI
    fresh = (eni(P, free=1, primary=True, capacity=3),)
    assert decide(fresh, Targets(warm_ips=1, batch_size=1), small).kind is Kind.NOTHING
    full = (eni(P, free=1, assigned=2, primary=True, capacity=3),)
    assert decide(full, Targets(warm_ips=1, batch_size=1), small).kind is Kind.CREATE_ENI


def test_peak_window_keeps_the_most_assigned_of_the_window():
    window = PeakWindow(60.0)
    assert window.observe(0.0, 3) == Demand(peak=3)
    assert window.observe(10.0, 8).peak == 8
    assert window.observe(20.0, 5).peak == 8
    assert window.observe(69.0, 4).peak == 8  # the 8 of t=10 is 59 s old
    assert window.observe(71.0, 4).peak == 5  # now it has left; the 5 of t=20 has not
    assert window.observe(81.0, 2).peak == 4
    assert PeakWindow(0.0).observe(5.0, 7).peak == 7


def test_peak_window_refuses_a_negative_window():
    with pytest.raises(ValueError, match="window must be >= 0"):
        PeakWindow(-1.0)


def test_a_burst_keeps_one_more_address_warm():
    enis = (eni(P, free=2, assigned=3, primary=True),)
    calm = decide(enis, Targets(warm_ips=2), M5L, Demand(peak=3, rise=4))
    assert calm.kind is Kind.NOTHING, calm
    burst = decide(enis, Targets(warm_ips=2, surge_rise=3), M5L, Demand(peak=3, rise=3))
    assert (burst.kind, burst.count, burst.eni_id) == (Kind.ASSIGN, 4, P), burst
    off = decide(enis, Targets(warm_ips=2, surge_rise=0), M5L, Demand(peak=3, rise=9))
    assert off.kind is Kind.NOTHING, off


def test_peak_window_measures_the_rise_over_the_last_30_seconds():
    window = PeakWindow(600.0)
    assert window.observe(0.0, 5).rise == 0
    assert window.observe(10.0, 3).rise == 0
    assert window.observe(20.0, 7).rise == 4  # from the 3 of t=10
    assert window.observe(39.0, 8).rise == 5
    assert window.observe(41.0, 8) == Demand(peak=8, rise=1)  # the 3 has left; the 7 has not


@pytest.mark.parametrize("waiting,kind,count", [(0, Kind.NOTHING, 0), (1, Kind.ASSIGN, 1),
                                                (3, Kind.ASSIGN, 3)])
def test_waiting_borrows_are_demand_even_with_no_warm_target(waiting, kind, count):
    enis = (eni(P, assigned=2, primary=True),)
    action = decide(enis, Targets(warm_ips=0, batch_size=1), M5L, Demand(waiting=waiting))
    assert (action.kind, action.count) == (kind, count)


# ---- prefix delegation: slots of 16 ------------------------------------------------------

M5L_PREFIXES = Limits(max_enis=3, ips_per_eni=10, unit=16)  # 9 slots x 16 = 144 per ENI


def pfx(name, prefixes=0, assigned=0, cooling=0, whole_free=0, slots_used=None, primary=False,
        strays=0, stray_free=0, age=9000.0):
    """An ENI holding ``prefixes`` /28s (16 addresses each) and ``strays`` idle singles."""
    held = prefixes * 16
    used = prefixes + strays if slots_used is None else slots_used
    return EniCounts(name, held + stray_free + (9 - used) * 16,
                     free=held - assigned - cooling, assigned=assigned, cooling=cooling,
                     is_primary=primary, age_seconds=age, giveable=whole_free, strays=strays,
                     stray_free=stray_free)


PREFIX_CASES = [
    ("a fresh node takes one prefix for a shortfall of two",
     (pfx(P, primary=True),), Targets(warm_ips=2), Kind.ASSIGN, 1, P),
    ("a shortfall of 20 is two prefixes in one call",
     (pfx(P, primary=True),), Targets(warm_ips=20), Kind.ASSIGN, 2, P),
    ("15 of 16 used: one free < warm 2: the next prefix",
     (pfx(P, 1, assigned=15, primary=True),), Targets(warm_ips=2), Kind.ASSIGN, 1, P),
    ("one whole free prefix above the band goes back",
     (pfx(P, 2, assigned=10, whole_free=1, primary=True),), Targets(warm_ips=2),
     Kind.UNASSIGN, 1, P),
    ("inside the band (21 available, warm 2 + batch 4 + 16 = 22): kept",
     (pfx(P, 2, assigned=11, whole_free=1, primary=True),), Targets(warm_ips=2),
     Kind.NOTHING, 0, ""),
    ("over the band but no prefix whole free: nothing to give",
     (pfx(P, 3, assigned=20, whole_free=0, primary=True),), Targets(warm_ips=2),
     Kind.NOTHING, 0, ""),
    ("9 slots full on the primary (144): a new ENI with one prefix",
     (pfx(P, 9, assigned=143, primary=True),), Targets(warm_ips=2), Kind.CREATE_ENI, 1, ""),
    ("a single's slot leaves room for one prefix less",
     (pfx(P, 8, assigned=127, strays=1, stray_free=0, slots_used=9, primary=True),),
     Targets(warm_ips=2), Kind.CREATE_ENI, 1, ""),
    ("idle secondary addresses of the old mode go back (not counted available)",
     (pfx(P, 1, assigned=2, strays=3, stray_free=3, primary=True),), Targets(warm_ips=2),
     Kind.RETIRE, 3, P),
    ("max_ips is never passed by rounding up to a prefix",
     (pfx(P, 2, assigned=31, primary=True),), Targets(warm_ips=2, max_ips=40), Kind.NOTHING,
     0, ""),
]


@pytest.mark.parametrize("name,enis,targets,kind,count,eni_id", PREFIX_CASES,
                         ids=[c[0] for c in PREFIX_CASES])
def test_decide_with_prefixes(name, enis, targets, kind, count, eni_id):
    action = decide(enis, targets, M5L_PREFIXES)
    assert (action.kind, action.count, action.eni_id) == (kind, count, eni_id), action


def test_110_pods_fit_the_primary_eni_in_prefix_mode():
    """Filling an m5.large one pod at a time by the policy's own actions: 110 pods end on
    the primary ENI alone (7 prefixes + warm), and no ENI is ever created."""
    targets = Targets()
    prefixes, assigned = 0, 0
    kinds = []
    for _ in range(110):
        while True:
            action = decide((pfx(P, prefixes, assigned, primary=True),), targets, M5L_PREFIXES)
            kinds.append(action.kind)
            if action.kind is Kind.ASSIGN:
                prefixes += action.count
                continue
            break
        assigned += 1
    assert Kind.CREATE_ENI not in kinds and prefixes == 7 and prefixes * 16 >= 110 + 2


# ---- what one ENI's holdings are to the policy (the agent's and the simulator's counts) --

def usage(free=0, assigned=0, cooling=0, singles=0, free_singles=0, prefixes=0,
          free_prefixes=0):
    from ipam_daemon.store import EniRecord, EniUsage
    record = EniRecord("eni-p", "02:00:00:00:00:01", "subnet-1", "10.0.0.0/24", 0,
                       "10.0.0.10", True, 0.0)
    return EniUsage(free, assigned, cooling, 0, singles, free_singles, prefixes, free_prefixes,
                    eni=record)


COUNT_CASES = [
    # (id, holdings, unit, prefix_delegation, capacity, free, giveable, strays, stray_free)
    ("secondary mode: 5 singles, 2 free; 4 free slots of 1",
     usage(free=2, assigned=3, singles=5, free_singles=2), 1, False, 9, 2, 2, 0, 0),
    ("prefix mode: 2 prefixes, one whole free; 7 free slots of 16",
     usage(free=20, assigned=12, prefixes=2, free_prefixes=1), 16, True, 144, 20, 1, 0, 0),
    ("prefix mode: free singles of the old mode are strays, not available",
     usage(free=3 + 16 + 3, assigned=13, singles=3, free_singles=3, prefixes=2,
           free_prefixes=1), 16, True, 35 + 4 * 16, 19, 1, 3, 3),
    ("secondary mode: whole free prefixes of the old mode are strays, and a partly used"
     " prefix's free addresses are not available (new pods do not refill it)",
     usage(free=2 + 16 + 2, assigned=14, singles=2, free_singles=2, prefixes=2,
           free_prefixes=1), 1, False, 34 + 5, 2, 2, 1, 18),
    ("falling back (asked for prefixes, unit 1): prefixes stay the node's own",
     usage(free=2 + 16 + 2, assigned=14, singles=2, free_singles=2, prefixes=2,
           free_prefixes=1), 1, True, 34 + 5, 20, 2, 0, 0),
]


@pytest.mark.parametrize("name,held,unit,prefix_delegation,capacity,free,giveable,strays,"
                         "stray_free", COUNT_CASES, ids=[c[0] for c in COUNT_CASES])
def test_eni_counts_by_mode(name, held, unit, prefix_delegation, capacity, free, giveable,
                            strays, stray_free):
    from ipam_daemon.policy import eni_counts
    counts = eni_counts("eni-p", held, Limits(3, 10, unit), prefix_delegation=prefix_delegation,
                        is_primary=True, age=5.0)
    assert (counts.capacity, counts.free, counts.giveable, counts.strays, counts.stray_free) \
        == (capacity, free, giveable, strays, stray_free)
    assert counts.total == held.total and counts.room == capacity - held.total
    assert (counts.eni_id, counts.is_primary, counts.age_seconds) == ("eni-p", True, 5.0)


def test_a_burst_asks_for_as_many_prefixes_again_as_arrived():
    """Prefixes in a burst: a rise of 40 pods in the window asks for 40 more addresses,
    3 prefixes in one call; the same rise with single addresses keeps the batch rule."""
    enis = (pfx(P, 3, assigned=47, primary=True),)
    burst = decide(enis, Targets(warm_ips=2), M5L_PREFIXES, Demand(peak=47, rise=40))
    assert (burst.kind, burst.count) == (Kind.ASSIGN, 3)
    calm = decide(enis, Targets(warm_ips=2), M5L_PREFIXES, Demand(peak=47, rise=2))
    assert (calm.kind, calm.count) == (Kind.ASSIGN, 1)
    singles = decide((eni(P, free=1, assigned=3, primary=True),), Targets(warm_ips=2), M5L,
                     Demand(peak=3, rise=40))
    assert (singles.kind, singles.count) == (Kind.ASSIGN, 4)  # short 2 + surge 1 -> batch 4
