"""The IAM policy (cloud/iam.py, rendered as deploy/iam-policy.json) checked action by
action against AWS's published table of EC2 actions, resource types and condition keys, as
the ``parliament`` linter ships it (offline): every resource type EC2 requires for an
action is granted somewhere, every ARN granted is a resource type of the action, every
condition key is one EC2 evaluates for that action and resource, in each partition.
parliament itself lints each statement alone, so a policy that splits one action's
resources over two statements draws "No resources match" findings IAM would not: each one
is checked against the other statement that grants it, every other finding fails."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import parliament
import pytest

from cloud.iam import PARTITIONS, main, render_policy, render_table

REPO = Path(__file__).resolve().parent.parent
PARLIAMENT = str(Path(sys.executable).with_name("parliament"))
EC2 = next(s for s in json.loads((Path(parliament.__file__).parent / "iam_definition.json")
                                 .read_text()) if s["prefix"] == "ec2")
PRIVILEGES = {p["privilege"]: p for p in EC2["privileges"]}
ARN = re.compile(r"arn:(?P<partition>[a-z-]+):ec2:\*:\*:(?P<type>[a-z-]+)/\*\Z")


def granted(policy: dict) -> dict[tuple[str, str], list[dict]]:
    """(action, resource type or "*") -> the statements granting it."""
    out: dict[tuple[str, str], list[dict]] = {}
    for statement in policy["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) \
            else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) \
            else [statement["Resource"]]
        for action in actions:
            for resource in resources:
                kind = "*" if resource == "*" else ARN.match(resource)["type"]
                out.setdefault((action.removeprefix("ec2:"), kind), []).append(statement)
    return out


def normalised(key: str) -> str:
    """``aws:ResourceTag/underlay.io/cluster`` -> ``aws:ResourceTag/${TagKey}``."""
    return re.sub(r"Tag/.*", "Tag/${TagKey}", key)


@pytest.mark.parametrize("partition", PARTITIONS)
def test_each_action_against_ec2s_resource_types_and_condition_keys(partition):
    policy = render_policy("prod-1", partition)
    grants = granted(policy)
    for statement in policy["Statement"]:
        for resource in [statement["Resource"]] if isinstance(statement["Resource"], str) \
                else statement["Resource"]:
            assert resource == "*" or ARN.match(resource)["partition"] == partition, resource
    for action in {a for a, _ in grants}:
        table = {r["resource_type"].rstrip("*"): r for r in PRIVILEGES[action]["resource_types"]}
        required = {r["resource_type"].rstrip("*") for r in PRIVILEGES[action]["resource_types"]
                    if r["resource_type"].endswith("*")}
        kinds = {k for a, k in grants if a == action}
        if set(table) == {""}:  # no resource-level permissions: only "*" means anything
            assert kinds == {"*"}, (action, kinds)
            continue
        assert required <= kinds, f"{action}: EC2 also authorizes it against " \
                                  f"{sorted(required - kinds)}"
        assert kinds <= set(table) - {""}, f"{action}: {sorted(kinds - set(table))} is no " \
                                           "resource type of it"
        for kind in kinds:
            allowed = set(table[kind]["condition_keys"]) | set(table.get("", {}).get(
                "condition_keys", []))
            for statement in grants[(action, kind)]:
                for key in statement.get("Condition", {}).get("StringEquals", {}):
                    assert normalised(key) in allowed, (action, kind, key)


def test_the_table_names_the_multi_resource_actions():
    """The actions the issue names: authorized against more than the ENI, so granted more."""
    grants = granted(render_policy("c"))
    for action in ("AttachNetworkInterface", "DetachNetworkInterface",
                   "ModifyNetworkInterfaceAttribute"):
        assert {k for a, k in grants if a == action} == {"network-interface", "instance"}
    assert {k for a, k in grants if a == "CreateNetworkInterface"} == \
        {"network-interface", "subnet", "security-group"}
    assert PRIVILEGES["CreateNetworkInterface"]["resource_types"][0]["dependent_actions"] == \
        ["ec2:CreateTags"] and ("CreateTags", "network-interface") in grants


@pytest.mark.parametrize("partition", PARTITIONS)
def test_parliament_finds_nothing_but_split_statements(partition):
    policy = render_policy("prod-1", partition)
    # parliament imports pkg_resources, whose deprecation warning is not a finding
    env = dict(os.environ, PYTHONWARNINGS="ignore:pkg_resources is deprecated:UserWarning")
    proc = subprocess.run([PARLIAMENT, "--json", "--string", json.dumps(policy)],
                          capture_output=True, text=True, timeout=120, check=False,
                          stdin=subprocess.DEVNULL, env=env)
    findings = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    grants = granted(policy)
    assert proc.returncode in (0, 1) and not proc.stderr.strip(), proc.stderr
    assert findings, "parliament reported nothing: is it checking at all?"
    for finding in findings:
        assert finding["issue"] == "RESOURCE_MISMATCH", finding
        for item in finding["detail"]:
            kind = item["required_format"].split(":")[-1].split("/")[0]
            assert grants.get((item["action"].removeprefix("ec2:"), kind)), item


def test_the_shipped_policy_and_readme_table_are_the_rendering():
    shipped = json.loads((REPO / "deploy" / "iam-policy.json").read_text())
    assert shipped == render_policy("my-cluster", "aws")
    assert render_table() in (REPO / "README.md").read_text()


def test_bad_arguments_are_named(capsys):
    assert main(["--cluster", "prod", "--partition", "aws-mars"]) == 2
    assert "partition 'aws-mars': expected one of aws, aws-cn, aws-us-gov" in capsys.readouterr().err
    assert main(["--cluster", "bad name!"]) == 2
    assert "cluster 'bad name!'" in capsys.readouterr().err
    assert main(["--cluster", "prod", "--partition", "aws-us-gov"]) == 0
    assert "arn:aws-us-gov:ec2:*:*:instance/*" in capsys.readouterr().out
