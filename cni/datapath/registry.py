"""The datapath modes by name, the agent's one way to get one (``build_datapath``).

Adding a mode: a module with a class that follows ``cni.datapath.base.Datapath`` (built
with ``record_path``), and one line below. ``register_datapath`` is the same seam at run
time (a test's fake mode uses it). Built-in modes are imported on first use, so that an
IPAM-only agent never loads pyroute2.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from cni.datapath.base import Datapath, NoDatapath
from cni.datapath.hostrecord import RECORD_NAME

_MODES: dict[str, Callable[..., Datapath] | str] = {
    "veth": "cni.datapath.veth:VethDatapath",
    "ipvlan": "cni.datapath.ipvlan:IpvlanDatapath",
    "none": NoDatapath,
}


def register_datapath(name: str, factory: Callable[..., Datapath]) -> None:
    if not name or not name.replace("-", "").isalnum():
        raise ValueError(f"datapath name {name!r}: letters, digits and '-' only")
    _MODES[name] = factory


def datapath_names() -> tuple[str, ...]:
    return tuple(_MODES)


def build_datapath(name: str, *, record_path: str | None = None) -> Datapath:
    factory = _MODES.get(name)
    if factory is None:
        raise ValueError(f"datapath {name!r} is not one of {', '.join(_MODES)}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        factory = getattr(importlib.import_module(module), attr)
    return factory(record_path=record_path)


def record_path_of(state_path: str) -> str | None:
    """The host record lives beside the state database (None for an in-memory store)."""
    if state_path == ":memory:":
        return None
    return str(Path(state_path).parent / RECORD_NAME)
