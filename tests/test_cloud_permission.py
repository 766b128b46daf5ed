"""Permission errors from the emulated EC2 over HTTP. moto's own IAM enforcement is switched
on for the test: an IAM user whose policy allows only ec2:Describe* is refused
ModifyNetworkInterfaceAttribute (AccessDenied), and unknown credentials fail with AuthFailure;
both surface as PermissionDenied naming the refused action. (Real EC2 answers the first
with UnauthorizedOperation; that document is translated in test_cloud_errors.py.)"""
from __future__ import annotations

import json

import boto3
import pytest
from moto import settings as moto_settings
from moto.core.authorization import ActionAuthenticatorMixin
from moto.iam.models import iam_backends

from cloud import errors
from cloud.ec2 import Ec2Cloud
from cloud_fixtures import call_count
from cloud_fixtures import *  # noqa: F401,F403 - the fixtures

pytestmark = pytest.mark.timeout(120)
NODES_PER_WORLD = 2
DESCRIBE_ONLY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["ec2:Describe*"], "Resource": "*"}],
}


@pytest.fixture
def enforced_iam(emulator, world):
    """moto checks every request against IAM while the test runs (a process-wide moto
    setting, restored afterwards); yields the keys of a describe-only user."""
    iam = iam_backends[emulator.account_id]["aws"]
    iam.create_user(region_name=emulator.region, user_name="node-agent", path="/", tags=[])
    iam.put_user_policy("node-agent", "describe-only", json.dumps(DESCRIBE_ONLY))
    key = iam.create_access_key("node-agent")
    before = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
    ActionAuthenticatorMixin.request_count = 0
    try:
        yield key.access_key_id, key.secret_access_key
    finally:
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = before
        iam.delete_access_key(key.access_key_id, "node-agent")
        iam.delete_user_policy("node-agent", "describe-only")
        iam.delete_user("node-agent")


def adapter(emulator, key_id: str, secret: str, calls: list) -> Ec2Cloud:
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret)
    return Ec2Cloud(emulator.region, endpoint_url=emulator.endpoint, retry_attempts=3,
                    retry_base_delay=0.001, retry_max_delay=0.002, session=session,
                    on_call=lambda action, outcome, _seconds: calls.append((action, outcome)))


def test_a_refused_action_is_permission_denied_naming_it(emulator, control, node, enforced_iam):
    calls: list = []
    cloud = adapter(emulator, *enforced_iam, calls)
    assert cloud.describe_eni(node.primary_eni_id).id == node.primary_eni_id  # allowed
    # (an action the strict layer does not rewrite: moto checks the request's signature)
    with pytest.raises(errors.PermissionDenied) as caught:
        cloud.set_source_dest_check(node.primary_eni_id, False)
    assert "ec2:ModifyNetworkInterfaceAttribute" in str(caught.value)
    assert caught.value.action == "ModifyNetworkInterfaceAttribute"
    assert calls[-1] == ("ModifyNetworkInterfaceAttribute", "AccessDenied")  # not retried
    assert call_count(control, "ModifyNetworkInterfaceAttribute") == 1
    assert cloud.describe_eni(node.primary_eni_id).source_dest_check is True  # unchanged
    assert enforced_iam[1] not in str(caught.value)


def test_unknown_credentials_are_permission_denied(emulator, control, node, enforced_iam):
    calls: list = []
    cloud = adapter(emulator, "AKIAUNKNOWNUNKNOWN00", "not-a-real-secret", calls)
    with pytest.raises(errors.PermissionDenied) as caught:
        cloud.describe_instance(node.instance_id)
    assert caught.value.code == "AuthFailure"
    assert "ec2:DescribeInstances" in str(caught.value) and "credentials" in str(caught.value)
    assert "not-a-real-secret" not in str(caught.value)
    assert calls == [("DescribeInstances", "AuthFailure")]
