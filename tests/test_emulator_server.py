"""The emulator as a server: request token buckets, injected faults, attach latency, the
control API from another client and another process, the CLI, and serving inside a
network namespace. Everything over HTTP with plain boto3; no assertion on wall-clock time."""
from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

from lab.ec2 import ControlError, EmulatedCloud, EmulatorControl, EmulatorSettings, build_world

PYTHON = sys.executable


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatedCloud]:
    cloud = EmulatedCloud.start()
    try:
        yield cloud
    finally:
        cloud.stop()


@pytest.fixture
def control(emulator: EmulatedCloud) -> Iterator[EmulatorControl]:
    """A separate HTTP client of the control API; knobs put back after each test."""
    client = EmulatorControl(emulator.endpoint, timeout=5)
    client.set_buckets({"enabled": False})
    client.reset_counts()
    try:
        yield client
    finally:
        client.clear_faults()
        client.set_attach_latency(0)
        client.set_buckets({"enabled": False})


@pytest.fixture
def world(emulator: EmulatedCloud, control: EmulatorControl):
    return build_world(emulator.endpoint, region=emulator.region, nodes=1)


def make_client(endpoint: str, read_timeout: float = 10):
    return boto3.client(
        "ec2", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=read_timeout),
    )


def error_of(call, **kwargs) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    response = caught.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def ip_count(ec2, eni_id: str) -> int:
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"][0]
    return len(eni["PrivateIpAddresses"])


def test_bucket_refuses_after_capacity_changes_nothing_and_refills(emulator, control, world):
    ec2 = make_client(emulator.endpoint)
    eni_id = world.instances[0].primary_eni_id
    control.set_buckets({"enabled": True,
                         "eni_mutating": {"capacity": 3, "refill_per_second": 0}})
    for _ in range(3):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    assert error_of(ec2.assign_private_ip_addresses, NetworkInterfaceId=eni_id,
                    SecondaryPrivateIpAddressCount=1) == ("RequestLimitExceeded", 503)
    assert ip_count(ec2, eni_id) == 4  # Describe draws from its own bucket
    assert control.refused_counts() == {("AssignPrivateIpAddresses", "RequestLimitExceeded"): 1}
    assert control.call_counts()["AssignPrivateIpAddresses"] == 4

    # capacity 1 and a continuous refill: more calls than the capacity get through in time
    control.set_buckets({"eni_mutating": {"capacity": 1, "refill_per_second": 50}})
    passed = 0
    for _ in range(500):
        try:
            ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                                   SourceDestCheck={"Value": False})
            passed += 1
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "RequestLimitExceeded"
        if passed == 5:
            break
    assert passed == 5


def test_disabled_buckets_never_refuse(emulator, control, world):
    ec2 = make_client(emulator.endpoint)
    control.set_buckets({"enabled": False, "describe": {"capacity": 0, "refill_per_second": 0}})
    for _ in range(5):
        ec2.describe_subnets(SubnetIds=list(world.subnet_ids))
    control.set_buckets({"enabled": True})
    assert error_of(ec2.describe_subnets, SubnetIds=list(world.subnet_ids))[0] == \
        "RequestLimitExceeded"
    assert control.refused_counts() == {("DescribeSubnets", "RequestLimitExceeded"): 1}


def test_faults_switch_on_and_off_and_change_nothing(emulator, control, world):
    ec2 = make_client(emulator.endpoint)
    eni_id = world.instances[0].primary_eni_id
    control.set_faults([{"action": "AssignPrivateIpAddresses", "kind": "5xx", "rate": 1.0}])
    assert error_of(ec2.assign_private_ip_addresses, NetworkInterfaceId=eni_id,
                    SecondaryPrivateIpAddressCount=1) == ("InternalError", 500)
    ec2.describe_subnets(SubnetIds=list(world.subnet_ids))  # other actions unaffected
    control.set_faults([{"action": "*", "kind": "throttle", "rate": 1.0}])
    assert error_of(ec2.describe_subnets, SubnetIds=list(world.subnet_ids)) == \
        ("RequestLimitExceeded", 503)
    control.clear_faults()
    assert ip_count(ec2, eni_id) == 1
    ec2.assign_private_ip_addresses(NetworkInterfaceId=eni_id, SecondaryPrivateIpAddressCount=1)
    assert ip_count(ec2, eni_id) == 2


