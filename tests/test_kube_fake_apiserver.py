"""The fake API server speaks the protocol the real client expects: typed reads, Status
errors, selectors, chunked lists, watches with resourceVersion and 410, the three patch
types, injected faults and the request log."""
from __future__ import annotations

import json

import pytest
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from fake_apiserver import FakeApiServer
from fake_apiserver.fixtures import add_node, add_pod, apiserver  # noqa: F401
from fake_apiserver.patch import PatchError, apply_json_patch, apply_strategic_merge_patch
from fake_apiserver.selectors import SelectorError, parse_label_selector

TIMEOUT = (1, 5)


@pytest.fixture
def core(apiserver: FakeApiServer):
    configuration = k8s.Configuration()
    configuration.host = apiserver.url
    api_client = k8s.ApiClient(configuration)
    try:
        yield k8s.CoreV1Api(api_client)
    finally:
        api_client.close()


def test_discovery_documents_deserialize(apiserver, core):
    api_client = core.api_client
    assert k8s.CoreApi(api_client).get_api_versions(_request_timeout=TIMEOUT).versions == ["v1"]
    assert k8s.VersionApi(api_client).get_code(_request_timeout=TIMEOUT).major == "1"
    names = {r.name for r in core.get_api_resources(_request_timeout=TIMEOUT).resources}
    assert {"pods", "nodes", "nodes/status", "configmaps", "events"} <= names


def test_typed_read_and_status_errors(apiserver, core):
    add_node(apiserver, "n1")
    node = core.read_node("n1", _request_timeout=TIMEOUT)
    assert node.spec.provider_id == "aws:///us-east-1a/i-0123456789abcdef0"
    with pytest.raises(ApiException) as info:
        core.read_node("missing", _request_timeout=TIMEOUT)
    status = json.loads(info.value.body)
    assert (info.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    with pytest.raises(ApiException) as info:
        core.create_namespaced_pod("ns", {"metadata": {"name": "p"}, "spec": {"containers": []}},
                                   _request_timeout=TIMEOUT)
    assert info.value.status == 422


def test_selectors_and_chunked_list(apiserver, core):
    for i in range(5):
        add_pod(apiserver, "ns", f"p{i}", node="n1" if i % 2 == 0 else "n2")
    first = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1", limit=2,
                                             _request_timeout=TIMEOUT)
    assert [p.metadata.name for p in first.items] == ["p0", "p2"]
    apiserver.delete("pods", "p4", "ns")  # the continued list still serves its snapshot
    rest = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1", limit=2,
                                            _continue=first.metadata._continue, _request_timeout=TIMEOUT)
    assert [p.metadata.name for p in rest.items] == ["p4"] and rest.metadata._continue is None
    assert rest.metadata.resource_version == first.metadata.resource_version
    with pytest.raises(ApiException) as info:
        core.list_pod_for_all_namespaces(field_selector="spec.bogus=1", _request_timeout=TIMEOUT)
    assert info.value.status == 400


def test_label_selector_forms():
    obj = {"metadata": {"labels": {"tier": "web", "env": "prod"}}}
    assert parse_label_selector("tier=web,env in (prod, dev)")(obj)
    assert parse_label_selector("tier!=db,!gpu,env")(obj)
    assert not parse_label_selector("env notin (prod)")(obj)
    with pytest.raises(SelectorError):
        parse_label_selector("tier in prod")


def test_watch_replays_from_rv_and_answers_410_after_compaction(apiserver, core):
    add_pod(apiserver, "ns", "a", node="n1")
    listed = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=n1", _request_timeout=TIMEOUT)
    add_pod(apiserver, "ns", "b", node="n1")
    apiserver.patch("pods", "a", {"spec": {"nodeName": "n9"}}, "ns")  # leaves the selector
    resp = core.list_pod_for_all_namespaces(
        watch=True, resource_version=listed.metadata.resource_version, field_selector="spec.nodeName=n1",
        timeout_seconds=1, allow_watch_bookmarks=True, _preload_content=False, _request_timeout=TIMEOUT)
    events = [json.loads(line) for line in resp.read().decode().splitlines()]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "b"), ("DELETED", "a"), ("BOOKMARK", None)]
    apiserver.compact()
    resp = core.list_pod_for_all_namespaces(watch=True, resource_version=listed.metadata.resource_version,
                                            timeout_seconds=1, _preload_content=False, _request_timeout=TIMEOUT)
    (event,) = [json.loads(line) for line in resp.read().decode().splitlines()]
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_patch_types_on_node_and_status(apiserver, core):
    add_node(apiserver, "n1")
    core.patch_node_status("n1", {"status": {"conditions": [{"type": "X", "status": "False"}]}},
                           _request_timeout=TIMEOUT)
    node = core.patch_node_status("n1", {"status": {"conditions": [{"type": "X", "status": "True"}]},
                                         "metadata": {"labels": {"ignored": "yes"}}}, _request_timeout=TIMEOUT)
    assert [(c.type, c.status) for c in node.status.conditions] == [("Ready", "True"), ("X", "True")]
    assert "ignored" not in node.metadata.labels  # the status subresource writes status only
    node = core.patch_node("n1", [{"op": "add", "path": "/spec/unschedulable", "value": True}],
                           _request_timeout=TIMEOUT)
    assert node.spec.unschedulable is True


def test_patch_functions():
    doc = {"status": {"conditions": [{"type": "A", "status": "True"}, {"type": "B", "status": "True"}]}}
    out = apply_strategic_merge_patch(doc, {"status": {"conditions": [{"type": "B", "$patch": "delete"}]}})
    assert out["status"]["conditions"] == [{"type": "A", "status": "True"}]
    assert apply_json_patch({"a": [1, 2]}, [{"op": "add", "path": "/a/-", "value": 3},
                                            {"op": "remove", "path": "/a/0"}]) == {"a": [2, 3]}
    with pytest.raises(PatchError):
        apply_json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])


def test_injected_faults_and_log(apiserver, core):
    add_node(apiserver, "n1")
    apiserver.fail_next(2, status=503, path_contains="/nodes/n1")
    for _ in range(2):
        with pytest.raises(ApiException) as info:
            core.read_node("n1", _request_timeout=TIMEOUT)
        assert info.value.status == 503
    assert core.read_node("n1", _request_timeout=TIMEOUT).metadata.name == "n1"
    assert [(r.verb, r.resource, r.status) for r in apiserver.requests] == [("get", "nodes", 503)] * 2 + [
        ("get", "nodes", 200)]
