"""EC2's rules that moto does not enforce, checked against moto's state before a call is
passed on. Each ``check_*`` either refuses (raises Refusal, nothing changes) or returns a
Verdict: the request to hand moto instead (addresses chosen here), a step to run just
before moto (under the same lock), and a rewrite of moto's successful answer.

Choices where EC2's exact behaviour is not documented:
- an ENI holding more IPv4 addresses than the instance type allows per ENI cannot be
  attached: AttachmentLimitExceeded (naming the address count and the type's limit);
- unattached ENIs are limited only by their subnet's free addresses;
- prefix delegation (Ipv4Prefix*) is refused with InvalidParameterValue;
- RunInstances into a subnet launches one instance per call (MaxCount 1) and takes
  SubnetId/PrivateIpAddress, not NetworkInterface specifications.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any, Callable

from lab.ec2.addresses import AddressAllocator, allocate_free, check_requested, used_addresses
from lab.ec2.describe import check_describe_network_interfaces
from lab.ec2.limits import limits_for
from lab.ec2.snapshot import eni_addresses, iterate_instances, iterate_subnets
from lab.ec2.wire import ApiRequest, Refusal, result_xml

logger = logging.getLogger(__name__)

__all__ = ["AddressAllocator", "RuleContext", "Verdict", "check_request"]


@dataclass(frozen=True)
class Verdict:
    params: list[tuple[str, str]] | None = None  # the request moto gets instead
    before: Callable[[], None] | None = None  # runs under the lock just before moto
    after: Callable[[bytes], bytes] | None = None  # rewrites moto's successful answer


@dataclass(frozen=True)
class RuleContext:
    backend: Any
    allocator: AddressAllocator
    route_table_limit: int


def check_request(request: ApiRequest, context: RuleContext) -> Verdict:
    handler = HANDLERS.get(request.action)
    return handler(request, context) if handler else Verdict()


# --- lookups that answer EC2's NotFound errors -------------------------------------------

def require(request: ApiRequest, name: str) -> str:
    value = request.get(name)
    if not value:
        raise Refusal("MissingParameter", f"The request must contain the parameter {name}")
    return value


def find_eni(context: RuleContext, eni_id: str) -> Any:
    eni = context.backend.enis.get(eni_id)
    if eni is None:
        raise Refusal("InvalidNetworkInterfaceID.NotFound",
                      f"The networkInterface ID '{eni_id}' does not exist")
    return eni


def find_instance(context: RuleContext, instance_id: str) -> Any:
    for instance in iterate_instances(context.backend):
        if instance.id == instance_id:
            return instance
    raise Refusal("InvalidInstanceID.NotFound", f"The instance ID '{instance_id}' does not exist")


def find_subnet(context: RuleContext, subnet_id: str) -> Any:
    for subnet in iterate_subnets(context.backend):
        if subnet.id == subnet_id:
            return subnet
    raise Refusal("InvalidSubnetID.NotFound", f"The subnet ID '{subnet_id}' does not exist")


def parse_count(request: ApiRequest, name: str) -> int:
    raw = request.get(name)
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise Refusal("InvalidParameterValue", f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise Refusal("InvalidParameterValue", f"{name} must be >= 0, got {value}")
    return value


def reject_prefixes(request: ApiRequest) -> None:
    if any(key.startswith("Ipv4Prefix") for key, _ in request.params):
        raise Refusal("InvalidParameterValue", "prefix delegation is not supported by the emulator")


# --- ENIs and their addresses --------------------------------------------------------------

def check_create_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    subnet = find_subnet(context, require(request, "SubnetId"))
    reject_prefixes(request)
    listed = request.members("PrivateIpAddresses")
    flagged = [m.get("PrivateIpAddress") for m in listed if m.get("Primary") == "true"]
    if len(flagged) > 1:
        raise Refusal("InvalidParameterValue", "Only one primary private IP address is allowed")
    primary = request.get("PrivateIpAddress") or (flagged[0] if flagged else None)
    explicit = [primary] if primary else []
    explicit += [m["PrivateIpAddress"] for m in listed
                 if m.get("PrivateIpAddress") and m["PrivateIpAddress"] != primary]
    count = parse_count(request, "SecondaryPrivateIpAddressCount")
    used = used_addresses(context.backend, subnet.id)
    check_requested(subnet.cidr_block, subnet.id, explicit, used)
    new = allocate_free(context.allocator, subnet, count + (0 if primary else 1),
                        used | set(explicit))
    if not primary:
        primary = new.pop(0)
    secondaries = [a for a in explicit if a != primary] + new
    params = request.without("PrivateIpAddress", "PrivateIpAddresses",
                             "SecondaryPrivateIpAddressCount")
    params.append(("PrivateIpAddress", primary))
    for index, address in enumerate([primary] + secondaries, start=1):
        params.append((f"PrivateIpAddresses.{index}.PrivateIpAddress", address))
        params.append((f"PrivateIpAddresses.{index}.Primary", "true" if index == 1 else "false"))
    return Verdict(params=params)


def check_assign_private_ip_addresses(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    reject_prefixes(request)
    explicit = request.indexed("PrivateIpAddress")
    count = parse_count(request, "SecondaryPrivateIpAddressCount")
    if explicit and count:
        raise Refusal("InvalidParameterCombination",
                      "Specify either PrivateIpAddresses or SecondaryPrivateIpAddressCount, not both")
    if not explicit and not count:
        raise Refusal("MissingParameter",
                      "Either PrivateIpAddresses or SecondaryPrivateIpAddressCount must be given")
    wanted = len(explicit) or count
    current = eni_addresses(eni)
    if eni.instance is not None:
        limits = limits_for(eni.instance.instance_type)
        if len(current) + wanted > limits.ips_per_eni:
            raise Refusal(
                "PrivateIpAddressLimitExceeded",
                f"Number of private addresses will exceed limit: {eni.id} holds {len(current)}, "
                f"{wanted} requested, {limits.instance_type} allows {limits.ips_per_eni} per "
                "interface (primary included).",
            )
    used = used_addresses(context.backend, eni.subnet.id)
    movable = {}
    if request.get("AllowReassignment") == "true":
        movable = secondary_holders(context, eni, explicit)
    check_requested(eni.subnet.cidr_block, eni.subnet.id, explicit, used - set(movable))
    new = explicit or allocate_free(context.allocator, eni.subnet, count, used)
    params = request.without("PrivateIpAddress", "SecondaryPrivateIpAddressCount",
                             "AllowReassignment")
    params += [(f"PrivateIpAddress.{i}", a) for i, a in enumerate(new, start=1)]

    def move_reassigned() -> None:
        for address, holder in movable.items():
            holder.private_ip_addresses = [a for a in holder.private_ip_addresses
                                           if a["PrivateIpAddress"] != address]

    def answer_new_only(_: bytes) -> bytes:
        items = "".join(f"<item><privateIpAddress>{a}</privateIpAddress></item>" for a in new)
        return result_xml("AssignPrivateIpAddresses",
                          f"<networkInterfaceId>{eni.id}</networkInterfaceId>"
                          f"<assignedPrivateIpAddressesSet>{items}</assignedPrivateIpAddressesSet>")

    return Verdict(params=params, before=move_reassigned if movable else None,
                   after=answer_new_only)


def secondary_holders(context: RuleContext, eni: Any, addresses: list[str]) -> dict[str, Any]:
    """Other ENIs in the subnet holding one of ``addresses`` as a secondary address."""
    holders = {}
    for other in context.backend.enis.values():
        if other is eni or other.subnet.id != eni.subnet.id:
            continue
        for entry in other.private_ip_addresses:
            if entry["PrivateIpAddress"] in addresses and not entry.get("Primary"):
                holders[entry["PrivateIpAddress"]] = other
    return holders


def check_unassign_private_ip_addresses(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    reject_prefixes(request)
    addresses = request.indexed("PrivateIpAddress")
    if not addresses:
        raise Refusal("MissingParameter", "The request must contain the parameter PrivateIpAddress")
    held = set(eni_addresses(eni))
    for address in addresses:
        if address == eni.private_ip_address:
            raise Refusal("InvalidParameterValue",
                          f"Cannot unassign the primary private IP address {address} of {eni.id}")
        if address not in held:
            raise Refusal("InvalidParameterValue",
                          f"Some of the specified addresses are not assigned to interface "
                          f"{eni.id}: {address}")
    return Verdict()


def check_attach_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    instance = find_instance(context, require(request, "InstanceId"))
    raw_index = require(request, "DeviceIndex")
    try:
        device_index = int(raw_index)
    except ValueError:
        raise Refusal("InvalidParameterValue", f"Invalid device index {raw_index!r}") from None
    if device_index < 0:
        raise Refusal("InvalidParameterValue", f"Invalid device index {device_index}")
    if instance.state not in ("running", "stopped", "pending", "stopping"):
        raise Refusal("IncorrectInstanceState",
                      f"The instance '{instance.id}' is not in a state to attach interfaces "
                      f"({instance.state})")
    if eni.instance is not None:
        raise Refusal("InvalidNetworkInterface.InUse", f"Interface: [{eni.id}] in use.")
    instance_vpc = instance.nics[0].subnet.vpc_id if 0 in instance.nics else eni.subnet.vpc_id
    if eni.subnet.vpc_id != instance_vpc:
        raise Refusal("InvalidParameterValue",
                      f"Interface {eni.id} and instance {instance.id} are in different VPCs")
    if device_index in instance.nics:
        raise Refusal("InvalidParameterValue",
                      f"Instance '{instance.id}' already has an interface attached at device "
                      f"index '{device_index}'.")
    limits = limits_for(instance.instance_type)
    if len(instance.nics) >= limits.max_enis:
        raise Refusal("AttachmentLimitExceeded",
                      f"Interface count {len(instance.nics) + 1} exceeds the limit for "
                      f"{limits.instance_type} ({limits.max_enis})")
    count = len(eni_addresses(eni))
    if count > limits.ips_per_eni:
        raise Refusal("AttachmentLimitExceeded",
                      f"Interface {eni.id} holds {count} IPv4 addresses; "
                      f"{limits.instance_type} allows {limits.ips_per_eni} per interface")
    return Verdict()


def find_attached(context: RuleContext, attachment_id: str) -> Any:
    for eni in context.backend.enis.values():
        if eni.attachment_id == attachment_id:
            return eni
    raise Refusal("InvalidAttachmentID.NotFound",
                  f"The attachment ID '{attachment_id}' does not exist")


def check_detach_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_attached(context, require(request, "AttachmentId"))
    if eni.device_index == 0:
        raise Refusal("OperationNotPermitted",
                      f"The network interface at device index 0 cannot be detached ({eni.id}).")
    return Verdict()


def check_delete_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    if eni.instance is not None:
        raise Refusal("InvalidNetworkInterface.InUse",
                      f"The network interface '{eni.id}' is currently in use.")
    return Verdict()


def check_modify_network_interface_attribute(request: ApiRequest,
                                             context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    if not request.has_prefix("Attachment"):
        return Verdict()
    attachment_id = require(request, "Attachment.AttachmentId")
    if attachment_id != eni.attachment_id:
        raise Refusal("InvalidAttachmentID.NotFound",
                      f"The attachment ID '{attachment_id}' does not exist on {eni.id}")
    delete_on_termination = request.get("Attachment.DeleteOnTermination") == "true"

    def set_delete_on_termination() -> None:  # moto ignores the Attachment parameter
        eni.delete_on_termination = delete_on_termination

    return Verdict(before=set_delete_on_termination)


def check_run_instances(request: ApiRequest, context: RuleContext) -> Verdict:
    limits_for(request.get("InstanceType") or "m1.small")
    if request.has_prefix("NetworkInterface"):
        raise Refusal("InvalidParameterValue", "the emulator's RunInstances takes SubnetId and "
                      "PrivateIpAddress, not NetworkInterface specifications")
    subnet_id = request.get("SubnetId")
    if not subnet_id:
        return Verdict()
    subnet = find_subnet(context, subnet_id)
    if parse_count(request, "MaxCount") != 1:
        raise Refusal("InvalidParameterValue",
                      "the emulator launches one instance per RunInstances call into a subnet "
                      "(MaxCount must be 1)")
    used = used_addresses(context.backend, subnet.id)
    address = request.get("PrivateIpAddress")
    if address:
        check_requested(subnet.cidr_block, subnet.id, [address], used)
    else:
        address = allocate_free(context.allocator, subnet, 1, used)[0]
    return Verdict(params=request.without("PrivateIpAddress") + [("PrivateIpAddress", address)])


# --- route tables --------------------------------------------------------------------------

def find_route_table(context: RuleContext, table_id: str) -> Any:
    table = context.backend.route_tables.get(table_id)
    if table is None:
        raise Refusal("InvalidRouteTableID.NotFound", f"The routeTable ID '{table_id}' does not exist")
    return table


def check_create_route(request: ApiRequest, context: RuleContext) -> Verdict:
    table = find_route_table(context, require(request, "RouteTableId"))
    eni_id = request.get("NetworkInterfaceId")
    if eni_id:
        find_eni(context, eni_id)
    destination = request.get("DestinationCidrBlock")
    if destination is None:
        return Verdict()
    try:
        wanted = ipaddress.IPv4Network(destination, strict=False)
    except ValueError:
        raise Refusal("InvalidParameterValue",
                      f"Value ({destination}) for parameter destinationCidrBlock is invalid.") from None
    routes = [r for r in table._routes.values() if r.destination_cidr_block]
    for route in routes:
        if ipaddress.IPv4Network(route.destination_cidr_block, strict=False) == wanted:
            raise Refusal("RouteAlreadyExists",
                          f"The route identified by {destination} already exists.")
    if sum(1 for r in routes if not r.local) >= context.route_table_limit:
        raise Refusal("RouteLimitExceeded",
                      f"The maximum number of routes ({context.route_table_limit}) has been "
                      f"reached in {table.id}.")
    return Verdict()


def check_route_change(request: ApiRequest, context: RuleContext) -> Verdict:
    """ReplaceRoute and DeleteRoute: the table and (for ENI targets) the ENI must exist."""
    find_route_table(context, require(request, "RouteTableId"))
    eni_id = request.get("NetworkInterfaceId")
    if eni_id:
        find_eni(context, eni_id)
    return Verdict()


HANDLERS: dict[str, Callable[[ApiRequest, RuleContext], Verdict]] = {
    "CreateNetworkInterface": check_create_network_interface,
    "AssignPrivateIpAddresses": check_assign_private_ip_addresses,
    "UnassignPrivateIpAddresses": check_unassign_private_ip_addresses,
    "AttachNetworkInterface": check_attach_network_interface,
    "DetachNetworkInterface": check_detach_network_interface,
    "DeleteNetworkInterface": check_delete_network_interface,
    "ModifyNetworkInterfaceAttribute": check_modify_network_interface_attribute,
    "RunInstances": check_run_instances,
    "CreateRoute": check_create_route,
    "ReplaceRoute": check_route_change,
    "DeleteRoute": check_route_change,
    "DescribeNetworkInterfaces": lambda r, c: Verdict(
        params=check_describe_network_interfaces(r, c.backend)),
}
