"""One CNI invocation, decided in the agent.

The runtime execs the host executable (``cni/shim``, a static Go program) with the CNI_*
environment and the network configuration on stdin. The shim sends both to the agent
socket as ``POST /v1/cni``, and the agent answers with what ``run_invocation`` returns: the
bytes to print on stdout (the result JSON, or the spec's error JSON), anything for stderr,
and the exit code. The shim prints them as they are. Every CNI decision is made here, in
one place: parsing and validating the environment and the netconf (``cni.request``),
version negotiation, prevResult merging, result conversion, error codes and messages.

Each command is a small function over one parsed ``Request``; it reaches the agent's
service through ``AgentCall`` (the same routes and error replies as the agent socket's
``/v1/attach``, ``/v1/detach``, ... that older executables call), so a request is
validated and answered the same way whichever path it came by. Nothing changes state
before the request is valid.

What the shim answers alone, because it cannot reach the agent otherwise, is listed in
its own header (VERSION, the agent unreachable, input it cannot frame); its messages are
the ones this module writes.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cni.request import Request, is_version, netns_exists, parse_request
from cni.spec import API_VERSION, SUPPORTED_VERSIONS, CniError, Code

logger = logging.getLogger(__name__)

# (method, path, body) -> (HTTP status, reply object): the agent's own request router.
AgentCall = Callable[[str, str, "dict | None"], "tuple[int, dict]"]

_INTERFACE_KEYS_040 = ("name", "mac", "sandbox")


@dataclass(frozen=True)
class Answer:
    """What the executable prints and returns."""

    exit: int
    stdout: str
    stderr: str = ""


def cmd_add(req: Request, agent: AgentCall) -> dict[str, Any]:
    require_netns(req)
    body = {"api": API_VERSION, "cni_version": req.cni_version, "network": req.network,
            "container_id": req.container_id, "ifname": req.ifname, "netns": req.netns,
            **_pod_fields(req, ("pod_namespace", "pod_name", "pod_uid"))}
    if req.mtu is not None:
        body["mtu"] = req.mtu
    reply = ask_agent(agent, "POST", "/v1/attach", body)
    result = reply.get("result")
    if not isinstance(result, dict):
        raise CniError(Code.AGENT_INTERNAL, "agent answered attach without a result object")
    if req.prev_result:
        result = merge_results(req.prev_result, result)
    return convert_result(result, req.cni_version)


def cmd_check(req: Request, agent: AgentCall) -> None:
    require_netns(req)
    body = {"api": API_VERSION, "cni_version": req.cni_version, "network": req.network,
            "container_id": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "prev_result": req.prev_result}
    ask_agent(agent, "POST", "/v1/check", body)


def cmd_del(req: Request, agent: AgentCall) -> None:
    body = {"api": API_VERSION, "network": req.network, "container_id": req.container_id,
            "ifname": req.ifname, "netns": req.netns,
            **_pod_fields(req, ("pod_namespace", "pod_name"))}
    ask_agent(agent, "POST", "/v1/detach", body)


def cmd_status(req: Request, agent: AgentCall) -> None:
    reply = ask_agent(agent, "GET", "/v1/status", None)
    code = reply.get("code")
    if isinstance(code, int) and not isinstance(code, bool):  # e.g. 51: ready, no address
        raise CniError(code, str(reply.get("msg") or "agent cannot take new pods"))
    if reply.get("ready") is not True:
        raise CniError(Code.NOT_AVAILABLE, str(reply.get("msg") or "agent is not ready"))


def cmd_gc(req: Request, agent: AgentCall) -> None:
    body = {"api": API_VERSION, "network": req.network,
            "valid_attachments": list(req.valid_attachments or ())}
    ask_agent(agent, "POST", "/v1/gc", body)


def cmd_version(req: Request, agent: AgentCall) -> dict[str, Any]:
    return {"cniVersion": req.cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


COMMANDS: dict[str, Callable[[Request, AgentCall], "dict[str, Any] | None"]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check,
    "VERSION": cmd_version, "STATUS": cmd_status, "GC": cmd_gc,
}


def ask_agent(agent: AgentCall, method: str, path: str, body: dict | None) -> dict[str, Any]:
    """One call into the agent's service; its error replies become ``CniError``."""
    status, reply = agent(method, path, body)
    if status >= 400:
        code = reply.get("code")
        if not isinstance(code, int) or isinstance(code, bool):
            code = Code.AGENT_INTERNAL
        msg = reply.get("msg") or f"agent answered HTTP {status} without a message"
        raise CniError(code, str(msg), str(reply.get("details") or ""))
    return reply


