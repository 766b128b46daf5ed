"""The pool stepper as tables: gates, back-off and the chore schedule at exact times on an
injected clock. No cloud, no kernel, no sleeping: ``now`` is a number the test passes."""
from __future__ import annotations

from dataclasses import replace

import pytest

from ipam_daemon.config import AgentConfig
from ipam_daemon.policy import Action, Blocker, Demand, EniCounts, Kind, Limits, Targets
from ipam_daemon.stepper import Chore, Failure, Gate, Intervals, PoolStepper

# the agent's defaults: pool 5, shrink 30, reconcile 60, GC 3600, subnet full 120, max 30
DEFAULTS = Intervals.from_config(AgentConfig())
# for the gates: chores so far apart that they never come first
QUIET = replace(DEFAULTS, reconcile=10_000.0, leaked_eni_gc=10_000.0)
M5L = Limits(max_enis=3, ips_per_eni=10)
P = "eni-p"

ASSIGN = Action(Kind.ASSIGN, 4, P, "short")
PREFILLED_ENI = Action(Kind.CREATE_ENI, 4, reason="ENIs full")
EMPTY_ENI_AHEAD = Action(Kind.CREATE_ENI, 0, reason="ahead")
UNASSIGN = Action(Kind.UNASSIGN, 4, P, "over")
DELETE_ENI = Action(Kind.DELETE_ENI, eni_id="eni-2", reason="idle")


def primary(free=0, assigned=0):
    return (EniCounts(P, 9, free=free, assigned=assigned, is_primary=True),)


def stepper_saying(action: Action, intervals: Intervals = QUIET) -> PoolStepper:
    """A stepper whose policy always answers ``action``, its chores done at 0 (no jitter
    in its back-off: waits at exact times)."""
    stepper = PoolStepper(Targets(), M5L, intervals, decide=lambda *_: action,
                          jitter=lambda _limit: 0.0)
    stepper.reconciled(0.0)
    stepper.start_leak_gc(0.0)
    return stepper


def test_intervals_come_from_the_agent_configuration():
    assert DEFAULTS == Intervals(pool=5.0, shrink=30.0, reconcile=60.0, leaked_eni_gc=3600.0,
                                 subnet_full_backoff=120.0, max_backoff=30.0)


# ---- the chore schedule -----------------------------------------------------------------

def test_reconcile_and_leaked_eni_gc_are_due_at_the_first_look():
    stepper = PoolStepper(Targets(), M5L, DEFAULTS)
    assert stepper.chores_due(0.0) == (Chore.RECONCILE, Chore.COLLECT_LEAKED_ENIS)


@pytest.mark.parametrize("now, due", [
    (59.9, ()),
    (60.0, (Chore.RECONCILE,)),
    (3599.9, (Chore.RECONCILE,)),
    (3600.0, (Chore.RECONCILE, Chore.COLLECT_LEAKED_ENIS)),
])
def test_chores_fall_due_on_their_intervals(now, due):
    assert stepper_saying(Action(Kind.NOTHING), DEFAULTS).chores_due(now) == due


def test_a_failed_chore_brings_the_reconcile_to_a_pool_interval_away():
    stepper = stepper_saying(Action(Kind.NOTHING), DEFAULTS)
    stepper.chore_failed(10.0)
    assert stepper.chores_due(14.9) == ()
    assert stepper.chores_due(15.0) == (Chore.RECONCILE,)


def test_the_gc_schedule_advances_when_it_starts_even_if_it_fails():
    stepper = stepper_saying(Action(Kind.NOTHING), DEFAULTS)
    stepper.start_leak_gc(3600.0)
    stepper.chore_failed(3600.0)
    assert stepper.chores_due(3605.0) == (Chore.RECONCILE,)
    assert stepper.chores_due(7200.0)[-1] is Chore.COLLECT_LEAKED_ENIS


def test_reconcile_soon_makes_the_reconcile_due_at_once():
    stepper = stepper_saying(Action(Kind.NOTHING), DEFAULTS)
    stepper.reconcile_soon(20.0)
    assert stepper.chores_due(20.0) == (Chore.RECONCILE,)


