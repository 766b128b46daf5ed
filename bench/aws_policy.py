"""AWS VPC CNI's pool arithmetic, as comparison policies over underlay's policy types, from
ipamd's documented behaviour and its source (``pkg/ipamd/ipamd.go``,
``pkg/ipamd/datastore/data_store.go``). Secondary-IP mode (``decide_pool``,
``decide_free_eni``):

- ``available = total - assigned``: addresses in cooldown count as available (its bug);
- WARM_IP_TARGET / MINIMUM_IP_TARGET set ("warm target defined"):
  ``short = max(warm - available, minimum - total, 0)``,
  ``over = max(min(available - warm, total - minimum), 0)``; too low when short > 0, too
  high when over > 0; an existing ENI gets ``min(room, short)`` addresses, a new ENI is
  created with ``min(short, per-ENI)`` (GetENIResourcesToAllocate);
- otherwise WARM_ENI_TARGET: too low when ``available < per-ENI * warm_enis`` (or nothing is
  available with a target of 0); an ENI with room is filled, else a new ENI is created full;
  the pool is never "too high", but an ENI is removed when
  ``available >= (warm_enis + 1) * per-ENI`` (shouldRemoveExtraENIs);
- an ENI may be removed only if it is not the primary, has no pod and no address in
  cooldown, is at least ``eni_min_age`` old, and (with warm targets) the other ENIs still
  cover WARM_IP_TARGET and MINIMUM_IP_TARGET (RemoveUnusedENIFromStore);
- shrinking frees only addresses that are neither assigned nor cooling (FindFreeableCidrs).

Prefix mode (ENABLE_PREFIX_DELEGATION=true, WARM_PREFIX_TARGET=1 as AWS's manifest sets
it, WARM_IP_TARGET and MINIMUM_IP_TARGET unset: ``decide_pool_prefix``,
``decide_free_eni_prefix``, ``PrefixTargets``): counts in addresses of /28 prefixes, cooling addresses available as
above, a prefix free when none of its addresses is assigned; see ``decide_pool_prefix``.
Which prefix a pod gets and which free prefix goes back is ipamd's datastore's (Go map
order), modelled by the simulated node (``bench.node_sim.Datastore.IPAMD``).

The loop around these (every 5 s; shrink at most every 30 s) is in ``bench.pool_loops``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ipam_daemon.policy import Action, Blocker, EniCounts, Kind, Limits, Targets, eni_ceiling

logger = logging.getLogger(__name__)


def warm_target_defined(targets: Targets) -> bool:
    return bool(targets.warm_ips or targets.min_ips)


def count_aws(enis: tuple[EniCounts, ...]) -> tuple[int, int]:
    """(total, available) as ipamd counts them: cooling addresses are available."""
    total = sum(e.total for e in enis)
    assigned = sum(e.assigned for e in enis)
    return total, total - assigned


def target_state(enis: tuple[EniCounts, ...], targets: Targets) -> tuple[int, int]:
    total, available = count_aws(enis)
    short = max(targets.warm_ips - available, targets.min_ips - total, 0)
    over = max(min(max(available - targets.warm_ips, 0), total - targets.min_ips), 0)
    return short, over


def decide_pool(enis: tuple[EniCounts, ...], targets: Targets, limits: Limits) -> Action:
    """One pass of updateIPPoolIfRequired without the ENI removal: grow or shrink."""
    per_eni = limits.secondary_per_eni
    total, available = count_aws(enis)
    if warm_target_defined(targets):
        short, over = target_state(enis, targets)
        if short:
            return _grow(enis, targets, limits, short, min(short, per_eni))
        if over:
            for eni in enis:  # FindFreeableCidrs over every ENI, in order
                if eni.free:
                    return Action(Kind.UNASSIGN, min(over, eni.free), eni.eni_id,
                                  f"aws: over by {over}")
        return Action(Kind.NOTHING, reason="aws: at warm IP target")
    too_low = available < per_eni * targets.warm_enis or (targets.warm_enis == 0
                                                          and available == 0)
    if too_low:
        return _grow(enis, targets, limits, per_eni, per_eni)
    return Action(Kind.NOTHING, reason="aws: pool not too low")


def _grow(enis, targets: Targets, limits: Limits, want: int, new_eni: int) -> Action:
    for eni in enis:  # GetENINeedsIP: the first ENI with room
        if eni.room:
            return Action(Kind.ASSIGN, min(eni.room, want), eni.eni_id, "aws: too low")
    ceiling = eni_ceiling(targets, limits)
    if len(enis) < ceiling:
        return Action(Kind.CREATE_ENI, new_eni, reason="aws: too low, ENIs full")
    return Action(Kind.NOTHING, reason="aws: ENI limit", blocker=Blocker.ENI_LIMIT)


def decide_free_eni(enis: tuple[EniCounts, ...], targets: Targets, limits: Limits) -> Action:
    """shouldRemoveExtraENIs + RemoveUnusedENIFromStore: at most one ENI per pass."""
    per_eni = limits.secondary_per_eni
    total, available = count_aws(enis)
    if not warm_target_defined(targets) and available < (targets.warm_enis + 1) * per_eni:
        return Action(Kind.NOTHING, reason="aws: no extra ENI")
    for eni in enis:
        if eni.is_primary or eni.assigned or eni.cooling or eni.releasing:
            continue
        if eni.age_seconds < targets.eni_min_age:
            continue
        others = [e for e in enis if e.eni_id != eni.eni_id]
        other_warm = sum(e.total - e.assigned for e in others)
        other_total = sum(e.total for e in others)
        if targets.warm_ips and other_warm < targets.warm_ips:
            continue
        if targets.min_ips and other_total < targets.min_ips:
            continue
        return Action(Kind.DELETE_ENI, eni_id=eni.eni_id, reason="aws: unused ENI")
    return Action(Kind.NOTHING, reason="aws: no removable ENI")


# ---- prefix delegation: ENABLE_PREFIX_DELEGATION=true, WARM_PREFIX_TARGET ------------------

@dataclass(frozen=True)
class PrefixTargets:
    """ipamd's knobs in prefix mode with WARM_IP_TARGET and MINIMUM_IP_TARGET unset (which
    would take precedence): AWS's manifest sets WARM_PREFIX_TARGET=1."""

    warm_prefixes: int = 1  # WARM_PREFIX_TARGET
    max_pods: int = 110  # the kubelet's maxPods: the pool is never "too low" once it holds this
    eni_min_age: float = 60.0  # minENILifeTime
    max_enis: int = 0  # MAX_ENI (0: the instance type's limit)


