"""The agent's error table (ipam_daemon.errors): every CNI code has its HTTP status, event
reason, retry class and words in one entry; the socket answers with that status; cloud
errors carry their code, so a cloud failure becomes its CNI error in one lookup."""
from __future__ import annotations

import pytest

from cloud import errors as ce
from cni.spec import CniError, Code
from ipam_daemon.api import _error_reply
from ipam_daemon.errors import ERRORS, Reason, error_from_cloud, kind_of, reason_for
from ipam_daemon.kube.events import reason_for_cloud_error


def cloud_error_classes() -> list[type[ce.CloudError]]:
    found, todo = [], [ce.CloudError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_every_code_has_one_entry():
    assert set(ERRORS) == set(Code)
    for code, kind in ERRORS.items():
        assert kind.http_status in (400, 500, 503) and kind.summary, code
        assert (kind.http_status == 400) == (code < 11), code  # the caller's own doing


@pytest.mark.parametrize("cls", cloud_error_classes(), ids=lambda c: c.__name__)
def test_every_cloud_error_carries_a_code_of_the_table(cls):
    assert Code(cls.cni_code) in ERRORS


@pytest.mark.parametrize("code", list(Code) + [199], ids=str)
def test_the_socket_answers_with_the_tables_status(code):
    status, reply = _error_reply(CniError(code, "why"))
    assert status == kind_of(code).http_status and reply == {"code": code, "msg": "why"}
    assert kind_of(199) == ERRORS[Code.AGENT_INTERNAL]


def test_a_cloud_failure_becomes_its_cni_error():
    err = error_from_cloud(ce.Throttled("Rate exceeded", code="RequestLimitExceeded",
                                        action="AssignPrivateIpAddresses"))
    assert (err.code, err.msg) == (102, "cloud API throttled: Rate exceeded on "
                                        "AssignPrivateIpAddresses")
    err = error_from_cloud(ce.SubnetExhausted("no room"), "subnet-1 has 0 free addresses")
    assert (err.code, err.msg) == (100, "subnet exhausted: subnet-1 has 0 free addresses")


@pytest.mark.parametrize("exc,reason", [
    (ce.SubnetExhausted("x"), Reason.SUBNET_EXHAUSTED),
    (ce.EniLimitReached("x"), Reason.ENI_LIMIT_REACHED),
    (ce.Throttled("x"), Reason.CLOUD_THROTTLED),
    (ce.PermissionDenied("x"), Reason.CLOUD_PERMISSION_DENIED),
    (ce.CloudUnavailable("x"), Reason.AGENT_NOT_READY),
    (ce.IpLimitReached("x"), None),  # the pool attaches another ENI: no event
    (ce.NotFound("x"), None),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_event_reasons_come_from_the_table(exc, reason):
    assert reason_for_cloud_error(exc) is reason
    assert reason_for(exc.cni_code) is reason
