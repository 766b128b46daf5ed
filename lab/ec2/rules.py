"""EC2's rules that moto does not enforce, checked against moto's state before a call is
passed on. Each ``check_*`` either refuses (raises Refusal, nothing changes) or returns a
Verdict: the request to hand moto instead (addresses chosen here), a step to run just
before moto (under the same lock), and a rewrite of moto's successful answer.
What an ENI holds (addresses and prefixes) is address_rules.py's, subnet CIDR reservations
are reservations.py's; this module dispatches and holds the rules of attachments,
instances' ENIs, subnets and route tables.

Choices where EC2's exact behaviour is not documented:
- an ENI and an instance in different Availability Zones (the user guide: both must be in
  the same zone) is InvalidParameterValue, as is one in another VPC;
- an ENI using more address slots (addresses and prefixes) than the instance type allows
  per ENI cannot be attached: AttachmentLimitExceeded (naming the counts and the limit);
  an ENI holding prefixes cannot be attached to a type that is not Nitro;
- a subnet's AvailableIpAddressCount is its usable addresses held neither as an address nor
  inside a prefix (CIDR reservations do not lower it: their addresses are still free);
- RunInstances into a subnet launches one instance per call (MaxCount 1) and takes
  SubnetId/PrivateIpAddress, not NetworkInterface specifications.
"""
from __future__ import annotations

import ipaddress
import logging
from typing import Any, Callable

from lab.ec2.address_rules import (
    check_assign_private_ip_addresses,
    check_create_network_interface,
    check_run_instances,
    check_unassign_private_ip_addresses,
)
from lab.ec2.addresses import AddressAllocator
from lab.ec2.describe import check_describe_instances, check_describe_network_interfaces
from lab.ec2.ids import check_id_formats
from lab.ec2.paging import chain, page_rewrite
from lab.ec2.limits import limits_for
from lab.ec2.lookups import RuleContext, Verdict, check_groups, find_eni, find_instance, require
from lab.ec2.prefix_rules import (
    attach_slot_refusal,
    check_nitro,
    rewrite_free_counts,
)
from lab.ec2.reservations import (
    check_create_subnet_cidr_reservation,
    check_delete_subnet_cidr_reservation,
    check_get_subnet_cidr_reservations,
)
from lab.ec2.snapshot import eni_prefixes, iterate_subnets
from lab.ec2.wire import ApiRequest, Refusal, parse_count

logger = logging.getLogger(__name__)

MAX_RESULTS = range(5, 1001)  # DescribeNetworkInterfaces, DescribeSubnets

__all__ = ["AddressAllocator", "RuleContext", "Verdict", "check_request"]


def check_request(request: ApiRequest, context: RuleContext) -> Verdict:
    check_id_formats(request)
    handler = HANDLERS.get(request.action)
    return handler(request, context) if handler else Verdict()


# --- ENIs and their addresses --------------------------------------------------------------

def check_attach_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    instance = find_instance(context, require(request, "InstanceId"))
    require(request, "DeviceIndex")
    device_index = parse_count(request, "DeviceIndex")
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
    if eni.subnet.availability_zone != instance.availability_zone:
        raise Refusal("InvalidParameterValue",
                      f"Interface {eni.id} (availability zone {eni.subnet.availability_zone}) "
                      f"and instance {instance.id} (availability zone "
                      f"{instance.availability_zone}) are not in the same availability zone")
    if device_index in instance.nics:
        raise Refusal("InvalidParameterValue",
                      f"Instance '{instance.id}' already has an interface attached at device "
                      f"index '{device_index}'.")
    limits = limits_for(instance.instance_type)
    if len(instance.nics) >= limits.max_enis:
        raise Refusal("AttachmentLimitExceeded",
                      f"Interface count {len(instance.nics) + 1} exceeds the limit for "
                      f"{limits.instance_type} ({limits.max_enis})")
    if eni_prefixes(eni) and context.enforces("prefix-nitro"):
        check_nitro(limits.instance_type, f"AttachNetworkInterface of {eni.id} (it holds prefixes)")
    attach_slot_refusal(eni, limits, context.enforces("prefix-slots"))
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
    check_groups(context, request.indexed("SecurityGroupId"), eni.subnet.vpc_id)
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


# --- subnets -------------------------------------------------------------------------------

def check_describe_subnets(request: ApiRequest, context: RuleContext) -> Verdict:
    subnets = {subnet.id: subnet for subnet in iterate_subnets(context.backend)}
    counts_prefixes = context.enforces("prefix-blocks")
    paging = page_rewrite(request, "subnetSet", MAX_RESULTS, None)
    return Verdict(after=chain(lambda body: rewrite_free_counts(body, context.backend, subnets,
                                                                counts_prefixes), paging))


def check_describe_enis(request: ApiRequest, context: RuleContext) -> Verdict:
    paging = page_rewrite(request, "networkInterfaceSet", MAX_RESULTS, "NetworkInterfaceId")
    return Verdict(params=check_describe_network_interfaces(request, context.backend),
                   after=paging)



def check_describe_instance_types(request: ApiRequest, context: RuleContext) -> Verdict:
    return Verdict(after=page_rewrite(request, "instanceTypeSet", range(5, 101), None))


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
    "DescribeSubnets": check_describe_subnets,
    "CreateSubnetCidrReservation": check_create_subnet_cidr_reservation,
    "DeleteSubnetCidrReservation": check_delete_subnet_cidr_reservation,
    "GetSubnetCidrReservations": check_get_subnet_cidr_reservations,
    "CreateRoute": check_create_route,
    "ReplaceRoute": check_route_change,
    "DeleteRoute": check_route_change,
    "DescribeNetworkInterfaces": check_describe_enis,
    "DescribeInstanceTypes": check_describe_instance_types,
    "DescribeInstances": lambda r, c: Verdict(params=check_describe_instances(r, c.backend)),
}
