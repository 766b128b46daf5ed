"""Who this node is and how it is configured, from its Node object.

- The instance id comes from ``spec.providerID`` (``aws:///<zone>/<instance id>``), else
  from ``instance_id`` in the configuration, else from the instance metadata service
  (IMDSv2 at ``imds_endpoint``, :mod:`cloud.imds`), as an EC2 node normally learns it.
  With none of them the error names the sources tried. The pod CIDR (vpc-route mode) comes
  from ``spec.podCIDR`` when the Node has one.
- A node label (default ``underlay.io/config``) may name a ConfigMap in the agent's
  namespace; its ``config.json`` key (a JSON object; other keys are taken one by one, each
  value JSON or a plain string) is merged over the base configuration dict and validated by
  the agent's own loader before it is used. A bad override is an error naming the ConfigMap
  and the key; the caller keeps the configuration it had.
- :func:`resolve_identity_within` bounds the wait at boot: when the API server does not
  answer in time the agent starts from its configuration and catches up later."""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from cloud.errors import CloudError
from cloud.imds import read_instance_identity

from ipam_daemon.backoff import Backoff

from .client import KubeApi, KubeError, KubeNotFound

logger = logging.getLogger(__name__)
Obj = dict[str, Any]
Validator = Callable[[dict], Any]

_PROVIDER_ID = re.compile(r"aws:///(?P<zone>[a-z0-9-]*)/(?P<instance>i-[0-9a-f]{8,17})")
CONFIG_KEY = "config.json"


class IdentityError(ValueError):
    """The Node or its override ConfigMap is unusable; the message names what and why."""


@dataclass(frozen=True)
class NodeIdentity:
    node_name: str
    instance_id: str
    zone: str
    config: Mapping[str, Any] = field(repr=False)
    source: str  # "kubernetes", "instance metadata" or "configuration" (fallback)
    override: str = ""  # "<namespace>/<configmap>" when one was applied
    unschedulable: bool = False
    problem: str = ""  # fallback: why the Node could not be used (names what was tried)


def parse_provider_id(provider_id: str) -> tuple[str, str]:
    """``aws:///us-east-1a/i-0123456789abcdef0`` -> (zone, instance id)."""
    match = _PROVIDER_ID.fullmatch(provider_id or "")
    if not match:
        raise IdentityError(f"spec.providerID={provider_id!r}: expected aws:///<zone>/i-<hex>")
    return match["zone"], match["instance"]


def default_validator(values: dict) -> Any:
    """The agent's own loader, so an override is validated exactly like the file."""
    from ipam_daemon.config import parse_config

    return parse_config(values, {})


