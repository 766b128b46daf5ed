"""The pool-efficiency bench: the churn trace is deterministic per seed, the simulated node
keeps its invariants under every policy, and tiny traces give counts checked by hand."""
from __future__ import annotations

import pytest

from bench import aws_policy
from bench import pool_efficiency as pe
from bench.node_sim import EC2_CALLS, SimConfig, SimulationError
from bench.pool_loops import aws_loop, simulate, underlay_loop
from bench.trace import Trace, TracePod, make_trace
from ipam_daemon import policy
from ipam_daemon.policy import Action, Kind, Targets
from ipam_daemon.stepper import PoolStepper


def tiny(*pods: tuple[str, float, float], duration: float = 1100.0) -> Trace:
    return Trace(0, duration, tuple(TracePod(*p) for p in pods), (), ())


def test_trace_is_deterministic_per_seed():
    a, b, other = make_trace(7, 3.0), make_trace(7, 3.0), make_trace(8, 3.0)
    assert a == b and a.events() == b.events()
    assert a.events() != other.events()
    assert len(a.pods) > 50 and a.drains and a.bursts


def test_trace_respects_max_pods_and_order():
    trace = make_trace(3, 6.0, max_pods=12)
    assert trace.max_live() <= 12
    events = trace.events()
    assert [e.time for e in events] == sorted(e.time for e in events)
    assert all(p.depart > p.arrive for p in trace.pods)
    # every drain empties the node: nobody admitted before it outlives it by > 30 s
    for drain in trace.drains:
        assert all(p.depart <= drain + 30.0 for p in trace.pods if p.arrive < drain)


@pytest.mark.parametrize("kwargs", [{"hours": 0}, {"max_pods": 0},
                                    {"level_range": (5, 2)}])
