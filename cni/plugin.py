"""The CNI executable ``underlay``: a thin, standard-library-only client of the node agent.

The runtime execs it with CNI_* variables and the network configuration on stdin (CNI spec
1.1.0; versions 0.4.0, 1.0.0 and 1.1.0). It parses both once into a ``Request``, runs one
``cmd_*`` function from the dispatch table, and prints the result JSON (ADD, VERSION) or
nothing (DEL, CHECK, STATUS, GC). Every failure is mapped in ``main`` to the spec's error
JSON on stdout with a non-zero exit: never a traceback, never anything else on stdout.
Diagnostics that are not errors (DEL without an agent) go to stderr.

Agent down: ADD and CHECK -> 11 (try again later), DEL -> success, STATUS -> 50, GC -> 11.
Import rule (tests/test_imports.py): the standard library and ``cni.spec`` only.
"""
from __future__ import annotations

import json
import os
import sys

from cni.agent_client import AgentError, AgentUnreachable, call_agent
from cni.request import MAX_STDIN_BYTES, Request, netns_exists, parse_request
from cni.spec import API_VERSION, SUPPORTED_VERSIONS, Code, CniError

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs ~5 ms of start-up
    from typing import Any, Callable

_INTERFACE_KEYS_040 = ("name", "mac", "sandbox")


def cmd_add(req: Request) -> dict[str, Any]:
    require_netns(req)
    body = {"api": API_VERSION, "cni_version": req.cni_version, "network": req.network,
            "container_id": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "mode": req.mode, **_pod_fields(req, ("pod_namespace", "pod_name", "pod_uid"))}
    if req.mtu is not None:
        body["mtu"] = req.mtu
    reply = ask_agent(req, "POST", "/v1/attach", body, Code.TRY_AGAIN_LATER)
    result = reply.get("result")
    if not isinstance(result, dict):
        raise CniError(Code.AGENT_INTERNAL, "agent answered attach without a result object")
    if req.prev_result:
        result = merge_results(req.prev_result, result)
    return convert_result(result, req.cni_version)


def cmd_check(req: Request) -> None:
    require_netns(req)
    body = {"api": API_VERSION, "cni_version": req.cni_version, "network": req.network,
            "container_id": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "prev_result": req.prev_result}
    ask_agent(req, "POST", "/v1/check", body, Code.TRY_AGAIN_LATER)


def cmd_del(req: Request) -> None:
    body = {"api": API_VERSION, "network": req.network, "container_id": req.container_id,
            "ifname": req.ifname, "netns": req.netns,
            **_pod_fields(req, ("pod_namespace", "pod_name"))}
    try:
        ask_agent(req, "POST", "/v1/detach", body, Code.TRY_AGAIN_LATER)
    except AgentDown as down:
        # Spec: DEL must succeed when what it would remove cannot be reached; the agent
        # reclaims the allocation when it is back (GC and reconcile).
        sys.stderr.write(f"underlay: DEL of {req.container_id}/{req.ifname} reported as "
                         f"done: {down.msg}; the agent will reclaim it when it is back\n")


def cmd_status(req: Request) -> None:
    reply = ask_agent(req, "GET", "/v1/status", None, Code.NOT_AVAILABLE)
    code = reply.get("code")
    if isinstance(code, int) and not isinstance(code, bool):  # e.g. 51: ready, no address
        raise CniError(code, str(reply.get("msg") or "agent cannot take new pods"))
    if reply.get("ready") is not True:
        raise CniError(Code.NOT_AVAILABLE, str(reply.get("msg") or "agent is not ready"))


def cmd_gc(req: Request) -> None:
    body = {"api": API_VERSION, "network": req.network,
            "valid_attachments": list(req.valid_attachments or ())}
    ask_agent(req, "POST", "/v1/gc", body, Code.TRY_AGAIN_LATER)


def cmd_version(req: Request) -> dict[str, Any]:
    return {"cniVersion": req.cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


COMMANDS: dict[str, Callable[[Request], dict[str, Any] | None]] = {
    "ADD": cmd_add, "DEL": cmd_del, "CHECK": cmd_check,
    "VERSION": cmd_version, "STATUS": cmd_status, "GC": cmd_gc,
}


class AgentDown(CniError):
    """Nothing listens on the agent socket: the request never reached the agent."""


def ask_agent(req: Request, method: str, path: str, body: dict | None,
              down_code: int) -> dict[str, Any]:
    """One call to the agent. Its error replies become ``CniError`` with the agent's code;
    no agent -> ``AgentDown(down_code)``; an agent that took the request but gave no valid
    answer (timeout, closed connection) -> ``CniError(down_code)``: DEL must not pretend
    success then, the agent may be half-way through it."""
    try:
        status, reply = call_agent(req.socket, method, path, body, req.timeout)
    except AgentUnreachable as exc:
        raise AgentDown(down_code, f"agent unreachable: {exc}") from None
    except AgentError as exc:
        raise CniError(down_code, str(exc)) from None
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


def read_stdin() -> bytes:
    stream = sys.stdin.buffer if sys.stdin is not None else None
    return stream.read(MAX_STDIN_BYTES + 1) if stream is not None else b""


def _error_version(stdin: bytes) -> str:
    """The version to write an early error in: the request's when it is one we know."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:  # noqa: BLE001 - any undecodable input: answer in the newest
        return SUPPORTED_VERSIONS[-1]
    return version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]


def main() -> int:
    stdin = b""
    version = None
    try:
        stdin = read_stdin()
        req = parse_request(dict(os.environ), stdin)
        version = req.cni_version if req.cni_version in SUPPORTED_VERSIONS else None
        out = COMMANDS[req.command](req)
    except CniError as err:
        return _fail(err, version or _error_version(stdin))
    except OSError as exc:
        return _fail(CniError(Code.IO_FAILURE, f"I/O failure: {exc}"),
                     version or _error_version(stdin))
    except Exception as exc:  # noqa: BLE001 - never a traceback on stdout
        return _fail(CniError(Code.AGENT_INTERNAL, "internal error in the underlay plugin: "
                              f"{type(exc).__name__}: {exc}"), version or _error_version(stdin))
    if out is not None:
        sys.stdout.write(json.dumps(out) + "\n")
    return 0


def _fail(err: CniError, version: str) -> int:
    sys.stdout.write(json.dumps(err.to_dict(version)) + "\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