def test_fault_rate_is_seeded_and_partial(emulator, control, world):
    ec2 = make_client(emulator.endpoint)

    def outcomes() -> list[bool]:
        control.set_faults([{"action": "DescribeSubnets", "kind": "5xx", "rate": 0.5}], seed=7)
        seen = []
        for _ in range(20):
            try:
                ec2.describe_subnets(SubnetIds=list(world.subnet_ids))
                seen.append(True)
            except ClientError:
                seen.append(False)
        return seen

    first = outcomes()
    assert any(first) and not all(first)
    assert outcomes() == first


def test_timeout_fault_stalls_past_the_client_timeout_and_changes_nothing(emulator, control,
                                                                        world):
    eni_id = world.instances[0].primary_eni_id
    control.set_faults([{"action": "AssignPrivateIpAddresses", "kind": "timeout",
                         "rate": 1.0, "seconds": 3}])
    impatient = make_client(emulator.endpoint, read_timeout=1)
    with pytest.raises(ReadTimeoutError):
        impatient.assign_private_ip_addresses(NetworkInterfaceId=eni_id,
                                              SecondaryPrivateIpAddressCount=1)
    control.clear_faults()
    assert ip_count(make_client(emulator.endpoint), eni_id) == 1


def test_bad_control_input_is_refused_by_name_and_changes_nothing(emulator, control):
    control.set_faults([{"action": "DescribeSubnets", "kind": "throttle", "rate": 0.0}])
    for bad, named in (([{"action": "X", "kind": "explode", "rate": 1}], "kind"),
                       ([{"action": "X", "kind": "5xx", "rate": 2}], "rate"),
                       ([{"kind": "5xx", "rate": 1}], "action")):
        with pytest.raises(ControlError, match=named):
            control.set_faults(bad)
    with pytest.raises(ControlError, match="unknown bucket setting"):
        control.set_buckets({"nonsense": {"capacity": 1}})
    with pytest.raises(ControlError, match="seconds"):
        control.set_attach_latency(-1)
    with pytest.raises(ControlError, match="limit"):
        control.set_route_table_limit(0)
    control.set_rules_off(["prefix-nitro"])
    try:
        with pytest.raises(ControlError, match="unknown rule 'prefix-slot'.*prefix-slots"):
            control.set_rules_off(["prefix-nitro", "prefix-slot"])
        with pytest.raises(ControlError, match="must be a list of rule names"):
            control._call("PUT", "rules", {"off": "prefix-slots"})
        assert control.rules_off() == ["prefix-nitro"]
    finally:
        control.set_rules_off([])
    assert control.rules_off() == []
    assert [f["kind"] for f in emulator.knobs.faults.describe()] == ["throttle"]


def test_settings_refuse_an_unknown_rule_to_switch_off():
    with pytest.raises(ValueError, match="unknown rule 'prefix'"):
        EmulatorSettings(rules_off=frozenset({"prefix"}))
    assert EmulatorSettings(rules_off=frozenset({"prefix-slots"})).rules_off == {"prefix-slots"}


