"""AWS VPC CNI's pool arithmetic (secondary-IP mode, no prefix delegation), as a comparison
policy over underlay's policy types, from ipamd's documented behaviour and its source
(``pkg/ipamd/ipamd.go``, ``pkg/ipamd/datastore/data_store.go``):

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

``ipam_daemon.policy.decide_aws`` is the agent's own comparison function; it differs in
three ways, so the bench uses this one: it creates ENIs full even with a warm IP target,
its WARM_ENI_TARGET mode counts whole idle ENIs instead of available addresses, and it has
no separate ENI-removal pass with the warm/minimum checks.

The loop around these (every 5 s; shrink at most every 30 s) is in ``bench.node_sim``.
"""
from __future__ import annotations

import logging

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
