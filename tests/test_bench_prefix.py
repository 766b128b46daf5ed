"""Prefix delegation in the pool simulator and AWS's prefix comparator: slot limits at their
exact numbers, borrows packed as the agent's store packs them (checked step by step against
the real store), prefixes given back only whole, WARM_PREFIX_TARGET=1's arithmetic as
tables, tiny traces counted by hand, and the ENIs a burst's lower bound counts. Pure: no
clock, cloud or kernel."""
from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from bench import prefix_efficiency as pfx
from bench.aws_policy import PrefixTargets, decide_free_eni_prefix, decide_pool_prefix
from bench.bench_burst import new_enis_needed
from bench.node_sim import Datastore, SimConfig, SimNode, SimulationError
from bench.pool_loops import aws_loop, simulate, underlay_loop
from bench.trace import Trace, TracePod
from ipam_daemon import policy
from ipam_daemon.config import AgentConfig
from ipam_daemon.policy import Action, EniCounts, Kind, Limits
from ipam_daemon.store import AllocationKey, EniRecord, PodInfo, Store

PREFIX_NODE = SimConfig(prefix_delegation=True)  # an m5.large: 3 ENIs x 10 slots
PREFIX_TARGETS = AgentConfig(prefix_delegation=True).pool  # the agent's defaults


def act(node: SimNode, kind: Kind, count: int = 0, eni_id: str = "eni-0") -> None:
    """One cloud call, begun and finished at once."""
    action = Action(kind, count, eni_id)
    node.begin(action)
    node.finish(action)


def tiny(*pods: tuple[str, float, float], duration: float = 300.0) -> Trace:
    return Trace(0, duration, tuple(TracePod(*p) for p in pods), (), ())


# ---- slot limits -------------------------------------------------------------------------

@pytest.mark.parametrize("instance,max_enis,slots,per_eni", [
    ("m5.large", 3, 10, 144),  # 9 slots x 16
    ("t3.small", 3, 4, 48),  # 3 slots x 16
    ("c5.4xlarge", 8, 30, 464),  # 29 slots x 16
])
def test_an_eni_holds_its_free_slots_in_prefixes_and_no_more(instance, max_enis, slots,
                                                             per_eni):
    node = SimNode(SimConfig(max_enis=max_enis, ips_per_eni=slots, prefix_delegation=True))
    assert node.counts()[0].capacity == per_eni  # empty: every free slot's worth
    act(node, Kind.ASSIGN, slots - 2)
    act(node, Kind.ASSIGN, 1)  # the last slot: the primary address keeps its own
    (counts,) = node.counts()
    assert (node.held(), counts.capacity, counts.room, counts.free) == (
        per_eni, per_eni, 0, per_eni)
    with pytest.raises(SimulationError, match=f"using {slots - 1} of {slots - 1} slots"):
        node.begin(Action(Kind.ASSIGN, 1, "eni-0"))
    with pytest.raises(SimulationError, match=f"a new ENI with {slots} of {slots - 1} slots"):
        node.begin(Action(Kind.CREATE_ENI, slots))


def test_an_m5_large_gives_110_pods_addresses_from_its_primary_eni_alone():
    """The shipped stepper on the simulated m5.large: 110 pods arriving one a second end up
    on the primary ENI (at most 9 prefixes), one Assign call per prefix or fewer."""
    trace = tiny(*((f"p{i}", 1.0 + i, 1000.0) for i in range(110)), duration=400.0)
    r = simulate("u", trace, replace(PREFIX_NODE, assign_latency=0.3),
                 underlay_loop(policy.decide, PREFIX_TARGETS))
    assert r.peak_enis == 1 and "CreateNetworkInterface" not in r.calls
    assert 110 < r.peak_held <= 144 and r.peak_held % 16 == 0
    assert r.calls["AssignPrivateIpAddresses"] <= r.peak_held // 16


# ---- borrows and give-backs: the agent's store, step by step -------------------------------

def cidr(prefix_id: int) -> str:
    """The /28 standing for the simulator's prefix ``prefix_id``: their names sort as the ids
    do, so the store's tie-break (the prefix's name) is the simulator's (its id)."""
    return f"10.0.{100 + prefix_id}.0/28"