def prefix_stats(enis: tuple[EniCounts, ...]) -> tuple[int, int, int]:
    """(total, available, free prefixes) as ipamd counts them: cooling addresses are
    available, and a prefix none of whose addresses is assigned is free (GetFreePrefixes);
    the node reports those per ENI in ``giveable``."""
    total = sum(e.total for e in enis)
    return total, total - sum(e.assigned for e in enis), sum(e.giveable or 0 for e in enis)


def decide_pool_prefix(enis: tuple[EniCounts, ...], targets: PrefixTargets,
                       limits: Limits) -> Action:
    """One pass of updateIPPoolIfRequired in prefix mode, without the ENI removal:

    - too low (isDatastorePoolTooLow) when fewer than maxPods addresses are held and
      ``available < 16 x WARM_PREFIX_TARGET`` (or nothing is available with a target of 0);
      then ``max(1, WARM_PREFIX_TARGET - free prefixes)`` prefixes (getPrefixesNeeded) go to
      the first ENI with a free slot, as many as it has room for (tryAssignPrefixes), else to
      a new ENI (tryAllocateENI);
    - else too high (isDatastorePoolTooHigh) when more prefixes are free than the target:
      ``free prefixes - WARM_PREFIX_TARGET`` go back (computeExtraPrefixesOverWarmTarget),
      from each ENI in turn as many as it has free (tryUnassignCidrsFromAll); which ones is
      the datastore's choice (the node's: none of their addresses assigned).

    So with packed borrows exactly one prefix is kept with no address in use; when pods
    leave several prefixes partly used with 16 or more addresses free among them, ipamd
    neither grows nor gives anything back, and no prefix is wholly free."""
    total, available, free_prefixes = prefix_stats(enis)
    warm = targets.warm_prefixes
    too_low = total < targets.max_pods and (available < limits.unit * warm
                                            or (warm == 0 and available == 0))
    if too_low:
        want = max(1, warm - free_prefixes)
        for eni in enis:
            if eni.room >= limits.unit:
                return Action(Kind.ASSIGN, min(eni.room // limits.unit, want), eni.eni_id,
                              f"aws: {available} available < {limits.unit} x {warm}")
        ceiling = min(targets.max_enis or limits.max_enis, limits.max_enis)
        if len(enis) < ceiling:
            return Action(Kind.CREATE_ENI, min(want, limits.secondary_per_eni),
                          reason="aws: too low, ENIs full")
        return Action(Kind.NOTHING, reason="aws: ENI limit", blocker=Blocker.ENI_LIMIT)
    over = max(free_prefixes - warm, 0)
    for eni in enis:
        if over and eni.giveable:
            return Action(Kind.UNASSIGN, min(over, eni.giveable), eni.eni_id,
                          f"aws: {free_prefixes} free prefixes > {warm}")
    return Action(Kind.NOTHING, reason="aws: at warm prefix target")


def decide_free_eni_prefix(enis: tuple[EniCounts, ...], targets: PrefixTargets,
                           limits: Limits) -> Action:
    """shouldRemoveExtraENIs + RemoveUnusedENIFromStore in prefix mode: the pass looks for a
    deletable ENI whenever one exists (CheckFreeableENIexists); at most one per pass: not
    the primary, no pod, no address cooling, at least ``eni_min_age`` old, and the other
    ENIs still hold WARM_PREFIX_TARGET free prefixes (isRequiredForWarmPrefixTarget)."""
    for eni in enis:
        if eni.is_primary or eni.assigned or eni.cooling or eni.releasing:
            continue
        if eni.age_seconds < targets.eni_min_age:
            continue
        others_free = sum(e.giveable or 0 for e in enis if e.eni_id != eni.eni_id)
        if targets.warm_prefixes and others_free < targets.warm_prefixes:
            continue
        return Action(Kind.DELETE_ENI, eni_id=eni.eni_id, reason="aws: unused ENI")
    return Action(Kind.NOTHING, reason="aws: no removable ENI")