# ---- gates --------------------------------------------------------------------------------

def test_at_target_carries_the_policy_action_and_looks_again_a_pool_interval_later():
    full = Action(Kind.NOTHING, reason="ENI limit", blocker=Blocker.ENI_LIMIT)
    step = stepper_saying(full).step(10.0, primary())
    assert (step.go, step.gate, step.action, step.until) == (False, Gate.AT_TARGET, full, 15.0)


def test_a_gated_step_looks_again_by_the_next_chore():
    step = stepper_saying(Action(Kind.NOTHING), DEFAULTS).step(58.0, primary())
    assert step.until == 60.0  # the reconcile, before the pool interval (63)


def test_an_overdue_chore_means_look_again_now():
    stepper = stepper_saying(Action(Kind.NOTHING))
    stepper.reconcile_soon(20.0)
    assert stepper.step(21.0, primary()).until == 21.0


@pytest.mark.parametrize("action", [ASSIGN, PREFILLED_ENI, EMPTY_ENI_AHEAD])
def test_cordon_stops_growth(action):
    stepper = stepper_saying(action)
    step = stepper.step(10.0, primary(), cordoned=True)
    assert (step.gate, step.until) == (Gate.CORDONED, 15.0)
    assert stepper.step(11.0, primary(), cordoned=False).go


@pytest.mark.parametrize("action", [UNASSIGN, DELETE_ENI])
def test_cordon_lets_shrinking_go_on(action):
    assert stepper_saying(action).step(10.0, primary(), cordoned=True).go


@pytest.mark.parametrize("action", [UNASSIGN, DELETE_ENI])
def test_shrinks_are_a_shrink_interval_apart(action):
    stepper = stepper_saying(action)
    assert stepper.step(100.0, primary()).go  # the first: the interval starts here
    step = stepper.step(110.0, primary())
    assert (step.gate, step.until) == (Gate.SHRINK_INTERVAL, 115.0)  # pool interval first
    step = stepper.step(127.0, primary())
    assert (step.gate, step.until) == (Gate.SHRINK_INTERVAL, 130.0)  # the gate's end first
    assert stepper.step(130.0, primary()).go
    assert not stepper.step(131.0, primary()).go


def test_growth_is_not_held_by_the_shrink_interval():
    actions = iter([UNASSIGN, ASSIGN])
    stepper = PoolStepper(Targets(), M5L, DEFAULTS, decide=lambda *_: next(actions))
    assert stepper.step(100.0, primary()).go and stepper.step(101.0, primary()).go


def test_no_eni_ahead_for_a_subnet_full_backoff_after_the_subnet_could_not_spare_one():
    stepper = stepper_saying(EMPTY_ENI_AHEAD)
    stepper.pause_eni_ahead(200.0)
    step = stepper.step(210.0, primary())
    assert (step.gate, step.until) == (Gate.NO_ENI_AHEAD, 215.0)
    step = stepper.step(318.0, primary())
    assert (step.gate, step.until) == (Gate.NO_ENI_AHEAD, 320.0)
    assert stepper.step(320.0, primary()).go


def test_the_no_ahead_pause_does_not_hold_back_an_eni_a_shortfall_needs():
    stepper = stepper_saying(PREFILLED_ENI)
    stepper.pause_eni_ahead(200.0)
    assert stepper.step(210.0, primary()).go


# ---- back-off after a failure -------------------------------------------------------------

@pytest.mark.parametrize("kind, wait, reconcile_now", [
    (Failure.SUBNET_FULL, 120.0, False),
    (Failure.ENI_LIMIT, 120.0, True),
    (Failure.IP_LIMIT, 5.0, True),
    (Failure.PERMISSION_DENIED, 30.0, False),
    (Failure.RETRYABLE, 5.0, False),
    (Failure.OTHER, 5.0, True),
])
def test_back_off_by_failure_kind(kind, wait, reconcile_now):
    stepper = stepper_saying(ASSIGN)
    assert stepper.step(1000.0, primary()).go
    assert stepper.failed(1000.0, kind) == wait
    assert (Chore.RECONCILE in stepper.chores_due(1000.0)) is reconcile_now
    stepper.reconciled(1000.0)  # the loop does the chore
    before = stepper.step(1000.0 + wait - 0.5, primary())
    assert (before.gate, before.action.kind) == (Gate.BACKOFF, Kind.NOTHING)
    assert before.until == 1000.0 + wait
    assert stepper.step(1000.0 + wait, primary()).go