def test_the_simulator_borrows_and_gives_back_as_the_agents_store_does():
    """300 random steps (borrow, release, time passing, give back whole prefixes) on the
    simulated node and on the real store with the same two ENIs and prefixes: each borrow
    lands in the same prefix, each give-back takes the same prefixes."""
    rng = random.Random(5)
    now = [0.0]
    node = SimNode(PREFIX_NODE)
    store = Store(":memory:", clock=lambda: now[0], prefer_prefixes=True)
    act(node, Kind.ASSIGN, 3)
    act(node, Kind.CREATE_ENI, 2)
    for eni in node.enis:
        store.add_eni(EniRecord(eni.eni_id, f"02:00:00:00:00:0{eni.device}", "subnet-1",
                                "10.0.0.0/16", eni.device, f"10.0.0.{10 + eni.device}",
                                eni.device == 0, 0.0), prefixes=[cidr(p) for p in eni.prefixes])
    networks = [ipaddress.IPv4Network(cidr(p)) for e in node.enis for p in e.prefixes]

    def sim_prefix(ip: int) -> str:
        return next(cidr(e.prefix_of[ip]) for e in node.enis if ip in e.prefix_of)

    def store_prefix(ip: str) -> str:
        return next(n for n in networks if ipaddress.IPv4Address(ip) in n).with_prefixlen

    live: dict[str, int] = {}
    for step in range(300):
        choice = rng.random()
        if choice < 0.5:
            pod = f"pod-{step}"
            got = node.borrow(pod)
            allocation = store.borrow(AllocationKey("net", pod, "eth0"), PodInfo())
            assert (got is None) == (allocation is None), step
            if got is not None:
                assert sim_prefix(got) == store_prefix(allocation.ip), step
                live[pod] = got
        elif choice < 0.8 and live:
            pod = rng.choice(sorted(live))
            del live[pod]
            node.release(pod)
            store.release(AllocationKey("net", pod, "eth0"), cooldown=node.config.cooldown)
        elif choice < 0.95:
            now[0] = node.now = now[0] + rng.uniform(0.0, 20.0)
        else:
            eni = rng.choice(node.enis)
            count, before = rng.randint(1, 2), set(eni.prefixes)
            act(node, Kind.UNASSIGN, count, eni.eni_id)
            reserved = store.reserve_prefixes(eni.eni_id, count)
            store.remove_prefixes(reserved)
            assert sorted(cidr(p) for p in before - set(eni.prefixes)) == sorted(reserved), step
        per_prefix = {p.prefix: p.assigned for p in store.prefixes()}
        assert per_prefix == {cidr(p): sum(ip in e.assigned for ip in ips)
                              for e in node.enis for p, ips in e.prefixes.items()}, step


def test_a_prefix_in_use_never_goes_back():
    """Two prefixes, a pod in the first: an Unassign of both gives back only the second;
    the pod keeps its address."""
    node = SimNode(PREFIX_NODE)
    act(node, Kind.ASSIGN, 2)
    ip = node.borrow("pod")
    act(node, Kind.UNASSIGN, 2)
    (eni,) = node.enis
    assert node.held() == 16 and ip in eni.prefix_of, "the pod's prefix went back"
    assert list(eni.prefixes) == [eni.prefix_of[ip]] and eni.assigned == {ip: "pod"}
    assert node.counts()[0].giveable == 0


@pytest.mark.parametrize("datastore,gone", [
    (Datastore.UNDERLAY, 0),  # the agent's store: all 16 free *and cooled*, or it stays
    (Datastore.IPAMD, 1),  # ipamd: none assigned is enough, cooling addresses go too
])
def test_a_prefix_with_a_cooling_address(datastore, gone):
    node = SimNode(replace(PREFIX_NODE, datastore=datastore))
    act(node, Kind.ASSIGN, 1)
    node.borrow("pod")
    node.release("pod")  # cooling for 30 s
    assert node.counts()[0].giveable == gone
    act(node, Kind.UNASSIGN, 1)
    assert node.held() == 16 * (1 - gone)
    node.now += node.config.cooldown  # cooled: the store's rule lets it go now
    act(node, Kind.UNASSIGN, 1)
    assert node.held() == 0


