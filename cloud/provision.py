"""Bring an ENI to a node and take it away again, with structural rollback.

``provision_eni`` creates an ENI pre-filled with secondary IPs or /28 prefixes (one call),
attaches it at
the lowest free device index (moving on to the next index when another attach took it
first), and deletes the new ENI again if it cannot be attached, so no orphan is left.
``release_eni`` detaches, waits (bounded) until the ENI is ``available``, and deletes it.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from cloud.api import Cloud
from cloud.errors import CloudError, EniLimitReached, InUse, InvalidRequest, NotFound
from cloud.types import Eni, EniId, Instance, InstanceLimits, SubnetId

logger = logging.getLogger(__name__)


def provision_eni(
    cloud: Cloud,
    instance: Instance,
    limits: InstanceLimits,
    subnet_id: SubnetId,
    security_groups: Sequence[str],
    secondary_ips: int,
    cluster: str,
    node: str,
    *,
    prefix_count: int = 0,
) -> Eni:
    """A new ENI with ``secondary_ips`` secondary IPs, or instead ``prefix_count`` /28
    prefixes (each in one of the slots a secondary IP would take), attached to ``instance``.

    Raises ``EniLimitReached`` without creating anything when the instance already holds
    ``limits.max_enis`` ENIs; any failure after the create deletes the new ENI again. A
    refused create (``SubnetFragmented`` when no aligned /28 is free) leaves nothing.
    """
    for what, count in (("secondary_ips", secondary_ips), ("prefix_count", prefix_count)):
        if isinstance(count, bool) or not isinstance(count, int) \
                or not 0 <= count <= limits.secondary_ips_per_eni:
            raise InvalidRequest(
                f"provision_eni: {what} must be between 0 and "
                f"{limits.secondary_ips_per_eni} for {limits.instance_type}, got {count!r}"
            )
    if secondary_ips and prefix_count:
        raise InvalidRequest(
            f"provision_eni: pre-fill with secondary IPs or with prefixes, not both "
            f"(secondary_ips={secondary_ips}, prefix_count={prefix_count})"
        )
    taken = {e.device_index for e in cloud.list_enis(instance.id) if e.device_index is not None}
    index = _lowest_free_index(taken, limits)
    if index is None:
        raise EniLimitReached(
            f"provision_eni: {instance.id} ({limits.instance_type}) already holds "
            f"{limits.max_enis} ENIs",
            code="AttachmentLimitExceeded",
            action="AttachNetworkInterface",
        )
    with contextlib.ExitStack() as undo:
        eni = cloud.create_eni(
            subnet_id, security_groups, secondary_ips, cluster=cluster, node=node,
            prefix_count=prefix_count,
        )
        undo.callback(_discard_eni, cloud, eni.id)
        while True:
            try:
                cloud.attach_eni(eni.id, instance.id, index)
                break
            except InUse as error:
                if error.code == "InvalidNetworkInterface.InUse":
                    # The ENI itself is attached: a retried attach whose first answer
                    # was lost. Fine if it is attached here; anything else is an error.
                    current = cloud.describe_eni(eni.id)
                    if current.instance_id != instance.id or current.device_index is None:
                        raise
                    index = current.device_index
                    break
                # Another attach took this index between our listing and our call.
                logger.info("device index %d on %s is taken; trying the next one",
                            index, instance.id)
                taken.add(index)
                index = _lowest_free_index(taken, limits)
                if index is None:
                    raise EniLimitReached(
                        f"provision_eni: no free device index left on {instance.id} "
                        f"({limits.instance_type}, {limits.max_enis} ENIs)",
                        code="AttachmentLimitExceeded",
                        action="AttachNetworkInterface",
                    ) from None
        attached = cloud.describe_eni(eni.id)
        undo.pop_all()
    logger.info("provisioned ENI %s on %s at device index %d with %d secondary IPs and %d "
                "prefixes", eni.id, instance.id, index, len(attached.secondary_ips),
                len(attached.prefixes))
    return attached


def release_eni(
    cloud: Cloud,
    eni: Eni,
    *,
    timeout: float = 60.0,
    poll_interval: float = 0.5,
    stop: threading.Event | None = None,
) -> None:
    """Detach ``eni`` (if attached), wait until it is ``available``, delete it.
    An ENI that is already gone counts as released. Never touches device index 0."""
    if eni.device_index == 0:
        raise InvalidRequest(f"release_eni: {eni.id} is the instance's primary ENI")
    try:
        current = cloud.describe_eni(eni.id)
        if current.device_index == 0:
            raise InvalidRequest(f"release_eni: {eni.id} is the instance's primary ENI")
        if current.attachment_id is not None and current.status != "detaching":
            cloud.detach_eni(current.attachment_id)
        if current.status != "available":
            _wait_until_available(cloud, eni.id, timeout, poll_interval, stop or threading.Event())
        cloud.delete_eni(eni.id)
    except NotFound:
        logger.info("ENI %s is already gone", eni.id)
        return
    logger.info("released ENI %s", eni.id)


def _lowest_free_index(taken: set[int], limits: InstanceLimits) -> int | None:
    return next((i for i in range(1, limits.max_enis) if i not in taken), None)


def _wait_until_available(
    cloud: Cloud, eni_id: EniId, timeout: float, poll_interval: float, stop: threading.Event
) -> None:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = cloud.describe_eni(eni_id).status
        if status == "available":
            return
        if stop.wait(min(poll_interval, max(0.0, deadline - time.monotonic()))):
            break
    raise InUse(
        f"release_eni: ENI {eni_id} is still {status or 'not available'} after detaching "
        f"(waited up to {timeout:g}s)",
        action="DetachNetworkInterface",
    )


def _discard_eni(cloud: Cloud, eni_id: EniId) -> None:
    """Rollback step: remove an ENI we created but could not attach. Never raises, so
    the error that caused the rollback is the one the caller sees."""
    try:
        current = cloud.describe_eni(eni_id)
        if current.attachment_id is not None or current.status != "available":
            release_eni(cloud, current, timeout=30.0)
        else:
            cloud.delete_eni(eni_id)
        logger.info("rolled back: deleted ENI %s that could not be attached", eni_id)
    except NotFound:
        pass
    except CloudError as error:
        logger.error("rollback failed: ENI %s may be left over (%s); leaked-ENI GC will "
                     "find it", eni_id, error)
