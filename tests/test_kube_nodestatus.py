"""IP capacity on the Node: the UnderlayIPAvailable condition flips False when the pool is
exhausted and back True when IPs are free again (the kubelet's own conditions stay), the
capacity annotations follow, patches go out only on change and rate-limited; cordoning is
seen and reported."""
from __future__ import annotations

from fake_apiserver.fixtures import add_node, apiserver, kube_api, wait_until  # noqa: F401
from ipam_daemon.kube.nodestatus import (CONDITION_TYPE, CordonWatcher, IPStatus, NodeStatusPublisher)

EXHAUSTED = IPStatus(capacity=9, assigned=9, warm=0, available=False, reason="ENILimitReached",
                     message="3 of 3 ENIs in use, all full; 9 of 9 pod IPs assigned")
FREED = IPStatus(capacity=9, assigned=7, warm=2, available=True)


def condition(server, node="node-a") -> dict | None:
    conditions = server.get("nodes", node)["status"].get("conditions", [])
    return next((c for c in conditions if c["type"] == CONDITION_TYPE), None)


def annotations(server, node="node-a") -> dict:
    return server.get("nodes", node)["metadata"].get("annotations") or {}


def test_condition_flips_false_and_back_true(apiserver):
    add_node(apiserver)
    with kube_api(apiserver) as api:
        publisher = NodeStatusPublisher(api, "node-a", min_interval=0.0).start()
        try:
            publisher.update(FREED)
            wait_until(lambda: (condition(apiserver) or {}).get("status") == "True", "the True condition")
            first_transition = condition(apiserver)["lastTransitionTime"]
            publisher.update(EXHAUSTED)
            wait_until(lambda: condition(apiserver)["status"] == "False", "the False condition")
            cond = condition(apiserver)
            assert cond["reason"] == "ENILimitReached" and "3 of 3 ENIs" in cond["message"]
            wait_until(lambda: annotations(apiserver).get("underlay.io/ip-warm") == "0", "the annotations")
            assert annotations(apiserver)["underlay.io/ip-assigned"] == "9"
            publisher.update(FREED)
            wait_until(lambda: condition(apiserver)["status"] == "True", "the condition back to True")
            assert condition(apiserver)["reason"] == "IPsAvailable"
            assert condition(apiserver)["lastTransitionTime"] >= first_transition
            wait_until(lambda: annotations(apiserver).get("underlay.io/ip-warm") == "2", "warm back to 2")
            assert annotations(apiserver)["underlay.io/ip-capacity"] == "9"
            kubelet = [c for c in apiserver.get("nodes", "node-a")["status"]["conditions"] if c["type"] == "Ready"]
            assert kubelet == [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        finally:
            publisher.stop()
    kinds = {(r.verb, r.resource) for r in apiserver.requests}
    assert kinds == {("patch", "nodes/status"), ("patch", "nodes")}


def test_patches_only_on_change_and_rate_limited(apiserver):
    add_node(apiserver)
    now = [100.0]
    with kube_api(apiserver) as api:
        publisher = NodeStatusPublisher(api, "node-a", min_interval=10.0, clock=lambda: now[0])
        for _ in range(3):
            publisher.update(FREED)
            assert publisher.publish_once() is None
        assert publisher.patches == {"condition": 1, "annotations": 1, "failed": 0}
        now[0] += 1.0
        publisher.update(EXHAUSTED)
        assert publisher.publish_once() == 9.0  # both wait for the interval
        assert condition(apiserver)["status"] == "True"
        now[0] += 9.0
        assert publisher.publish_once() is None
        assert condition(apiserver)["status"] == "False"
        assert publisher.patches == {"condition": 2, "annotations": 2, "failed": 0}
    assert sum(r.verb == "patch" for r in apiserver.requests) == 4


def test_failed_patch_is_retried(apiserver):
    add_node(apiserver)
    apiserver.fail_next(2, status=500, path_contains="/status")
    with kube_api(apiserver) as api:
        publisher = NodeStatusPublisher(api, "node-a", min_interval=0.0).start()
        try:
            publisher.update(EXHAUSTED)
            wait_until(lambda: (condition(apiserver) or {}).get("status") == "False", "the condition after retries")
            assert publisher.patches["failed"] == 2
        finally:
            publisher.stop()


def test_cordon_seen_at_start_and_on_change(apiserver):
    add_node(apiserver, unschedulable=True)
    changes = []
    with kube_api(apiserver) as api:
        cordon = CordonWatcher(api, "node-a", changes.append).start()
        try:
            wait_until(lambda: changes == [True], "the cordon from the first list")
            assert cordon.is_cordoned
            apiserver.patch("nodes", "node-a", {"spec": {"unschedulable": None}})
            wait_until(lambda: changes == [True, False], "the uncordon")
            assert not cordon.is_cordoned
            apiserver.patch("nodes", "node-a", {"metadata": {"labels": {"x": "y"}}})  # not a cordon change
            apiserver.patch("nodes", "node-a", {"spec": {"unschedulable": True}})
            wait_until(lambda: changes == [True, False, True], "the second cordon")
        finally:
            cordon.stop()
