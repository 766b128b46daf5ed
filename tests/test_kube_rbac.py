"""The RBAC list is exact: the whole integration, driven through every feature against the
fake API server, makes exactly the (resource, verb) requests that rbac.RULES grants, and
every agent request logged by any fake server in this test session is covered too."""
from __future__ import annotations

import json

from fake_apiserver.fixtures import (AGENT_REQUESTS, add_node, add_pod, apiserver, settings_for,  # noqa: F401
                                     wait_until)
from ipam_daemon.kube import IPStatus, KubeIntegration, Reason
from ipam_daemon.kube.client import USER_AGENT
from ipam_daemon.kube.rbac import RULES, cluster_role_rules, permission_set, role_rules


def test_integration_uses_exactly_the_listed_permissions(apiserver, tmp_path):
    add_node(apiserver, labels={"underlay.io/config": "tuned"})
    apiserver.create("configmaps", {"metadata": {"name": "tuned", "namespace": "kube-system"},
                                    "data": {"config.json": json.dumps({"warm_ips": 4})}})
    live = add_pod(apiserver, "shop", "web-0")
    rows = [("c-live", "shop", "web-0", live["metadata"]["uid"], str(tmp_path / "live")),
            ("c-dead", "shop", "web-9", "uid-gone", str(tmp_path / "dead"))]
    released, cordons, config_maps = [], [], []
    kube = KubeIntegration(settings_for(apiserver), {"cluster": "c1"}, list_allocations=lambda: list(rows),
                           release=lambda key: (released.append(key), rows.pop(1)), on_cordon=cordons.append,
                           on_config_map=lambda kind, cm: config_maps.append((kind, cm["metadata"]["name"])))
    try:
        identity = kube.start()
        assert identity.config["warm_ips"] == 4 and identity.source == "kubernetes"
        wait_until(lambda: released == ["c-dead"], "the dead pod's allocation released")
        wait_until(lambda: ("ADDED", "tuned") in config_maps, "the ConfigMap watch")
        assert kube.warn_pod("shop", "web-0", live["metadata"]["uid"], Reason.SUBNET_EXHAUSTED, "0 free")
        assert kube.warn_node(Reason.ENI_LIMIT_REACHED, "3 of 3 ENIs in use")
        kube.publish_ip_status(IPStatus(capacity=9, assigned=9, warm=0, available=False))
        apiserver.patch("nodes", "node-a", {"spec": {"unschedulable": True}})
        wait_until(lambda: cordons == [False, True], "the cordon")
        assert kube.cordoned
        wait_until(lambda: len(apiserver.list("events")) == 2, "both events")
        wait_until(lambda: "underlay.io/ip-capacity" in
                   (apiserver.get("nodes", "node-a")["metadata"].get("annotations") or {}), "the annotations")
    finally:
        kube.stop()
    requests = apiserver.agent_requests(USER_AGENT)
    used = {(r.api_group, r.resource, r.verb) for r in requests}
    assert used == set(permission_set())
    # what the Role grants (not the ClusterRole) is asked for in its namespace only
    namespaced = {(r.api_group, r.resource) for r in RULES if r.namespaced}
    assert {r.namespace for r in requests if (r.api_group, r.resource) in namespaced} \
        == {"kube-system"}


def test_every_logged_agent_request_is_granted():
    granted = permission_set()
    logged = {(r.api_group, r.resource, r.verb) for r in AGENT_REQUESTS}
    assert logged <= granted, f"requests outside rbac.RULES: {sorted(logged - granted)}"
    namespaced = {(r.api_group, r.resource) for r in RULES if r.namespaced}
    outside = {(r.resource, r.verb, r.namespace) for r in AGENT_REQUESTS
               if (r.api_group, r.resource) in namespaced and r.namespace != "kube-system"}
    assert not outside, f"requests outside the Role's namespace: {sorted(outside)}"


def test_cluster_role_rules_shape():
    rules = cluster_role_rules()
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch", "watch"]} in rules
    assert role_rules() == [{"apiGroups": [""], "resources": ["configmaps"],
                             "verbs": ["get", "list", "watch"]}]
    assert sum(len(r["verbs"]) for r in rules + role_rules()) == len(permission_set()) \
        == sum(len(r.verbs) for r in RULES)