# ---- AWS VPC CNI, WARM_PREFIX_TARGET=1 ----------------------------------------------------

M5L = Limits(max_enis=3, ips_per_eni=10, unit=16)


def aws_eni(name="eni-p", prefixes=0, assigned=0, cooling=0, free_prefixes=0, primary=True,
            age=9000.0):
    """An ENI as ipamd counts it: ``free_prefixes`` have no assigned address."""
    held = prefixes * 16
    return EniCounts(name, held + (9 - prefixes) * 16, free=held - assigned - cooling,
                     assigned=assigned, cooling=cooling, is_primary=primary, age_seconds=age,
                     giveable=free_prefixes)


AWS_CASES = [
    # (id, enis, kind, count)
    ("a fresh node takes one prefix", (aws_eni(),), Kind.ASSIGN, 1),
    ("one address used: 15 available < 16: the next prefix",
     (aws_eni(prefixes=1, assigned=1),), Kind.ASSIGN, 1),
    ("one whole free prefix beyond the used one: at target",
     (aws_eni(prefixes=2, assigned=1, free_prefixes=1),), Kind.NOTHING, 0),
    ("two whole free prefixes: one goes back",
     (aws_eni(prefixes=3, assigned=1, free_prefixes=2),), Kind.UNASSIGN, 1),
    ("four free after a drain: three go back in one call",
     (aws_eni(prefixes=4, free_prefixes=4),), Kind.UNASSIGN, 3),
    ("a prefix whose addresses all cool is free to ipamd (cooling counts as free)",
     (aws_eni(prefixes=3, assigned=1, cooling=16, free_prefixes=2),), Kind.UNASSIGN, 1),
    ("16 available spread over two used prefixes: ipamd neither grows nor gives back",
     (aws_eni(prefixes=2, assigned=16),), Kind.NOTHING, 0),
    ("maxPods (110) held: never too low", (aws_eni(prefixes=7, assigned=110),), Kind.NOTHING,
     0),
    ("9 slots full: a new ENI with one prefix",
     (aws_eni(prefixes=9, assigned=140),), Kind.CREATE_ENI, 1),
]


@pytest.mark.parametrize("name,enis,kind,count", AWS_CASES, ids=[c[0] for c in AWS_CASES])
def test_aws_warm_prefix_target_one(name, enis, kind, count):
    targets = PrefixTargets(max_pods=200) if "9 slots" in name else PrefixTargets()
    action = decide_pool_prefix(enis, targets, M5L)
    assert (action.kind, action.count) == (kind, count), action


def test_aws_deletes_an_unused_eni_only_when_the_others_keep_a_free_prefix():
    spare = aws_eni("eni-2", prefixes=1, free_prefixes=1, primary=False)
    busy = aws_eni(prefixes=2, assigned=20)
    assert decide_free_eni_prefix((busy, spare), PrefixTargets(), M5L).kind is Kind.NOTHING
    roomy = aws_eni(prefixes=3, assigned=20, free_prefixes=1)
    action = decide_free_eni_prefix((roomy, spare), PrefixTargets(), M5L)
    assert (action.kind, action.eni_id) == (Kind.DELETE_ENI, "eni-2")
    young = replace(spare, age_seconds=30.0)
    assert decide_free_eni_prefix((roomy, young), PrefixTargets(), M5L).kind is Kind.NOTHING


def test_aws_keeps_exactly_one_whole_free_prefix_while_pods_arrive():
    """Pods arriving one every 10 s on packed borrows, ipamd's pass every 5 s: every pass
    finds exactly one prefix with no address in use and does nothing, or finds none (a pod
    just took from it) and assigns exactly one."""
    seen = []

    def recording(enis, targets, limits):
        action = decide_pool_prefix(enis, targets, limits)
        seen.append((sum(e.giveable or 0 for e in enis), action.kind, action.count))
        return action

    trace = tiny(*((f"p{i}", 10.0 * (i + 1), 1000.0) for i in range(40)), duration=420.0)
    r = simulate("a", trace, replace(PREFIX_NODE, datastore=Datastore.IPAMD_PACKED),
                 aws_loop(recording, decide_free_eni_prefix, PrefixTargets()))
    # boot, then the 1st, 17th and 33rd pod each leave 15 available: four Assigns
    assert r.misses == 0 and r.calls == {"AssignPrivateIpAddresses": 4}
    assert set(seen) == {(0, Kind.ASSIGN, 1), (1, Kind.NOTHING, 0)}, seen
    assert seen.count((0, Kind.ASSIGN, 1)) == 4


