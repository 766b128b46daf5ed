"""The strict layer's rules for what an ENI holds: single IPv4 addresses and /28 prefixes,
on CreateNetworkInterface, AssignPrivateIpAddresses, UnassignPrivateIpAddresses and
RunInstances. The layer picks every address and prefix itself and hands moto the request
with addresses named; prefixes it keeps itself (prefix_rules.py).

Choices where EC2's exact behaviour is not documented:
- secondary addresses and prefixes are not asked for in one call
  (InvalidParameterCombination); CreateNetworkInterface's primary address given as
  PrivateIpAddress may come with prefixes (the reference excludes only PrivateIpAddresses
  and the count), and SecondaryPrivateIpAddressCount with a PrivateIpAddresses list of one;
- an address named both as PrivateIpAddress and flagged primary in PrivateIpAddresses is
  one primary, not two;
- an unattached ENI is limited only by its subnet; its slots and its instance type's
  Nitro-ness are checked when it is attached.
"""
from __future__ import annotations

import logging
from typing import Any

from lab.ec2.addresses import allocate_free, check_requested
from lab.ec2.limits import limits_for
from lab.ec2.lookups import RuleContext, Verdict, check_groups, find_eni, find_subnet, require
from lab.ec2.prefix_rules import (
    PrefixAsk,
    adopt_created_prefixes,
    answer_assigned,
    check_nitro,
    check_slots,
    read_prefix_ask,
    set_eni_prefixes,
    subnet_space,
)
from lab.ec2.prefixes import (
    SubnetSpace,
    addresses_closed_to_singles,
    check_named_prefixes,
    check_named_singles,
    choose_prefixes,
)
from lab.ec2.snapshot import eni_addresses, eni_prefixes
from lab.ec2.wire import ApiRequest, Refusal, parse_count

logger = logging.getLogger(__name__)

NOT_BOTH = "Specify either secondary private IP addresses or IPv4 prefixes in one call, not both"


def free_for_singles(context: RuleContext, space: SubnetSpace, named: list[str]) -> set[str]:
    """Check named single addresses against prefixes and reservations; return what an
    automatic address must avoid beyond the assigned ones."""
    reservations = context.enforces("cidr-reservations")
    blocks = context.enforces("prefix-blocks")
    check_named_singles(space, named, honour_reservations=reservations, prefixes_count=blocks)
    return addresses_closed_to_singles(space, automatic=True, honour_reservations=reservations,
                                       prefixes_count=blocks)


def pick_prefixes(context: RuleContext, space: SubnetSpace, ask: PrefixAsk) -> list[str]:
    blocks = context.enforces("prefix-blocks")
    if ask.named:
        chosen = check_named_prefixes(space, list(ask.named), free_blocks_only=blocks)
    else:
        chosen = choose_prefixes(space, ask.count, free_blocks_only=blocks,
                                 honour_reservations=context.enforces("cidr-reservations"))
    return [str(block) for block in chosen]


def check_create_combination(request: ApiRequest, ask: PrefixAsk, listed: list[dict[str, str]],
                             count: int) -> None:
    """CreateNetworkInterface's published exclusions (EC2 API reference): IPv4 prefixes
    exclude PrivateIpAddresses and SecondaryPrivateIpAddressCount; the count excludes a
    PrivateIpAddresses list of more than one address; there is one primary address."""
    if ask and (count or listed):
        raise Refusal("InvalidParameterCombination",
                      f"{NOT_BOTH}: IPv4 prefixes exclude PrivateIpAddresses and "
                      "SecondaryPrivateIpAddressCount")
    if count and len(listed) > 1:
        raise Refusal("InvalidParameterCombination",
                      "SecondaryPrivateIpAddressCount cannot be given with more than one "
                      f"address in PrivateIpAddresses ({len(listed)} listed)")
    flagged = [m.get("PrivateIpAddress") for m in listed if m.get("Primary") == "true"]
    named = request.get("PrivateIpAddress")
    if len(flagged) > 1 or (named and any(a != named for a in flagged)):
        raise Refusal("InvalidParameterValue", "Only one primary private IP address is allowed: "
                      f"PrivateIpAddress {named or '(none)'}, flagged primary in "
                      f"PrivateIpAddresses {flagged}")


def check_create_network_interface(request: ApiRequest, context: RuleContext) -> Verdict:
    subnet = find_subnet(context, require(request, "SubnetId"))
    check_groups(context, request.indexed("SecurityGroupId"), subnet.vpc_id)
    ask = read_prefix_ask(request, nested=True)
    listed = request.members("PrivateIpAddresses")
    count = parse_count(request, "SecondaryPrivateIpAddressCount")
    check_create_combination(request, ask, listed, count)
    flagged = [m.get("PrivateIpAddress") for m in listed if m.get("Primary") == "true"]
    primary = request.get("PrivateIpAddress") or (flagged[0] if flagged else None)
    explicit = [primary] if primary else []
    explicit += [m["PrivateIpAddress"] for m in listed
                 if m.get("PrivateIpAddress") and m["PrivateIpAddress"] != primary]
    space = subnet_space(context.backend, subnet)
    used = space.used_texts()
    closed = free_for_singles(context, space, explicit)
    check_requested(subnet.cidr_block, subnet.id, explicit, used)
    new = allocate_free(context.allocator, subnet, count + (0 if primary else 1),
                        used | closed | set(explicit))
    if not primary:
        primary = new.pop(0)
    secondaries = [a for a in explicit if a != primary] + new
    prefixes = pick_prefixes(context, space.with_addresses([primary] + secondaries), ask)
    params = request.without("PrivateIpAddress", "PrivateIpAddresses",
                             "SecondaryPrivateIpAddressCount", "Ipv4PrefixCount", "Ipv4Prefix")
    params.append(("PrivateIpAddress", primary))
    for index, address in enumerate([primary] + secondaries, start=1):
        params.append((f"PrivateIpAddresses.{index}.PrivateIpAddress", address))
        params.append((f"PrivateIpAddresses.{index}.Primary", "true" if index == 1 else "false"))
    if not prefixes:
        return Verdict(params=params)
    return Verdict(params=params,
                   after=lambda body: adopt_created_prefixes(body, context.backend, prefixes))