def test_retryable_failures_double_the_wait_up_to_max_backoff_and_a_success_resets_it():
    stepper = stepper_saying(ASSIGN)
    waits = [stepper.failed(float(t), Failure.RETRYABLE) for t in range(5)]
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0]
    stepper.succeeded()
    assert stepper.failed(10.0, Failure.RETRYABLE) == 5.0


def test_a_retryable_wait_is_jittered_within_a_pool_interval():
    """Nodes throttled together do not retry in step: the doubling base plus up to one
    pool interval drawn at random, never past max_backoff."""
    waits = []
    for _ in range(30):
        stepper = PoolStepper(Targets(), M5L, DEFAULTS, decide=lambda *_: ASSIGN)
        waits.append(stepper.failed(0.0, Failure.RETRYABLE))
    assert all(5.0 <= w <= 10.0 for w in waits) and len(set(waits)) > 1
    stepper = PoolStepper(Targets(), M5L, DEFAULTS, decide=lambda *_: ASSIGN)
    assert all(stepper.failed(float(t), Failure.RETRYABLE) <= 30.0 for t in range(8))


def test_another_kind_of_failure_does_not_reset_the_retryable_wait():
    stepper = stepper_saying(ASSIGN)
    stepper.failed(0.0, Failure.RETRYABLE)
    stepper.failed(1.0, Failure.SUBNET_FULL)
    assert stepper.failed(2.0, Failure.RETRYABLE) == 10.0


def test_the_policy_is_not_asked_while_backing_off():
    asked = []
    stepper = PoolStepper(Targets(), M5L, DEFAULTS,
                          decide=lambda *args: asked.append(args) or ASSIGN)
    stepper.failed(0.0, Failure.SUBNET_FULL)
    stepper.step(60.0, primary())
    assert not asked


# ---- demand -------------------------------------------------------------------------------

def recording_stepper(targets: Targets = Targets()) -> tuple[PoolStepper, list[Demand]]:
    demands: list[Demand] = []

    def decide(enis, targets, limits, demand):
        demands.append(demand)
        return Action(Kind.NOTHING)
    return PoolStepper(targets, M5L, DEFAULTS, decide=decide), demands


def test_waiting_borrows_are_demand():
    stepper, demands = recording_stepper()
    stepper.step(0.0, primary(assigned=3), waiting=2)
    assert demands[-1].waiting == 2


def test_the_peak_of_the_last_eni_min_age_is_remembered():
    stepper, demands = recording_stepper(Targets(eni_min_age=100.0))
    for now, assigned in ((0.0, 2), (10.0, 7), (50.0, 1), (110.0, 1), (111.0, 0)):
        stepper.step(now, primary(assigned=assigned))
    assert [d.peak for d in demands] == [2, 7, 7, 7, 1]  # 7 at 10 s is gone at 111 s


def test_new_targets_change_the_demand_window():
    stepper, demands = recording_stepper(Targets(eni_min_age=100.0))
    stepper.step(0.0, primary(assigned=5))
    stepper.configure(Targets(eni_min_age=10.0), DEFAULTS)
    stepper.step(20.0, primary(assigned=1))
    assert demands[-1].peak == 1


def test_the_shipped_policy_is_the_default():
    # a fresh node, warm 2 batch 4: the real ``decide`` asks for one batch on the primary
    step = PoolStepper(Targets(), M5L, DEFAULTS).step(0.0, primary())
    assert step.go and (step.action.kind, step.action.count, step.action.eni_id) == \
        (Kind.ASSIGN, 4, P)
