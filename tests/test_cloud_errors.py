"""translate_error on real botocore errors: EC2 error responses (the XML EC2 sends) parsed
by botocore's own EC2 parser into a ClientError, and botocore's transport exceptions."""
from __future__ import annotations

import threading

import boto3
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)
from botocore.parsers import create_parser

from cloud import errors
from cloud.ec2_errors import outcome_of, translate_error
from cloud.retry import RetryPolicy, run_with_retries

_EC2 = boto3.session.Session().client(
    "ec2", region_name="us-east-1", endpoint_url="http://127.0.0.1:9"
)


def ec2_client_error(action: str, code: str, message: str, status: int = 400) -> ClientError:
    """What botocore raises when EC2 answers ``action`` with this error document."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
        "</Error></Errors><RequestID>4d1b5f3c-0000-0000-0000-000000000000</RequestID>"
        "</Response>"
    ).encode()
    operation = _EC2.meta.service_model.operation_model(action)
    parsed = create_parser("ec2").parse(
        {"status_code": status, "headers": {}, "body": body}, operation.output_shape
    )
    return ClientError(parsed, action)


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("RequestLimitExceeded", 503, errors.Throttled),
        ("Throttling", 400, errors.Throttled),
        ("PrivateIpAddressLimitExceeded", 400, errors.IpLimitReached),
        ("AttachmentLimitExceeded", 400, errors.EniLimitReached),
        ("InsufficientFreeAddressesInSubnet", 400, errors.SubnetExhausted),
        ("InsufficientCidrBlocks", 400, errors.SubnetFragmented),
        ("InvalidNetworkInterfaceID.NotFound", 400, errors.NotFound),
        ("InvalidAttachmentID.NotFound", 400, errors.NotFound),
        ("InvalidRoute.NotFound", 400, errors.NotFound),
        ("InvalidNetworkInterface.InUse", 400, errors.InUse),
        ("UnauthorizedOperation", 403, errors.PermissionDenied),
        ("AuthFailure", 401, errors.PermissionDenied),
        ("InternalError", 500, errors.CloudUnavailable),
        ("Unavailable", 503, errors.CloudUnavailable),
        ("SomethingNew", 502, errors.CloudUnavailable),
        ("InvalidParameterValue", 400, errors.InvalidRequest),
        ("MissingParameter", 400, errors.InvalidRequest),
    ],
)
def test_ec2_error_codes_map_to_the_tree(code, status, expected):
    error = translate_error(
        ec2_client_error("AssignPrivateIpAddresses", code, "the cause", status),
        "AssignPrivateIpAddresses",
    )
    assert type(error) is expected
    assert error.code == code
    assert error.action == "AssignPrivateIpAddresses"
    assert "AssignPrivateIpAddresses" in str(error) and "the cause" in str(error)
    assert error.retryable is issubclass(expected, errors.RetryableCloudError)
    assert outcome_of(error) == code


def test_insufficient_cidr_blocks_is_subnet_fragmented_naming_the_subnet():
    """EC2's message names no subnet; the adapter's lookup, asked only for this code, does."""
    refused = ec2_client_error(
        "AssignPrivateIpAddresses", "InsufficientCidrBlocks",
        "The specified subnet does not have enough free cidr blocks to satisfy the request.")
    asked = []

    def subnet_of() -> str:
        asked.append(1)
        return "subnet-0abc"

    error = translate_error(refused, "AssignPrivateIpAddresses", subnet=subnet_of)
    assert isinstance(error, errors.SubnetFragmented) and isinstance(error, errors.SubnetExhausted)
    assert error.cni_code == 108 and not error.retryable and asked == [1]
    assert "subnet subnet-0abc has no free aligned /28 block" in str(error)
    assert "InsufficientCidrBlocks" in str(error)
    named = translate_error(refused, "CreateNetworkInterface", subnet="subnet-0def")
    assert "subnet subnet-0def" in str(named)
    unnamed = translate_error(refused, "AssignPrivateIpAddresses", subnet=lambda: None)
    assert "the subnet has no free aligned /28 block" in str(unnamed)
    exhausted = translate_error(
        ec2_client_error("AssignPrivateIpAddresses", "InsufficientFreeAddressesInSubnet", "x"),
        "AssignPrivateIpAddresses", subnet=subnet_of)
    assert type(exhausted) is errors.SubnetExhausted and asked == [1]  # no lookup for it


def test_unauthorized_operation_names_the_refused_action():
    raw = ec2_client_error(
        "AssignPrivateIpAddresses",
        "UnauthorizedOperation",
        "You are not authorized to perform this operation. Encoded authorization failure "
        "message: AbCdEf",
        403,
    )
    error = translate_error(raw, "AssignPrivateIpAddresses")
    assert isinstance(error, errors.PermissionDenied)
    assert "ec2:AssignPrivateIpAddresses" in str(error)


def test_device_index_collision_is_in_use():
    raw = ec2_client_error(
        "AttachNetworkInterface",
        "InvalidParameterValue",
        "Instance 'i-0123' already has an interface attached at device index '1'.",
    )
    error = translate_error(raw, "AttachNetworkInterface")
    assert isinstance(error, errors.InUse) and error.code == "InvalidParameterValue"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"), "ConnectTimeout"),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), "ReadTimeout"),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), "EndpointConnectionError"),
    ],
)
def test_transport_failures_are_unavailable(exc, code):
    error = translate_error(exc, "DescribeNetworkInterfaces")
    assert isinstance(error, errors.CloudUnavailable) and error.retryable
    assert error.code == code and "DescribeNetworkInterfaces" in str(error)


def test_missing_credentials_are_permission_denied_without_secrets():
    error = translate_error(NoCredentialsError(), "DescribeInstances")
    assert isinstance(error, errors.PermissionDenied)
    assert "ec2:DescribeInstances" in str(error) and "credential" in str(error)


def test_refused_parameters_are_invalid_not_retryable():
    error = translate_error(ParamValidationError(report="Invalid type for DeviceIndex"),
                            "AttachNetworkInterface")
    assert isinstance(error, errors.InvalidRequest) and not error.retryable
    assert "AttachNetworkInterface" in str(error) and "DeviceIndex" in str(error)


def test_retries_stop_after_the_attempt_budget_and_surface_the_typed_error():
    attempts = []

    def attempt():
        attempts.append(1)
        raise errors.Throttled("throttled", code="RequestLimitExceeded", action="X")

    policy = RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.002, deadline=30)
    with pytest.raises(errors.Throttled):
        run_with_retries(attempt, policy, action="X", stop=threading.Event())
    assert len(attempts) == 4


def test_waits_back_off_exponentially_with_full_jitter():
    waits: list[float] = []

    def attempt():
        raise errors.Throttled("throttled", code="RequestLimitExceeded", action="X")

    policy = RetryPolicy(attempts=8, base_delay=0.5, max_delay=4.0, deadline=3600)
    for _ in range(20):
        with pytest.raises(errors.Throttled):
            run_with_retries(attempt, policy, action="X", stop=threading.Event(),
                             sleep=waits.append)
    assert len(waits) == 20 * 7
    for run in range(20):
        for n, wait in enumerate(waits[run * 7:(run + 1) * 7]):
            assert 0 <= wait <= min(4.0, 0.5 * 2**n)  # the exponential ceiling, capped
    late = [w for i, w in enumerate(waits) if i % 7 >= 3]  # ceiling is the 4 s cap here
    assert len(set(late)) == len(late)  # drawn, not fixed
    assert min(late) < 2.0 < max(late)  # spread over [0, cap], not bunched at the top


def test_permanent_errors_are_not_retried():
    attempts = []

    def attempt():
        attempts.append(1)
        raise errors.IpLimitReached("full", action="X")

    with pytest.raises(errors.IpLimitReached):
        run_with_retries(attempt, RetryPolicy(attempts=5, base_delay=0.001), action="X",
                         stop=threading.Event())
    assert len(attempts) == 1


def test_a_set_stop_event_ends_retrying():
    stop = threading.Event()
    attempts = []

    def attempt():
        attempts.append(1)
        stop.set()
        raise errors.CloudUnavailable("down", action="X")

    with pytest.raises(errors.CloudUnavailable):
        run_with_retries(attempt, RetryPolicy(attempts=50, base_delay=10, max_delay=10),
                         action="X", stop=stop)
    assert len(attempts) == 1


def test_bad_retry_policy_is_refused():
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="deadline"):
        RetryPolicy(deadline=-1)