# ---- tiny traces by hand -----------------------------------------------------------------

def test_underlay_prefix_tiny_trace_by_hand():
    # warm 2: the first look's chores (0.2 s), then one prefix for the shortfall of 2; three
    # pods take 3 of its 16; after they leave and cool, 16 free are 14 above warm, under a
    # batch + a prefix (20): kept. One Assign call in all; the prefix is idle throughout
    # but for the pods' time on it.
    trace = tiny(("a", 10.0, 100.0), ("b", 20.0, 100.0), ("c", 30.0, 100.0))
    r = simulate("u", trace, PREFIX_NODE, underlay_loop(policy.decide, PREFIX_TARGETS))
    assert r.calls == {"AssignPrivateIpAddresses": 1}
    assert (r.misses, r.peak_held, r.peak_enis) == (0, 16, 1)
    idle = 16 * (300.0 - 0.5) - (90 + 80 + 70)
    assert r.idle_ip_seconds == pytest.approx(idle)
    assert r.eni_seconds == pytest.approx(300.0)
def test_aws_prefix_tiny_trace_by_hand():
    # a pass every 5 s after the last: at 0 one prefix (0.3 s); at 10.3, 15 available < 16:
    # a second (0.3 s); once all leave (100) both prefixes are free (cooling counts): the
    # 100.6 pass gives one back (no shrink yet, so no interval to wait). Two Assigns, one
    # Unassign; the reference of the prefix bench is this policy on ipamd's datastore.
    trace = tiny(("a", 10.0, 100.0), ("b", 20.0, 100.0), ("c", 30.0, 100.0))
    node, make_loop = pfx.policies()[pfx.REFERENCE]
    assert node.prefix_delegation and node.datastore is Datastore.IPAMD
    r = simulate("a", trace, node, make_loop)
    assert r.calls == {"AssignPrivateIpAddresses": 2, "UnassignPrivateIpAddresses": 1}
    assert (r.misses, r.peak_held, r.peak_enis) == (0, 32, 1)


def test_prefix_efficiency_reports_ratios_against_aws_prefix():
    out: dict = {}
    pfx.run(out, quick=True)
    assert set(out["policies"]) == {"underlay-prefix", "underlay-secondary", "aws-prefix",
                                    "aws-prefix-packed"}
    assert set(out["ratios_over_aws_prefix"]) == {"underlay-prefix", "underlay-secondary"}
    metrics = {r["metric"] for r in out["rows"]}
    assert {"mutating EC2 calls [prefix mode]", "ENIs attached, mean [secondary mode]",
            "pool misses (ADDs that found no address) [prefix mode]"} <= metrics
    assert all(s["adds"] > 0 for s in out["policies"].values())



@pytest.mark.parametrize("pods,per_eni,enis,needed", [
    (60, 29, 1, 2),  # the secondary burst: c5.4xlarge, 29 addresses per ENI
    (100, 144, 1, 0),  # the prefix burst: m5.large, 9 slots x 16 on the primary ENI alone
    (145, 144, 1, 1),
    (100, 144, 2, 0),
])
def test_the_burst_bounds_count_the_enis_no_policy_can_avoid(pods, per_eni, enis, needed):
    assert new_enis_needed(pods, per_eni, enis) == needed


def test_the_prefix_burst_is_100_pods_in_prefix_mode_on_an_m5_large():
    from bench.bench_burst_prefix import PLAN
    assert (PLAN.pods, PLAN.instance_type, dict(PLAN.agent)) == (
        100, "m5.large", {"prefix_delegation": True})
