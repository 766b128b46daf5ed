"""The agent's door to the API server: settings, an ApiClient built from in-cluster config,
a kubeconfig or a host URL, a thin call layer where every request carries a timeout and the
client's errors become ours, and the list-then-watch loop (:class:`Watcher`).

    KubeError
    ├── KubeUnavailable   retryable: connection refused/reset, timeouts, 429, 5xx
    │   └── KubeGone      410: the resourceVersion is too old, relist
    ├── KubeNotFound      404
    └── KubeRejected      any other 4xx (forbidden, invalid): retrying will not help
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Callable

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.rest import ApiException

logger = logging.getLogger(__name__)
Obj = dict[str, Any]

USER_AGENT = "underlay-agent/0.1"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class KubeError(Exception):
    retryable = False

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class KubeUnavailable(KubeError):
    retryable = True


class KubeGone(KubeUnavailable):
    pass


class KubeNotFound(KubeError):
    pass


class KubeRejected(KubeError):
    pass


@dataclass(frozen=True)
class KubeSettings:
    """How to reach the API server and how the loops behave. Exactly one source:
    ``host`` (tests, demo), ``kubeconfig`` (a path) or ``in_cluster``."""

    node_name: str = ""
    host: str = ""
    kubeconfig: str = ""
    in_cluster: bool = False
    token: str = ""  # bearer token for ``host``; never logged
    connect_timeout: float = 3.0
    request_timeout: float = 10.0
    watch_timeout: int = 300  # server-side timeoutSeconds of one watch request
    boot_wait_seconds: float = 10.0
    backoff_min: float = 0.2
    backoff_max: float = 30.0
    override_label: str = "underlay.io/config"
    override_namespace: str = "kube-system"
    gc_grace_seconds: float = 60.0
    gc_interval: float = 30.0
    event_interval: float = 60.0  # at most one event per (reason, object) per interval
    event_queue_size: int = 256
    status_min_interval: float = 10.0

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return (f"KubeSettings(node_name={self.node_name!r}, host={self.host!r}, "
                f"kubeconfig={self.kubeconfig!r}, in_cluster={self.in_cluster})")

    def validate(self) -> "KubeSettings":
        sources = [bool(self.host), bool(self.kubeconfig), self.in_cluster]
        if sum(sources) != 1:
            raise ValueError("kube: set exactly one of host, kubeconfig, in_cluster "
                             f"(got host={self.host!r}, kubeconfig={self.kubeconfig!r}, "
                             f"in_cluster={self.in_cluster})")
        if not self.node_name:
            raise ValueError("kube: node_name is required (the Node this agent runs on)")
        for key in ("connect_timeout", "request_timeout", "backoff_min", "backoff_max"):
            if getattr(self, key) <= 0:
                raise ValueError(f"kube: {key}={getattr(self, key)!r} must be > 0 seconds")
        for key in ("boot_wait_seconds", "gc_grace_seconds", "gc_interval", "event_interval",
                    "status_min_interval"):
            if getattr(self, key) < 0:
                raise ValueError(f"kube: {key}={getattr(self, key)!r} must be >= 0 seconds")
        if self.watch_timeout < 1:
            raise ValueError(f"kube: watch_timeout={self.watch_timeout!r} must be >= 1 second")
        if self.event_queue_size < 1:
            raise ValueError(f"kube: event_queue_size={self.event_queue_size!r} must be >= 1")
        return self


def build_api_client(settings: KubeSettings) -> k8s.ApiClient:
    settings.validate()
    configuration = k8s.Configuration()
    if settings.host:
        configuration.host = settings.host
        if settings.token:
            configuration.api_key = {"authorization": settings.token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
    elif settings.kubeconfig:
        k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    else:
        k8s_config.load_incluster_config(client_configuration=configuration)
    configuration.retries = 1  # our loops back off themselves
    api_client = k8s.ApiClient(configuration)
    api_client.user_agent = USER_AGENT
    return api_client


def translate_error(exc: BaseException, what: str) -> KubeError:
    """Map the client's exceptions to ours, in one place."""
    if isinstance(exc, ApiException):
        status = exc.status or 0
        reason = exc.reason or ""
        try:
            reason = json.loads(exc.body).get("message", reason) if exc.body else reason
        except (ValueError, AttributeError):
            pass
        message = f"{what}: HTTP {status} {reason}"
        if status == 410:
            return KubeGone(message, status)
        if status == 404:
            return KubeNotFound(message, status)
        if status == 0 or status == 429 or status >= 500:
            return KubeUnavailable(message, status)
        return KubeRejected(message, status)
    return KubeUnavailable(f"{what}: {type(exc).__name__}: {exc}")


_TRANSPORT_ERRORS = (ApiException, urllib3.exceptions.HTTPError, OSError)


class KubeApi:
    """The calls the agent makes (rbac.py lists them); each returns the JSON as a dict."""

    def __init__(self, api_client: k8s.ApiClient, settings: KubeSettings) -> None:
        self.api_client = api_client
        self.core = k8s.CoreV1Api(api_client)
        self.settings = settings
        self.timeout = (settings.connect_timeout, settings.request_timeout)

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Obj:
        try:
            resp = method(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
            data = resp.data
        except _TRANSPORT_ERRORS as exc:
            raise translate_error(exc, what) from None
        try:
            return json.loads(data) if data else {}
        except ValueError:
            raise KubeUnavailable(f"{what}: the API server sent a body that is not JSON") from None

    def get_node(self, name: str) -> Obj:
        return self.call(f"get node {name}", self.core.read_node, name)

    def get_config_map(self, namespace: str, name: str) -> Obj:
        return self.call(f"get configmap {namespace}/{name}", self.core.read_namespaced_config_map,
                         name, namespace)

    def create_event(self, namespace: str, body: Obj) -> Obj:
        return self.call(f"create event in {namespace}", self.core.create_namespaced_event, namespace, body)

    def patch_node_status(self, name: str, body: Obj) -> Obj:
        """Strategic merge patch on nodes/status (conditions merge by ``type``)."""
        return self.call(f"patch node {name} status", self.core.patch_node_status, name, body)

    def merge_patch_node(self, name: str, body: Obj) -> Obj:
        """JSON merge patch on the node (metadata such as annotations)."""
        headers = {"Accept": "application/json", "Content-Type": MERGE_PATCH}
        return self.call(f"patch node {name}", self.api_client.call_api, "/api/v1/nodes/{name}", "PATCH",
                         {"name": name}, [], headers, body=body, auth_settings=["BearerToken"],
                         _return_http_data_only=True)

    def list_page(self, method: Callable[..., Any], selectors: dict, limit: int, cont: str | None) -> Obj:
        kwargs = dict(selectors, limit=limit)
        if cont:
            kwargs["_continue"] = cont
        return self.call("list", method, **kwargs)

    def open_watch(self, method: Callable[..., Any], selectors: dict, resource_version: str) -> Any:
        """Start a watch; returns the streaming urllib3 response (caller closes it)."""
        timeout = self.settings.watch_timeout
        try:
            return method(**selectors, watch=True, resource_version=resource_version,
                          timeout_seconds=timeout, allow_watch_bookmarks=True, _preload_content=False,
                          _request_timeout=(self.settings.connect_timeout,
                                            timeout + self.settings.request_timeout))
        except _TRANSPORT_ERRORS as exc:
            raise translate_error(exc, "watch") from None
