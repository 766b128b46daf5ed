"""The wire types of ``cni.spec`` as TypedDicts: CNI netconf and result, and the agent
socket protocol's request and reply bodies (documented in ``cni.spec``).

They live apart from ``cni.spec`` because building them needs ``typing`` (about 5 ms of
start-up), which the CNI executable does not otherwise load; ``cni.spec`` re-exports them
lazily, so ``from cni.spec import AttachRequest`` keeps working.

No ``from __future__ import annotations`` here: with string annotations ``TypedDict``
cannot see ``NotRequired`` and would count every key as required.
"""
from typing import Any, NotRequired, TypedDict


# ---- CNI wire types -------------------------------------------------------------------

class Interface(TypedDict):
    name: str
    mac: NotRequired[str]
    mtu: NotRequired[int]
    sandbox: NotRequired[str]


class IpConfig(TypedDict):
    address: str  # CIDR
    gateway: NotRequired[str]
    interface: NotRequired[int]


class RouteEntry(TypedDict):
    dst: str
    gw: NotRequired[str]


class Result(TypedDict):
    cniVersion: str
    interfaces: NotRequired[list[Interface]]
    ips: NotRequired[list[IpConfig]]
    routes: NotRequired[list[RouteEntry]]
    dns: NotRequired[dict[str, Any]]


class NetConf(TypedDict):
    cniVersion: str
    name: str
    type: str
    socket: NotRequired[str]
    mode: NotRequired[str]
    mtu: NotRequired[int]
    timeout: NotRequired[float]
    prevResult: NotRequired[Result]
    runtimeConfig: NotRequired[dict[str, Any]]


# ---- agent socket protocol ------------------------------------------------------------

class Attachment(TypedDict):
    containerID: str
    ifname: str


class AttachRequest(TypedDict):
    api: int
    cni_version: str
    network: str
    container_id: str
    ifname: str
    netns: str
    mode: str
    mtu: NotRequired[int]
    pod_namespace: NotRequired[str]
    pod_name: NotRequired[str]
    pod_uid: NotRequired[str]
    prev_result: NotRequired[Result]


class DetachRequest(TypedDict):
    api: int
    network: str
    container_id: str
    ifname: str
    netns: NotRequired[str]  # may be empty: DEL without a netns still releases the IP
    pod_namespace: NotRequired[str]
    pod_name: NotRequired[str]


class CheckRequest(TypedDict):
    api: int
    cni_version: str
    network: str
    container_id: str
    ifname: str
    netns: str
    prev_result: NotRequired[Result]


class GcRequest(TypedDict):
    api: int
    network: str
    valid_attachments: list[Attachment]


class StatusReply(TypedDict):
    ready: bool
    available: int
    code: NotRequired[int]
    msg: NotRequired[str]


class ErrorReply(TypedDict):
    code: int
    msg: str
    details: NotRequired[str]
