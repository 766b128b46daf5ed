"""Which ENIs count as leaked: a pure decision over ENIs already fetched from the cloud.

An ENI is leaked only when every one of these holds, checked here even though the
DescribeNetworkInterfaces filter asked for the same (never act on a filter we did not
verify: an endpoint that ignores a filter must not make us delete other people's ENIs):
- it carries our cluster tag with exactly our cluster's name;
- it is ``available`` (attached to nothing);
- its created-at tag is a timezone-aware ISO-8601 time at least ``older_than`` ago.
Untagged ENIs, other clusters' ENIs, and ENIs without a readable created-at never qualify.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from cloud.types import TAG_CLUSTER, Eni

logger = logging.getLogger(__name__)


def select_leaked_enis(
    enis: Iterable[Eni], cluster: str, older_than: timedelta, now: datetime
) -> list[Eni]:
    """The leaked ENIs among ``enis``, sorted by id. ``now`` must be timezone-aware."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if not cluster:
        raise ValueError("cluster must not be empty")
    cutoff = now - older_than
    leaked = []
    for eni in enis:
        if eni.tag(TAG_CLUSTER) != cluster or eni.status != "available":
            continue
        created = eni.created_at
        if created is None or created.tzinfo is None or created > cutoff:
            continue
        leaked.append(eni)
    return sorted(leaked, key=lambda e: e.id)
