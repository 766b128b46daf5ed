"""The ``Cloud`` Protocol over boto3's EC2 client.

Every request has explicit connect and read timeouts; botocore's own retries are off and
retries happen here (``cloud.retry``: backoff with full jitter, bounded attempts and
time). Every failure is translated once (``cloud.ec2_errors.translate_error``) and every
attempt is reported to ``on_call(action, outcome, seconds)`` with outcome "ok" or the error
code and the attempt's duration, so the agent can count cloud calls, errors and latency. Credentials come from boto3's standard
chain and are never logged.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from cloud.ec2_addresses import EniAddressCalls
from cloud.ec2_errors import SubnetOf, outcome_of, translate_error
from cloud.ec2_parse import (
    parse_eni,
    parse_instance,
    parse_limits,
    parse_route_table,
    parse_subnet,
)
from cloud.errors import CloudError, InvalidRequest, NotFound
from cloud.leaks import select_leaked_enis
from cloud.retry import RetryPolicy, run_with_retries
from cloud.validate import require_cidr, require_count, require_id, require_ids
from cloud.types import (
    TAG_CLUSTER,
    TAG_CREATED_AT,
    TAG_NODE,
    Eni,
    EniId,
    Instance,
    InstanceId,
    InstanceLimits,
    RouteTable,
    RouteTableId,
    Subnet,
    SubnetId,
)

logger = logging.getLogger(__name__)

OnCall = Callable[[str, str, float], None]


class Ec2Cloud(EniAddressCalls):
    """EC2 through boto3. Thread-safe: boto3 clients are, and the caches are locked.
    The calls that fill and empty an ENI's address slots (IPs and prefixes) are in
    ``cloud.ec2_addresses``."""

    def __init__(
        self,
        region: str,
        *,
        endpoint_url: str | None = None,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        retry_attempts: int = 5,
        retry_base_delay: float = 0.25,
        retry_max_delay: float = 8.0,
        retry_deadline: float = 30.0,
        not_found_window: float = 10.0,
        on_call: OnCall | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        if not region:
            raise ValueError("region must not be empty")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError(
                f"timeouts must be > 0 (connect_timeout={connect_timeout}, "
                f"read_timeout={read_timeout})"
            )
        self.region = region
        self.policy = RetryPolicy(
            attempts=retry_attempts,
            base_delay=retry_base_delay,
            max_delay=retry_max_delay,
            deadline=retry_deadline,
            not_found_window=not_found_window,
        )
        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        self._client = (session or boto3.session.Session()).client(
            "ec2", region_name=region, endpoint_url=endpoint_url, config=config
        )
        self._on_call = on_call
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._limits: dict[str, InstanceLimits] = {}
        self._created: dict[str, float] = {}  # ENI id -> monotonic time of creation

    def close(self) -> None:
        """Wake any retry wait and refuse further calls."""
        self._stop.set()

    # -- the one way a request is made -------------------------------------------------

    def _call(self, action: str, params: dict[str, Any], *, eni_id: str | None = None,
              subnet: str | SubnetOf | None = None) -> Any:
        method = getattr(self._client, _snake(action))

        def attempt() -> Any:
            started = time.monotonic()
            try:
                response = method(**params)
            except (ClientError, BotoCoreError) as exc:  # translated here, in one place
                error = translate_error(exc, action, subnet=subnet)
                self._report(action, outcome_of(error), time.monotonic() - started)
                raise error from None
            self._report(action, "ok", time.monotonic() - started)
            return response

        def fresh_not_found(error: CloudError) -> bool:
            return isinstance(error, NotFound) and eni_id is not None and self._is_fresh(eni_id)

        return run_with_retries(
            attempt, self.policy, action=action, stop=self._stop, also_retry=fresh_not_found
        )

    def _report(self, action: str, outcome: str, seconds: float) -> None:
        if self._on_call is None:
            return
        try:
            self._on_call(action, outcome, seconds)
        except Exception:  # noqa: BLE001 - metrics must never break a cloud call
            logger.exception("on_call callback failed for %s", action)

    def _is_fresh(self, eni_id: str) -> bool:
        with self._lock:
            created = self._created.get(eni_id)
        return created is not None and time.monotonic() - created < self.policy.not_found_window

    def _paginate(self, action: str, params: dict[str, Any], key: str) -> list[dict]:
        items: list[dict] = []
        token: str | None = None
        while True:
            page = self._call(action, {**params, **({"NextToken": token} if token else {})})
            items.extend(page.get(key) or [])
            token = page.get("NextToken")
            if not token:
                return items

    # -- instances, limits, subnets ----------------------------------------------------

    def describe_instance(self, instance_id: InstanceId) -> Instance:
        require_id(instance_id, "i-", "instance id", "DescribeInstances")
        page = self._call("DescribeInstances", {"InstanceIds": [instance_id]})
        for reservation in page.get("Reservations") or ():
            for doc in reservation.get("Instances") or ():
                if doc.get("InstanceId") == instance_id:
                    return parse_instance(doc)
        raise NotFound(
            f"DescribeInstances: instance {instance_id} not found",
            code="InvalidInstanceID.NotFound",
            action="DescribeInstances",
        )

    def instance_limits(self, instance_type: str) -> InstanceLimits:
        with self._lock:
            cached = self._limits.get(instance_type)
        if cached is not None:
            return cached
        if not instance_type:
            raise InvalidRequest(
                "DescribeInstanceTypes: instance type must not be empty",
                action="DescribeInstanceTypes",
            )
        page = self._call("DescribeInstanceTypes", {"InstanceTypes": [instance_type]})
        docs = [d for d in page.get("InstanceTypes") or () if d.get("InstanceType") == instance_type]
        if not docs:
            raise NotFound(
                f"DescribeInstanceTypes: instance type {instance_type!r} not found",
                code="InvalidInstanceType",
                action="DescribeInstanceTypes",
            )
        limits = parse_limits(docs[0])
        with self._lock:
            self._limits[instance_type] = limits
        return limits

    def describe_subnets(self, subnet_ids: Sequence[SubnetId]) -> list[Subnet]:
        ids = require_ids(subnet_ids, "subnet-", "subnet id", "DescribeSubnets")
        docs = self._paginate("DescribeSubnets", {"SubnetIds": ids}, "Subnets")
        return [parse_subnet(d) for d in docs]

    # -- ENIs --------------------------------------------------------------------------

    def list_enis(self, instance_id: InstanceId) -> list[Eni]:
        # Filter by instance only: EC2 accepts attachment.device-index, but it is no help
        # here and some emulations fail on it. Sort locally instead.
        require_id(instance_id, "i-", "instance id", "DescribeNetworkInterfaces")
        docs = self._paginate(
            "DescribeNetworkInterfaces",
            {"Filters": [{"Name": "attachment.instance-id", "Values": [instance_id]}]},
            "NetworkInterfaces",
        )
        enis = [parse_eni(d) for d in docs]
        enis = [e for e in enis if e.instance_id == instance_id]
        return sorted(enis, key=lambda e: (e.device_index is None, e.device_index or 0, e.id))

    def describe_eni(self, eni_id: EniId) -> Eni:
        require_id(eni_id, "eni-", "ENI id", "DescribeNetworkInterfaces")
        page = self._call(
            "DescribeNetworkInterfaces", {"NetworkInterfaceIds": [eni_id]}, eni_id=eni_id
        )
        for doc in page.get("NetworkInterfaces") or ():
            if doc.get("NetworkInterfaceId") == eni_id:
                return parse_eni(doc)
        raise NotFound(
            f"DescribeNetworkInterfaces: ENI {eni_id} not found",
            code="InvalidNetworkInterfaceID.NotFound",
            action="DescribeNetworkInterfaces",
        )

    def create_eni(
        self,
        subnet_id: SubnetId,
        security_groups: Sequence[str],
        secondary_ips: int,
        *,
        cluster: str,
        node: str,
        prefix_count: int = 0,
    ) -> Eni:
        action = "CreateNetworkInterface"
        require_id(subnet_id, "subnet-", "subnet id", action)
        groups = require_ids(security_groups, "sg-", "security group id", action,
                             allow_empty=True)
        require_count(secondary_ips, 0, "secondary_ips", action)
        require_count(prefix_count, 0, "prefix_count", action)
        if secondary_ips and prefix_count:
            raise InvalidRequest(
                f"{action}: an ENI is pre-filled with secondary IPs or with prefixes, not "
                f"both (secondary_ips={secondary_ips}, prefix_count={prefix_count})",
                action=action,
            )
        if not cluster or not node:
            raise InvalidRequest(
                f"{action}: cluster and node must be non-empty (got {cluster!r}, {node!r})",
                action=action,
            )
        created_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        params: dict[str, Any] = {
            "SubnetId": subnet_id,
            "Description": f"underlay ENI of node {node} in cluster {cluster}",
            "ClientToken": uuid.uuid4().hex,  # the same across retries: no duplicate ENI
            "TagSpecifications": [
                {
                    "ResourceType": "network-interface",
                    "Tags": [
                        {"Key": TAG_CLUSTER, "Value": cluster},
                        {"Key": TAG_NODE, "Value": node},
                        {"Key": TAG_CREATED_AT, "Value": created_at},
                    ],
                }
            ],
        }
        if groups:  # none: EC2 uses the VPC's default security group
            params["Groups"] = groups
        if secondary_ips:
            params["SecondaryPrivateIpAddressCount"] = secondary_ips
        if prefix_count:
            params["Ipv4PrefixCount"] = prefix_count
        eni = parse_eni(self._call(action, params, subnet=subnet_id)["NetworkInterface"])
        with self._lock:
            now = time.monotonic()
            horizon = now - self.policy.not_found_window
            self._created = {k: t for k, t in self._created.items() if t > horizon}
            self._created[eni.id] = now
        logger.info(
            "created ENI %s in %s with %d secondary IPs and %d prefixes for node %s",
            eni.id, subnet_id, len(eni.secondary_ips), len(eni.prefixes), node,
        )
        return eni

    def attach_eni(self, eni_id: EniId, instance_id: InstanceId, device_index: int) -> str:
        action = "AttachNetworkInterface"
        require_id(eni_id, "eni-", "ENI id", action)
        require_id(instance_id, "i-", "instance id", action)
        require_count(device_index, 1, "device_index (0 is the primary ENI)", action)
        response = self._call(
            action,
            {"NetworkInterfaceId": eni_id, "InstanceId": instance_id, "DeviceIndex": device_index},
            eni_id=eni_id,
        )
        attachment_id = response["AttachmentId"]
        self._call(
            "ModifyNetworkInterfaceAttribute",
            {
                "NetworkInterfaceId": eni_id,
                "Attachment": {"AttachmentId": attachment_id, "DeleteOnTermination": True},
            },
            eni_id=eni_id,
        )
        logger.info("attached ENI %s to %s at device index %d (%s)", eni_id, instance_id,
                    device_index, attachment_id)
        return attachment_id

    def detach_eni(self, attachment_id: str, *, force: bool = False) -> None:
        require_id(attachment_id, "eni-attach-", "attachment id", "DetachNetworkInterface")
        self._call("DetachNetworkInterface", {"AttachmentId": attachment_id, "Force": force})
        logger.info("detached %s%s", attachment_id, " (forced)" if force else "")

    def delete_eni(self, eni_id: EniId) -> None:
        require_id(eni_id, "eni-", "ENI id", "DeleteNetworkInterface")
        self._call("DeleteNetworkInterface", {"NetworkInterfaceId": eni_id}, eni_id=eni_id)
        with self._lock:
            self._created.pop(eni_id, None)  # gone for good: NotFound is no longer a lag
        logger.info("deleted ENI %s", eni_id)

    def list_leaked_enis(self, cluster: str, older_than_seconds: float) -> list[Eni]:
        action = "DescribeNetworkInterfaces"
        if not cluster:
            raise InvalidRequest(f"{action}: cluster must not be empty", action=action)
        if older_than_seconds < 0:
            raise InvalidRequest(
                f"{action}: older_than_seconds must be >= 0, got {older_than_seconds}",
                action=action,
            )
        docs = self._paginate(
            action,
            {
                "Filters": [
                    {"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster]},
                    {"Name": "status", "Values": ["available"]},
                ]
            },
            "NetworkInterfaces",
        )
        return select_leaked_enis(
            map(parse_eni, docs),
            cluster,
            timedelta(seconds=older_than_seconds),
            datetime.now(timezone.utc),
        )

    def set_source_dest_check(self, eni_id: EniId, enabled: bool) -> None:
        require_id(eni_id, "eni-", "ENI id", "ModifyNetworkInterfaceAttribute")
        self._call(
            "ModifyNetworkInterfaceAttribute",
            {"NetworkInterfaceId": eni_id, "SourceDestCheck": {"Value": bool(enabled)}},
            eni_id=eni_id,
        )
        logger.info("source/dest check of %s set to %s", eni_id, bool(enabled))

    # -- route tables ------------------------------------------------------------------

    def describe_route_tables(self, vpc_id: str) -> list[RouteTable]:
        require_id(vpc_id, "vpc-", "VPC id", "DescribeRouteTables")
        docs = self._paginate(
            "DescribeRouteTables",
            {"Filters": [{"Name": "vpc-id", "Values": [vpc_id]}]},
            "RouteTables",
        )
        return sorted((parse_route_table(d) for d in docs), key=lambda t: t.id)

    def create_route(self, table_id: RouteTableId, cidr: str, eni_id: EniId) -> None:
        self._route("CreateRoute", table_id, cidr, eni_id)

    def replace_route(self, table_id: RouteTableId, cidr: str, eni_id: EniId) -> None:
        self._route("ReplaceRoute", table_id, cidr, eni_id)

    def delete_route(self, table_id: RouteTableId, cidr: str) -> None:
        self._route("DeleteRoute", table_id, cidr, None)

    def _route(self, action: str, table_id: str, cidr: str, eni_id: str | None) -> None:
        require_id(table_id, "rtb-", "route table id", action)
        network = require_cidr(cidr, action)
        params: dict[str, Any] = {"RouteTableId": table_id, "DestinationCidrBlock": network}
        if eni_id is not None:
            require_id(eni_id, "eni-", "ENI id", action)
            params["NetworkInterfaceId"] = eni_id
        self._call(action, params)
        logger.info("%s %s in %s%s", action, network, table_id, f" -> {eni_id}" if eni_id else "")


def _snake(action: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in action).lstrip("_")
