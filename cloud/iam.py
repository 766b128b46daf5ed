"""The IAM policy the agent needs, as data: every EC2 action ``cloud.ec2`` calls, on the
resource types EC2 authorizes it against, with the conditions that keep changes to our
cluster's ENIs (and route tables), and why. ``deploy/iam-policy.json`` is its rendering for
``my-cluster`` in the ``aws`` partition; render another one with

    underlay-iam-policy --cluster prod --partition aws-cn > policy.json

Resource ARNs name the partition (``arn:aws:``, ``arn:aws-cn:``, ``arn:aws-us-gov:``): a
policy written for one partition matches nothing in another. EC2 authorizes some actions
against several resources of one request: AttachNetworkInterface and
DetachNetworkInterface against the ENI *and* the instance, ModifyNetworkInterfaceAttribute
against the ENI and, when the attachment is changed (DeleteOnTermination), the instance;
CreateNetworkInterface against the new ENI, the subnet and the security groups, and it
needs CreateTags for the tags it is created with. A tag condition applies to every
resource of its statement, and the instance, subnet and groups carry no cluster tag, so
the other side of each such action has a statement of its own. Checked action by action
against AWS's published table of EC2 resource types and condition keys (the copy the
``parliament`` linter ships) by ``tests/test_iam_policy.py``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass

from cloud.types import TAG_CLUSTER as TAG_KEY

PARTITIONS = ("aws", "aws-cn", "aws-us-gov")
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/=+@-]{0,127}\Z")


@dataclass(frozen=True)
class Grant:
    sid: str
    actions: tuple[str, ...]
    resources: tuple[str, ...]  # EC2 resource types; "*" for actions without one
    conditions: tuple[tuple[str, str], ...]  # (condition key, value; {cluster} filled in)
    why: str


GRANTS: tuple[Grant, ...] = (
    Grant("ReadInstancesSubnetsEnisRouteTables",
          ("DescribeInstances", "DescribeInstanceTypes", "DescribeSubnets",
           "DescribeNetworkInterfaces", "DescribeRouteTables"), ("*",), (),
          "Describe calls support no resource-level permissions: the node, its instance "
          "type's limits, subnets, ENIs, route tables (vpc-route mode)"),
    Grant("CreateEnisOnlyWithTheClusterTag", ("CreateNetworkInterface",),
          ("network-interface",), (("aws:RequestTag/" + TAG_KEY, "{cluster}"),),
          "a new ENI must carry the cluster tag, which every later change requires"),
    Grant("CreateEnisInAnySubnetAndGroup", ("CreateNetworkInterface",),
          ("subnet", "security-group"), (),
          "the other resources of the create: the node's (or configured) subnets and "
          "groups, which carry no cluster tag"),
    Grant("TagEnisOnlyWhileCreatingThem", ("CreateTags",), ("network-interface",),
          (("ec2:CreateAction", "CreateNetworkInterface"),
           ("aws:RequestTag/" + TAG_KEY, "{cluster}")),
          "tags given to CreateNetworkInterface are authorized as CreateTags; no other "
          "tagging (an ENI cannot be tagged into the cluster afterwards)"),
    Grant("ChangeOnlyEnisWithTheClusterTag",
          ("AttachNetworkInterface", "DetachNetworkInterface", "DeleteNetworkInterface",
           "ModifyNetworkInterfaceAttribute", "AssignPrivateIpAddresses",
           "UnassignPrivateIpAddresses"), ("network-interface",),
          (("aws:ResourceTag/" + TAG_KEY, "{cluster}"),),
          "pool changes: only ENIs tagged with this cluster (tag the node's primary ENI "
          "too: pods get its secondary addresses)"),
    Grant("AttachAndDetachOnTheInstanceSide",
          ("AttachNetworkInterface", "DetachNetworkInterface",
           "ModifyNetworkInterfaceAttribute"), ("instance",), (),
          "attach and detach are also authorized against the instance, and so is changing "
          "the attachment (DeleteOnTermination); security groups of an ENI are never "
          "changed, so ModifyNetworkInterfaceAttribute gets no security-group resource"),
    Grant("RouteTableModeOnlyInTablesWithTheClusterTag",
          ("CreateRoute", "ReplaceRoute", "DeleteRoute"), ("route-table",),
          (("aws:ResourceTag/" + TAG_KEY, "{cluster}"),),
          "vpc-route mode: the node's pod CIDR route, only in tables tagged with this "
          "cluster"),
)


def resource_arn(partition: str, resource_type: str) -> str:
    return "*" if resource_type == "*" else f"arn:{partition}:ec2:*:*:{resource_type}/*"


def render_policy(cluster: str, partition: str = "aws") -> dict:
    """The policy document; ValueError naming the bad argument."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition {partition!r}: expected one of {', '.join(PARTITIONS)}")
    if not _CLUSTER.match(cluster or ""):
        raise ValueError(f"cluster {cluster!r}: expected the cluster name the agent tags its"
                         " ENIs with (1-128 letters, digits, _.:/=+@-)")
    statements = []
    for grant in GRANTS:
        arns = [resource_arn(partition, r) for r in grant.resources]
        statement: dict = {"Sid": grant.sid, "Effect": "Allow",
                           "Action": [f"ec2:{a}" for a in grant.actions],
                           "Resource": arns[0] if len(arns) == 1 else arns}
        if len(grant.actions) == 1:
            statement["Action"] = statement["Action"][0]
        if grant.conditions:
            statement["Condition"] = {"StringEquals": {
                key: value.format(cluster=cluster) for key, value in grant.conditions}}
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


def policy_table() -> list[tuple[str, str, str, str]]:
    """(actions, resources, conditions, why) per grant, for the README."""
    return [(", ".join(g.actions), ", ".join(g.resources),
             ", ".join(f"{k} = {v}" for k, v in g.conditions) or "-", g.why) for g in GRANTS]


def render_table() -> str:
    lines = ["| actions | resources | conditions | why |", "|---|---|---|---|"]
    lines += [f"| {a} | {r} | {c.replace('{cluster}', '<cluster>')} | {w} |"
              for a, r, c, w in policy_table()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="underlay-iam-policy",
                                     description="Print the agent's IAM policy as JSON.")
    parser.add_argument("--cluster", required=True, help="the agent's cluster name")
    parser.add_argument("--partition", default="aws", help=f"one of {', '.join(PARTITIONS)}")
    parser.add_argument("--table", action="store_true", help="the README's table instead")
    args = parser.parse_args(argv)
    try:
        policy = render_policy(args.cluster, args.partition)
    except ValueError as exc:
        print(f"underlay-iam-policy: {exc}", file=sys.stderr)
        return 2
    print(render_table() if args.table else json.dumps(policy, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