def _pod_fields(req: Request, names: tuple[str, ...]) -> dict[str, str]:
    """The CNI_ARGS pod fields that the agent's request type declares."""
    return {k: v for k, v in req.pod.items() if k in names}


def require_netns(req: Request) -> None:
    if not netns_exists(req.netns):
        raise CniError(Code.UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns} does not exist "
                       "(no such network namespace)")


def merge_results(prev: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Chaining: keep what the plugins before us reported and append ours after it."""
    offset = len(prev.get("interfaces", []))
    ips = [dict(ip, interface=ip["interface"] + offset)
           if isinstance(ip.get("interface"), int) else ip for ip in ours.get("ips", [])]
    merged: dict[str, Any] = {}
    for key, extra in (("interfaces", ours.get("interfaces", [])), ("ips", ips),
                       ("routes", ours.get("routes", []))):
        items = list(prev.get(key, [])) + list(extra)
        if items:
            merged[key] = items
    dns = prev.get("dns") or ours.get("dns")
    if dns:
        merged["dns"] = dns
    return merged


def convert_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Write the result in the requested version: 0.4.0 ips carry "version", interfaces
    have no mtu; 1.x ips have no "version"."""
    out: dict[str, Any] = {"cniVersion": version}
    old = version == "0.4.0"
    for key in ("interfaces", "ips", "routes", "dns"):
        if key not in result:
            continue
        value = result[key]
        if key == "interfaces" and old:
            value = [{k: v for k, v in i.items() if k in _INTERFACE_KEYS_040} for i in value]
        elif key == "ips":
            value = [_convert_ip(ip, old) for ip in value]
        out[key] = value
    return out


def _convert_ip(ip: dict[str, Any], old: bool) -> dict[str, Any]:
    ip = {k: v for k, v in ip.items() if k != "version"}
    if old:
        ip = {"version": "6" if ":" in str(ip.get("address", "")) else "4", **ip}
    return ip


def error_version(stdin: bytes) -> str:
    """The version to write an early error in. Spec (Section 5, Error): "cniVersion: the
    same value as provided by the configuration", so the request's, even one we do not
    speak (a 0.3.1 request is refused in 0.3.1); the newest when it has no X.Y.Z string."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:  # noqa: BLE001 - any undecodable input: answer in the newest
        return SUPPORTED_VERSIONS[-1]
    return version if is_version(version) else SUPPORTED_VERSIONS[-1]


def run_invocation(env: dict[str, str], stdin: bytes, agent: AgentCall) -> Answer:
    """Parse, dispatch, and map every failure to the spec's error JSON in one place."""
    version = None
    try:
        req = parse_request(env, stdin)
        version = req.cni_version if req.cni_version in SUPPORTED_VERSIONS else None
        out = COMMANDS[req.command](req, agent)
    except CniError as err:
        return _fail(err, version or error_version(stdin))
    except OSError as exc:
        return _fail(CniError(Code.IO_FAILURE, f"I/O failure: {exc}"),
                     version or error_version(stdin))
    except Exception as exc:  # noqa: BLE001 - the runtime gets an error JSON, never a trace
        logger.exception("CNI %s failed", env.get("CNI_COMMAND"))
        return _fail(CniError(Code.AGENT_INTERNAL, "internal error in the underlay plugin: "
                              f"{type(exc).__name__}: {exc}"), version or error_version(stdin))
    return Answer(0, "" if out is None else json.dumps(out) + "\n")


def _fail(err: CniError, version: str) -> Answer:
    return Answer(1, json.dumps(err.to_dict(version)) + "\n")