def test_trace_refuses_bad_input(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        make_trace(1, **{"hours": 1.0, **kwargs})


@pytest.mark.parametrize("name", ["underlay", "aws-default", "aws-warm-ip"])
def test_every_policy_keeps_the_invariants(name):
    trace = make_trace(11, 2.0)
    result = simulate(name, trace, pe.sim_config(), pe.policies()[name])
    assert result.peak_enis <= 3 and result.peak_held <= 27
    assert result.adds == len(trace.pods)  # each ADD served, cancelled or still waiting
    assert result.misses <= result.adds and all(w >= 0 for w in result.waits)
    calls = sum(len(EC2_CALLS[Kind(kind)]) * n for kind, n in result.actions.items())
    assert calls == result.total_calls
    assert 0 < result.idle_ip_seconds < 27 * trace.duration


def test_underlay_tiny_trace_by_hand():
    # warm 2, batch 4: boot assigns 4; the 3rd pod takes available to 1 -> one more batch of 4
    # (3 pods in 30 s is no burst; 5 available + 1 room = warm + headroom: no ENI ahead);
    # after all leave and cool, 8 free are 6 above warm, under two batches (8): kept.
    # The first look reconciles and collects leaked ENIs (0.1 s each) before the boot Assign
    # (0.3 s): the first 4 are held from 0.5 s.
    trace = tiny(("a", 10.0, 1000.0), ("b", 20.0, 1000.0), ("c", 30.0, 1000.0))
    r = simulate("u", trace, pe.sim_config(), underlay_loop(policy.decide, pe.underlay_targets()))
    assert r.calls == {"AssignPrivateIpAddresses": 2}
    assert (r.misses, r.waits, r.peak_held, r.peak_enis) == (0, (0.0, 0.0, 0.0), 8, 1)
    idle = 9.5 * 4 + 10 * 3 + 10 * 2 + 0.3 * 1 + 969.7 * 5 + 100 * 8
    assert r.idle_ip_seconds == pytest.approx(idle)
    assert r.cooling_ip_seconds == pytest.approx(3 * 30.0)  # three addresses, 30 s each


def test_aws_default_tiny_trace_by_hand():
    # WARM_ENI_TARGET=1, a pass every 5 s after the last: boot fills the primary (9); the
    # first pod leaves 8 available (< 9): the 10.3 pass adds a full ENI (3 s); once all leave,
    # 18 are available (cooling counted) and the 1003.3 pass deletes that ENI (1 s).
    trace = tiny(("a", 10.0, 1000.0), ("b", 20.0, 1000.0), ("c", 30.0, 1000.0))
    r = simulate("a", trace, pe.sim_config(), pe.policies()["aws-default"])
    assert r.calls == {"AssignPrivateIpAddresses": 1, "CreateNetworkInterface": 1,
                       "AttachNetworkInterface": 1, "ModifyNetworkInterfaceAttribute": 1,
                       "DetachNetworkInterface": 1, "DeleteNetworkInterface": 1}
    assert (r.misses, r.peak_held, r.peak_enis) == (0, 18, 2)
    idle = 9.7 * 9 + 3.3 * 8 + 6.7 * 17 + 10 * 16 + 970 * 15 + 4.3 * 18 + 95.7 * 9
    assert r.idle_ip_seconds == pytest.approx(idle)


def test_cooling_address_is_never_handed_out():
    # One address allowed (max_ips=1): b must wait until a's address has cooled (20 + 30).
    targets = Targets(warm_ips=1, batch_size=1, max_ips=1)
    trace = tiny(("a", 10.0, 20.0), ("b", 25.0, 90.0), duration=100.0)
    r = simulate("u", trace, pe.sim_config(), underlay_loop(policy.decide, targets))
    assert r.misses == 1 and r.waits == (0.0, 25.0)


def test_aws_counts_cooling_as_available_and_underlay_does_not():
    trace = tiny(("a", 10.0, 20.0), ("b", 25.0, 90.0), duration=100.0)
    ours = simulate("u", trace, pe.sim_config(),
                    underlay_loop(policy.decide, Targets(warm_ips=1, batch_size=1)))
    theirs = simulate("a", trace, pe.sim_config(),
                      aws_loop(aws_policy.decide_pool, aws_policy.decide_free_eni,
                               Targets(warm_ips=1)))
    # ipamd counts a's cooling address as its warm one and frees the spare (over by 1):
    # b waits out the cooldown (20 + 30 - 25). underlay keeps the spare: b waits for nothing.
    assert (theirs.misses, theirs.waits) == (1, (0.0, 25.0))
    assert (ours.misses, ours.waits) == (0, (0.0, 0.0))


def test_the_node_refuses_a_policy_past_the_instance_limit():
    def greedy(enis, targets, limits, demand=None):
        return Action(Kind.CREATE_ENI, 1)

    with pytest.raises(SimulationError, match="past the limit"):
        simulate("g", tiny(("a", 1.0, 2.0), duration=60.0), SimConfig(),
                 underlay_loop(greedy, Targets()))


def test_pool_efficiency_reports_ratios_and_rows():
    out: dict = {}
    pe.run(out, quick=True)
    assert set(out["policies"]) == {"underlay", "aws-default", "aws-warm-ip"}
    assert set(out["ratios_underlay_over_aws_default"]) == {"idle_ip_seconds", "misses",
                                                            "cloud_calls"}
    assert {r["metric"] for r in out["rows"]} >= {"idle IP-seconds", "mutating EC2 calls"}


def test_underlay_loop_hands_the_policy_the_recent_peak():
    seen = []

    def recording(enis, targets, limits, demand=None):
        seen.append((sum(e.assigned for e in enis), demand.peak))
        return policy.decide(enis, targets, limits, demand)

    trace = tiny(("a", 10.0, 40.0), ("b", 20.0, 40.0), duration=200.0)
    simulate("u", trace, pe.sim_config(), underlay_loop(recording, Targets(eni_min_age=100.0)))
    assert (2, 2) in seen and (0, 2) in seen  # after both left, the peak of 2 is remembered
    assert all(peak >= assigned for assigned, peak in seen)


def test_a_burst_of_five_pods_gets_an_empty_eni_ahead():
    # five pods within 30 s: a burst (warm 2 + 1); after the refill to 5 available the
    # reach (5 + 0 room) is below warm 3 + headroom 4: an empty ENI is attached ahead
    trace = tiny(*((f"p{i}", 10.0 + i, 1000.0) for i in range(5)))
    r = simulate("u", trace, pe.sim_config(), underlay_loop(policy.decide, pe.underlay_targets()))
    assert r.calls.get("CreateNetworkInterface") == 1 and r.peak_enis == 2, r.calls
    assert r.misses == 0 and r.peak_held <= 9  # the new ENI holds no secondary address


def test_the_simulator_drives_the_agents_stepper_and_its_chore_schedule():
    # reconcile at 0 (0.1 s), the leaked-ENI GC (0.1 s); then a reconcile a minute after
    # each one ends: 60.1, 120.2, 180.3 (the next, 240.4, is past the end)
    sim_loops = []

    def loop(sim):
        sim_loops.append(underlay_loop(policy.decide, pe.underlay_targets())(sim))
        return sim_loops[-1]

    r = simulate("u", tiny(("a", 10.0, 150.0), duration=200.0), pe.sim_config(), loop)
    assert isinstance(sim_loops[0].stepper, PoolStepper)
    assert r.describes == 5 and "DescribeNetworkInterfaces" not in r.calls
