"""What fills an ENI's IPv4 address slots, over EC2: secondary IPs and /28 prefixes, each
assigned and unassigned in one call (AssignPrivateIpAddresses, UnassignPrivateIpAddresses).

Mixed into ``cloud.ec2.Ec2Cloud``, whose ``_call`` makes each request (timeouts, retries,
errors translated once) and whose ``describe_eni`` finds an ENI's subnet when EC2 refuses a
prefix without naming it. Bad input is refused before any request, naming the argument.
Neither assign call is idempotent: a retry after a lost answer may assign a second batch;
the agent's reconcile finds such addresses and prefixes on the ENI.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from cloud.ec2_errors import SubnetOf
from cloud.errors import CloudError, InvalidRequest
from cloud.types import Eni, EniId
from cloud.validate import require_count, require_id, require_ipv4, require_prefix

logger = logging.getLogger(__name__)

class EniAddressCalls:
    """assign_ips, unassign_ips, assign_prefixes, unassign_prefixes of the Cloud Protocol."""

    def _call(self, action: str, params: dict[str, Any], *, eni_id: str | None = None,
              subnet: str | SubnetOf | None = None) -> Any:
        raise NotImplementedError  # Ec2Cloud's

    def describe_eni(self, eni_id: EniId) -> Eni:
        raise NotImplementedError  # Ec2Cloud's

    def assign_ips(self, eni_id: EniId, count: int) -> tuple[str, ...]:
        """One AssignPrivateIpAddresses call for ``count`` secondary IPs; the new ones."""
        action = "AssignPrivateIpAddresses"
        require_id(eni_id, "eni-", "ENI id", action)
        require_count(count, 1, "count", action)
        response = self._call(
            action, {"NetworkInterfaceId": eni_id, "SecondaryPrivateIpAddressCount": count},
            eni_id=eni_id,
        )
        assigned = tuple(
            a["PrivateIpAddress"] for a in response.get("AssignedPrivateIpAddresses") or ()
        )
        logger.info("assigned %d IPs to %s: %s", len(assigned), eni_id, ", ".join(assigned))
        return assigned

    def unassign_ips(self, eni_id: EniId, ips: Sequence[str]) -> None:
        action = "UnassignPrivateIpAddresses"
        require_id(eni_id, "eni-", "ENI id", action)
        _require_list(ips, "ips", action)
        for ip in ips:
            require_ipv4(ip, action)
        self._call(action, {"NetworkInterfaceId": eni_id, "PrivateIpAddresses": list(ips)},
                   eni_id=eni_id)
        logger.info("unassigned %d IPs from %s: %s", len(ips), eni_id, ", ".join(ips))

    def assign_prefixes(self, eni_id: EniId, count: int) -> tuple[str, ...]:
        """One AssignPrivateIpAddresses call for ``count`` /28 prefixes; the new ones.
        InsufficientCidrBlocks is SubnetFragmented naming the ENI's subnet."""
        action = "AssignPrivateIpAddresses"
        require_id(eni_id, "eni-", "ENI id", action)
        require_count(count, 1, "count", action)
        response = self._call(action, {"NetworkInterfaceId": eni_id, "Ipv4PrefixCount": count},
                              eni_id=eni_id, subnet=lambda: self._subnet_of(eni_id))
        assigned = tuple(
            p["Ipv4Prefix"] for p in response.get("AssignedIpv4Prefixes") or ()
        )
        logger.info("assigned %d prefixes to %s: %s", len(assigned), eni_id,
                    ", ".join(assigned))
        return assigned

    def unassign_prefixes(self, eni_id: EniId, prefixes: Sequence[str]) -> None:
        action = "UnassignPrivateIpAddresses"
        require_id(eni_id, "eni-", "ENI id", action)
        _require_list(prefixes, "prefixes", action)
        canonical = [require_prefix(p, action) for p in prefixes]
        self._call(action, {"NetworkInterfaceId": eni_id, "Ipv4Prefixes": canonical},
                   eni_id=eni_id)
        logger.info("unassigned %d prefixes from %s: %s", len(canonical), eni_id,
                    ", ".join(canonical))

    def _subnet_of(self, eni_id: EniId) -> str | None:
        """The ENI's subnet, for an error to name; None if it cannot be found now."""
        try:
            return self.describe_eni(eni_id).subnet_id or None
        except CloudError as error:
            logger.info("could not find the subnet of %s to name it: %s", eni_id, error)
            return None


def _require_list(values: object, what: str, action: str) -> None:
    if isinstance(values, str) or not isinstance(values, (list, tuple)) or not values:
        raise InvalidRequest(f"{action}: {what} must be a non-empty list, got {values!r}",
                             action=action)
