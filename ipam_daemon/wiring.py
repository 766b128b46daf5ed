"""The agent's seam to the pod datapath (``cni.datapath``). ``datapath: none`` is IPAM only:
allocations and the CNI result, no netlink at all (the agent may then run in the root
namespace in tests). The kernel datapath is imported lazily so that an IPAM-only agent never
loads pyroute2."""
from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol

from pathlib import Path

from cni.datapath import EniLink, Mode, PodSpec, SnatConfig, WiredPod
from cni.datapath.hostrecord import RECORD_NAME, HostRecord

logger = logging.getLogger(__name__)


class Wiring(Protocol):
    def prepare_host(self, snat: SnatConfig | None) -> None: ...
    def ensure_eni(self, eni: EniLink) -> None: ...
    def setup_pod(self, pod: PodSpec) -> WiredPod | None: ...
    def teardown_pod(self, pod: PodSpec) -> None: ...
    def check_pod(self, pod: PodSpec) -> list[str]: ...
    def addresses_routed_elsewhere(self) -> set[str]: ...
    def shutdown(self) -> None: ...


class NoWiring:
    """IPAM only: nothing is wired; ``check`` verifies the allocation alone."""

    def prepare_host(self, snat: SnatConfig | None) -> None:
        logger.info("datapath none: IPAM only, no host changes")

    def ensure_eni(self, eni: EniLink) -> None:
        return None

    def setup_pod(self, pod: PodSpec) -> WiredPod | None:
        return None

    def teardown_pod(self, pod: PodSpec) -> None:
        return None

    def check_pod(self, pod: PodSpec) -> list[str]:
        return []

    def addresses_routed_elsewhere(self) -> set[str]:
        return set()

    def shutdown(self) -> None:
        return None


class KernelWiring:
    """veth or ipvlan through ``cni.datapath``; the functions are looked up in the pod
    dispatcher (``cni.datapath.pods``), the mode's module, then the shared ones."""

    def __init__(self, mode: Mode, record_path: str | None = None) -> None:
        self.mode = mode
        # what the agent changes on the node, for the uninstall (cni.datapath.hostrecord)
        self.record = HostRecord(record_path)
        self._modules = ["cni.datapath.pods", f"cni.datapath.{mode.value}", "cni.datapath.eni",
                         "cni.datapath.snat", "cni.datapath"]
        self._snat = False
        # veth: DEL hands host veths to a thread that deletes them (the kernel takes ~25 ms)
        self._reaper: Any = None

    def _function(self, name: str) -> Any:
        for module_name in self._modules:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            function = getattr(module, name, None)
            if callable(function):
                return function
        raise RuntimeError(f"datapath {self.mode.value}: cni.datapath provides no {name}()")

    def prepare_host(self, snat: SnatConfig | None) -> None:
        self._function("ensure_host_sysctls")(self.record)
        if self.mode is Mode.VETH and self._reaper is None:
            from cni.datapath.veth import LinkReaper

            self._reaper = LinkReaper()  # started here: in the node's namespace
            self._reaper.sweep()  # what a killed agent had not deleted yet
        if snat is not None:
            if snat.enabled:
                self.record.note_snat()
            self._function("ensure_snat")(snat)  # enabled=False removes ours
            self._snat = snat.enabled

    def ensure_eni(self, eni: EniLink) -> None:
        name = self._function("ensure_eni")(eni, record=self.record)
        logger.info("ENI %s (device %d) is link %s", eni.mac, eni.device_index, name)

    def setup_pod(self, pod: PodSpec) -> WiredPod | None:
        return self._function("setup_pod")(pod, self._reaper)

    def teardown_pod(self, pod: PodSpec) -> None:
        self._function("teardown_pod")(pod, self._reaper)

    def check_pod(self, pod: PodSpec) -> list[str]:
        return list(self._function("check_pod")(pod))

    def addresses_routed_elsewhere(self) -> set[str]:
        return set(self._function("list_foreign_pod_addresses")())

    def shutdown(self) -> None:
        """Pods keep their wiring across an agent restart; SNAT is left as is too. Host
        veths already handed to the reaper are deleted first (bounded)."""
        if self._reaper is not None:
            self._reaper.wait_idle(10.0)
            self._reaper.stop()
            self._reaper = None


def record_path_of(state_path: str) -> str | None:
    """The host record lives beside the state database (None for an in-memory store)."""
    if state_path == ":memory:":
        return None
    return str(Path(state_path).parent / RECORD_NAME)


def build_wiring(datapath: str, state_path: str = ":memory:") -> Wiring:
    if datapath == "none":
        return NoWiring()
    return KernelWiring(Mode(datapath), record_path_of(state_path))