def test_attach_waits_the_latency_before_the_eni_is_attached(emulator, control, world):
    ec2 = make_client(emulator.endpoint)
    node = world.instances[0]
    eni_id = ec2.create_network_interface(SubnetId=world.subnet_ids[0])["NetworkInterface"][
        "NetworkInterfaceId"]
    control.set_attach_latency(2.0)
    done = threading.Event()
    answer: dict = {}

    def attach() -> None:
        answer.update(ec2.attach_network_interface(NetworkInterfaceId=eni_id,
                                                   InstanceId=node.instance_id, DeviceIndex=1))
        done.set()

    worker = threading.Thread(target=attach)
    worker.start()
    try:
        while control.call_counts().get("AttachNetworkInterface", 0) == 0:
            assert not done.wait(0.01)
        # the call has arrived; during the latency the ENI is not attached yet
        state = {e["id"]: e for e in control.snapshot()["enis"]}[eni_id]
        assert state["instance_id"] is None and not done.is_set()
    finally:
        worker.join(timeout=10)
    assert done.is_set() and answer["AttachmentId"]
    state = {e["id"]: e for e in control.snapshot()["enis"]}[eni_id]
    assert state["instance_id"] == node.instance_id and state["device_index"] == 1


def test_control_from_another_process_drives_this_emulator(emulator, control, world):
    script = (
        "import sys; from lab.ec2.control import EmulatorControl as C; "
        "c = C(sys.argv[1]); "
        "c.set_faults([{'action': 'DescribeVpcs', 'kind': '5xx', 'rate': 1.0}]); "
        "print(c.call_counts().get('DescribeVpcs', 0))"
    )
    ec2 = make_client(emulator.endpoint)
    ec2.describe_vpcs()
    out = subprocess.run([PYTHON, "-c", script, emulator.endpoint], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "1"
    assert error_of(ec2.describe_vpcs) == ("InternalError", 500)


def test_cli_prints_its_world_and_stops_on_sigterm():
    process = subprocess.Popen(
        [PYTHON, "-m", "lab.ec2", "--nodes", "2", "--subnet", "10.0.0.0/24",
         "--subnet", "10.0.1.0/24", "--instance-type", "t3.small", "--attach-latency", "0.5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        world = json.loads(line)
        ec2 = make_client(world["endpoint"])
        found = ec2.describe_instances(
            InstanceIds=[i["instance_id"] for i in world["instances"]])["Reservations"]
        types = {i["InstanceType"] for r in found for i in r["Instances"]}
        assert types == {"t3.small"} and len(world["subnet_ids"]) == 2
        assert {i["primary_ip"] for i in world["instances"]} == {"10.0.0.4", "10.0.1.4"}
        assert EmulatorControl(world["endpoint"]).health()["ok"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def test_cli_refuses_a_bad_layout_by_name():
    done = subprocess.run([PYTHON, "-m", "lab.ec2", "--subnet", "10.9.0.0/24"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "not inside the VPC" in done.stderr


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"uemu-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_listen_in_netns_serves_inside_the_namespace_until_stopped(netns):
    probe = ("import sys, boto3; from botocore.config import Config; "
             "c = boto3.client('ec2', endpoint_url=sys.argv[1], region_name='us-east-1', "
             "aws_access_key_id='testing', aws_secret_access_key='testing', "
             "config=Config(retries={'total_max_attempts': 1}, connect_timeout=2, read_timeout=5)); "
             "print(sorted(v['CidrBlock'] for v in c.describe_vpcs()['Vpcs']))")
    cloud = EmulatedCloud.start()
    try:
        world = build_world(cloud.endpoint, nodes=0, vpc_cidr="10.42.0.0/16",
                            subnet_cidrs=("10.42.0.0/24",))
        inside = cloud.listen_in_netns(f"/var/run/netns/{netns}")
        assert inside == cloud.endpoint
        out = subprocess.run(["ip", "netns", "exec", netns, PYTHON, "-c", probe, inside],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert world.vpc_cidr in out.stdout
    finally:
        cloud.stop()
    after = subprocess.run(["ip", "netns", "exec", netns, PYTHON, "-c", probe, inside],
                           capture_output=True, text=True, timeout=60)
    assert after.returncode != 0 and "Could not connect" in after.stderr


def test_listen_in_netns_refuses_a_missing_namespace(emulator):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        emulator.listen_in_netns(f"/var/run/netns/uemu-missing-{secrets.token_hex(3)}")
