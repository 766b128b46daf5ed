"""Ec2Cloud implements the Cloud Protocol exactly: every method, with the Protocol's
parameter names, kinds and defaults, so the agent can be handed either."""
from __future__ import annotations

import inspect

import pytest

from cloud.api import Cloud
from cloud.ec2 import Ec2Cloud

PROTOCOL_METHODS = sorted(
    name for name, value in vars(Cloud).items()
    if callable(value) and not name.startswith("_")
)


def test_the_protocol_has_the_calls_of_the_issue():
    assert PROTOCOL_METHODS == sorted([
        "describe_instance", "instance_limits", "describe_subnets", "list_enis",
        "describe_eni", "create_eni", "attach_eni", "detach_eni", "delete_eni",
        "assign_ips", "unassign_ips", "assign_prefixes", "unassign_prefixes",
        "list_leaked_enis", "set_source_dest_check",
        "describe_route_tables", "create_route", "replace_route", "delete_route",
    ])


@pytest.mark.parametrize("name", PROTOCOL_METHODS)
def test_ec2cloud_matches_the_protocol_signature(name):
    wanted = inspect.signature(getattr(Cloud, name))
    actual = inspect.signature(getattr(Ec2Cloud, name))
    describe = [(p.name, p.kind, p.default) for p in wanted.parameters.values()]
    assert [(p.name, p.kind, p.default) for p in actual.parameters.values()] == describe
