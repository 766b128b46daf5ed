"""Render the network configuration list the installer writes to
``/etc/cni/net.d/05-underlay.conflist``: a pure function of its options.

``cniVersion`` is 1.0.0 so that runtimes built on libcni < 1.2 load it, and ``cniVersions``
lists 1.1.0 too: runtimes that know 1.1.0 pick the highest version both sides support
(and then send STATUS and GC). The reference plugins ``portmap``, ``bandwidth`` and
``tuning`` may follow ``underlay`` in the chain; they receive our result as prevResult.
There is no ``mode`` key: the agent's ``datapath`` setting alone decides how pods are wired.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from cni.request import MAX_MTU, MIN_MTU
from cni.spec import DEFAULT_SOCKET, PLUGIN_TYPE

DEFAULT_NAME = "underlay"
CONFLIST_PATH = "/etc/cni/net.d/05-underlay.conflist"
CNI_VERSION = "1.0.0"
CNI_VERSIONS = ("1.0.0", "1.1.0")
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")


@dataclass(frozen=True)
class ConflistOptions:
    name: str = DEFAULT_NAME
    socket: str = DEFAULT_SOCKET
    mtu: int = 9001
    portmap: bool = True
    bandwidth: bool = True
    tuning_sysctls: dict[str, str] = field(default_factory=dict)  # empty: no tuning plugin


def render_conflist(opts: ConflistOptions) -> dict[str, Any]:
    """The conflist as a dict; ``ValueError`` names the bad option."""
    if not _NAME_RE.match(opts.name):
        raise ValueError(f"conflist name {opts.name!r} is not a valid CNI network name")
    if not opts.socket.startswith("/"):
        raise ValueError(f"socket {opts.socket!r} must be an absolute path")
    if isinstance(opts.mtu, bool) or not isinstance(opts.mtu, int) \
            or not MIN_MTU <= opts.mtu <= MAX_MTU:
        raise ValueError(f"mtu {opts.mtu!r} must be an integer in {MIN_MTU}-{MAX_MTU}")
    plugins: list[dict[str, Any]] = [
        {"type": PLUGIN_TYPE, "socket": opts.socket, "mtu": opts.mtu},
    ]
    if opts.portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    if opts.bandwidth:
        plugins.append({"type": "bandwidth", "capabilities": {"bandwidth": True}})
    if opts.tuning_sysctls:
        plugins.append({"type": "tuning", "sysctl": dict(opts.tuning_sysctls)})
    return {"cniVersion": CNI_VERSION, "cniVersions": list(CNI_VERSIONS),
            "name": opts.name, "plugins": plugins}


def render_conflist_json(opts: ConflistOptions) -> str:
    return json.dumps(render_conflist(opts), indent=2) + "\n"