def merge_override(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """Override keys replace base keys; nested objects merge key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_override(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_override_data(config_map: Obj) -> dict:
    where = f"configmap {config_map.get('metadata', {}).get('namespace', '')}/" \
            f"{config_map.get('metadata', {}).get('name', '')}"
    data = config_map.get("data") or {}
    values: dict = {}
    for key, text in data.items():
        if key == CONFIG_KEY:
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise IdentityError(f"{where}: key {CONFIG_KEY} is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise IdentityError(f"{where}: key {CONFIG_KEY} must hold a JSON object")
            values.update(parsed)
        else:
            try:
                values[key] = json.loads(text)
            except ValueError:
                values[key] = text
    return values


def identity_from_node(node: Obj, base_config: Mapping[str, Any], config_map: Obj | None,
                       validate: Validator, metadata: tuple[str, str] | None = None) -> NodeIdentity:
    """Pure: the node (and its override ConfigMap, if any) -> identity and merged config.
    ``metadata`` is (zone, instance id) from the instance metadata service, used only when
    the Node has no providerID and the configuration no instance_id."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    name = meta.get("name", "")
    source = "kubernetes"
    if spec.get("providerID"):
        zone, instance_id = parse_provider_id(spec["providerID"])
    elif base_config.get("instance_id"):
        zone, instance_id = "", str(base_config["instance_id"])
    elif metadata is not None:
        (zone, instance_id), source = metadata, "instance metadata"
    else:
        raise IdentityError(f"node {name}: no spec.providerID and no instance_id in the configuration")
    config = dict(base_config)
    override = ""
    if config_map is not None:
        override = f"{config_map['metadata'].get('namespace', '')}/{config_map['metadata']['name']}"
        config = merge_override(base_config, read_override_data(config_map))
    config["instance_id"] = instance_id
    config["node_name"] = name
    if spec.get("podCIDR"):  # vpc-route mode carves pod addresses from it
        config["pod_cidr"] = spec["podCIDR"]
    try:
        validate(config)
    except ValueError as exc:
        raise IdentityError(f"node {name}: override {override or '(none)'} is invalid: {exc}") from None
    return NodeIdentity(name, instance_id, zone, config, source, override,
                        bool(spec.get("unschedulable")))


def fallback_identity(node_name: str, base_config: Mapping[str, Any], problem: str = "") -> NodeIdentity:
    return NodeIdentity(node_name, str(base_config.get("instance_id") or ""), "", dict(base_config),
                        "configuration", problem=problem)


def ask_instance_metadata(node: Obj, base_config: Mapping[str, Any]) -> tuple[str, str] | None:
    """(zone, instance id) from the instance metadata service when neither the Node nor the
    configuration names the instance; None when one of them does. IdentityError naming both
    sources tried when the service fails too (or ``imds_endpoint`` is empty)."""
    name = (node.get("metadata") or {}).get("name", "")
    if (node.get("spec") or {}).get("providerID") or base_config.get("instance_id"):
        return None
    tried = f"node {name}: no instance id: (1) spec.providerID of Node {name} is empty"
    endpoint = str(base_config.get("imds_endpoint", "") or "")
    if not endpoint:
        raise IdentityError(f"{tried}; (2) the instance metadata service is off (imds_endpoint"
                            " is empty) and instance_id is not configured")
    try:
        found = read_instance_identity(endpoint)
    except (CloudError, ValueError) as exc:
        raise IdentityError(f"{tried}; (2) {exc}") from None
    return found.zone, found.instance_id


def resolve_identity(api: KubeApi, node_name: str, base_config: Mapping[str, Any],
                     validate: Validator = default_validator) -> NodeIdentity:
    """One attempt: read the Node and its override ConfigMap. Raises KubeError when the API
    server fails, IdentityError when what it returns is unusable."""
    node = api.get_node(node_name)
    label = api.settings.override_label
    wanted = (node.get("metadata", {}).get("labels") or {}).get(label)
    config_map = None
    if wanted:
        try:
            config_map = api.get_config_map(api.settings.override_namespace, wanted)
        except KubeNotFound:
            raise IdentityError(f"node {node_name}: label {label}={wanted} names a ConfigMap that does not "
                                f"exist in namespace {api.settings.override_namespace}") from None
    return identity_from_node(node, base_config, config_map, validate,
                              ask_instance_metadata(node, base_config))


def resolve_identity_within(api: KubeApi, node_name: str, base_config: Mapping[str, Any], wait: float,
                            stop: threading.Event, validate: Validator = default_validator,
                            clock: Callable[[], float] = time.monotonic) -> NodeIdentity:
    """Retry :func:`resolve_identity` for at most ``wait`` seconds, then fall back to the
    configuration (``source="configuration"``). An invalid override falls back at once."""
    deadline = clock() + wait
    backoff = Backoff(api.settings.backoff_min, api.settings.backoff_max)
    while True:
        try:
            return resolve_identity(api, node_name, base_config, validate)
        except IdentityError as exc:
            logger.error("%s; using the configuration as it is", exc)
            return fallback_identity(node_name, base_config, str(exc))
        except KubeError as exc:
            left = deadline - clock()
            if left <= 0 or stop.is_set():
                logger.warning("node %s: API server unavailable (%s); starting from the configuration "
                               "and catching up later", node_name, exc)
                return fallback_identity(node_name, base_config)
            stop.wait(min(backoff.next_delay(), left))