def check_assign_private_ip_addresses(request: ApiRequest, context: RuleContext) -> Verdict:
    eni = find_eni(context, require(request, "NetworkInterfaceId"))
    ask = read_prefix_ask(request, nested=False)
    explicit = request.indexed("PrivateIpAddress")
    count = parse_count(request, "SecondaryPrivateIpAddressCount")
    if ask and (explicit or count):
        raise Refusal("InvalidParameterCombination", NOT_BOTH)
    if explicit and count:
        raise Refusal("InvalidParameterCombination",
                      "Specify either PrivateIpAddresses or SecondaryPrivateIpAddressCount, not both")
    if not explicit and not count and not ask:
        raise Refusal("MissingParameter",
                      "One of PrivateIpAddresses, SecondaryPrivateIpAddressCount, Ipv4Prefixes "
                      "or Ipv4PrefixCount must be given")
    slots = context.enforces("prefix-slots")
    if eni.instance is not None:
        limits = limits_for(eni.instance.instance_type)
        if ask and context.enforces("prefix-nitro"):
            check_nitro(limits.instance_type, f"AssignPrivateIpAddresses on {eni.id}")
        check_slots(eni, limits, addresses=len(explicit) or count,
                    prefixes=len(ask.named) or ask.count, prefixes_take_slots=slots)
    space = subnet_space(context.backend, eni.subnet)
    if ask:
        return assign_prefixes(request, context, eni, pick_prefixes(context, space, ask))
    used = space.used_texts()
    movable = {}
    if request.get("AllowReassignment") == "true":
        movable = secondary_holders(context, eni, explicit)
    closed = free_for_singles(context, space, explicit)
    check_requested(eni.subnet.cidr_block, eni.subnet.id, explicit, used - set(movable))
    new = explicit or allocate_free(context.allocator, eni.subnet, count, used | closed)
    params = request.without("PrivateIpAddress", "SecondaryPrivateIpAddressCount",
                             "AllowReassignment")
    params += [(f"PrivateIpAddress.{i}", a) for i, a in enumerate(new, start=1)]

    def move_reassigned() -> None:
        for address, holder in movable.items():
            holder.private_ip_addresses = [a for a in holder.private_ip_addresses
                                           if a["PrivateIpAddress"] != address]

    return Verdict(params=params, before=move_reassigned if movable else None,
                   after=lambda _: answer_assigned(eni.id, new, []))


def assign_prefixes(request: ApiRequest, context: RuleContext, eni: Any,
                    new: list[str]) -> Verdict:
    """moto is handed the call without prefixes (it assigns nothing); the layer adds them
    to the ENI just before and answers with them."""

    def add_prefixes() -> None:
        set_eni_prefixes(eni, eni_prefixes(eni) + new)

    return Verdict(params=request.without("Ipv4PrefixCount", "Ipv4Prefix", "AllowReassignment"),
                   before=add_prefixes, after=lambda _: answer_assigned(eni.id, [], new))


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
    addresses = request.indexed("PrivateIpAddress")
    prefixes = request.indexed("Ipv4Prefix")
    if not addresses and not prefixes:
        raise Refusal("MissingParameter",
                      "The request must contain the parameter PrivateIpAddress or Ipv4Prefix")
    held = set(eni_addresses(eni))
    for address in addresses:
        if address == eni.private_ip_address:
            raise Refusal("InvalidParameterValue",
                          f"Cannot unassign the primary private IP address {address} of {eni.id}")
        if address not in held:
            raise Refusal("InvalidParameterValue",
                          f"Some of the specified addresses are not assigned to interface "
                          f"{eni.id}: {address}")
    held_prefixes = eni_prefixes(eni)
    for prefix in prefixes:
        if prefix not in held_prefixes:
            raise Refusal("InvalidParameterValue",
                          f"Some of the specified prefixes are not assigned to interface "
                          f"{eni.id}: {prefix}")
    if not prefixes:
        return Verdict()

    def remove_prefixes() -> None:
        set_eni_prefixes(eni, [p for p in held_prefixes if p not in prefixes])

    return Verdict(params=request.without("Ipv4Prefix"), before=remove_prefixes)


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
    space = subnet_space(context.backend, subnet)
    used = space.used_texts()
    address = request.get("PrivateIpAddress")
    closed = free_for_singles(context, space, [address] if address else [])
    if address:
        check_requested(subnet.cidr_block, subnet.id, [address], used)
    else:
        address = allocate_free(context.allocator, subnet, 1, used | closed)[0]
    return Verdict(params=request.without("PrivateIpAddress") + [("PrivateIpAddress", address)])
