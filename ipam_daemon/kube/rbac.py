"""Every Kubernetes permission the agent's Kubernetes module uses, as data.

The deploy manifests turn :data:`RULES` into the agent's ClusterRole and its Role with
nothing more, and a test compares them with the (verb, resource) pairs the fake API server
logged for the agent's requests. ConfigMaps are read only in
``KubeSettings.override_namespace`` (kube-system), so they are granted by a Role there: the
agent on every node must not be able to read every ConfigMap of the cluster. The rest is
cluster-scoped (Nodes) or cluster-wide (pods listed by ``spec.nodeName``, events in the
pods' namespaces)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    api_group: str  # "" is the core group
    resource: str  # "nodes/status" is a subresource
    verbs: tuple[str, ...]
    why: str = ""
    namespaced: bool = False  # granted in the override namespace only (the Role)


RULES: tuple[Rule, ...] = (
    Rule("", "nodes", ("get",), "node identity: spec.providerID and the override label"),
    Rule("", "nodes", ("list", "watch"), "cordon detection and identity catch-up (this node);"
         " vpc-route mode: deleted Nodes (all nodes), to remove their routes"),
    Rule("", "nodes", ("patch",), "IP capacity annotations (merge patch)"),
    Rule("", "nodes/status", ("patch",), "the UnderlayIPAvailable condition (strategic merge patch)"),
    Rule("", "pods", ("list", "watch"), "pod garbage collection (spec.nodeName=<this node>)"),
    Rule("", "configmaps", ("get",), "the per-node override named by the node label",
         namespaced=True),
    Rule("", "configmaps", ("list", "watch"), "edits of the agent's ConfigMap and of the node's"
         " override, applied without a restart", namespaced=True),
    Rule("", "events", ("create",), "Warning events on pods and on the node"),
)


def permission_set(rules: tuple[Rule, ...] = RULES) -> frozenset[tuple[str, str, str]]:
    """{(api_group, resource, verb)}: the form the fake server's log is compared in."""
    return frozenset((r.api_group, r.resource, verb) for r in rules for verb in r.verbs)


def cluster_role_rules(rules: tuple[Rule, ...] = RULES) -> list[dict]:
    """The ClusterRole ``rules`` list, one entry per (group, resource), verbs sorted."""
    return _merged(r for r in rules if not r.namespaced)


def role_rules(rules: tuple[Rule, ...] = RULES) -> list[dict]:
    """The Role's ``rules`` list (in the override namespace), shaped as the ClusterRole's."""
    return _merged(r for r in rules if r.namespaced)


def _merged(rules: Iterable[Rule]) -> list[dict]:
    merged: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        merged.setdefault((rule.api_group, rule.resource), set()).update(rule.verbs)
    return [{"apiGroups": [group], "resources": [resource], "verbs": sorted(verbs)}
            for (group, resource), verbs in sorted(merged.items())]
