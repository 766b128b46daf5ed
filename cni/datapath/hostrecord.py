"""What the agent changed in the node's network namespace, written down before each change
so that an uninstall can put the node back as it was (``cni.datapath.hostclean``).

The record is one small JSON file beside the agent's state (``host-network.json`` in the
state directory), rewritten atomically on each new entry (rare: at start-up and when an
ENI is first seen). It holds:

    sysctls  name -> the value before our first write (ip_forward, rp_filter per ENI link)
    links    ENI MAC -> {"up": was it up, "mtu": its MTU} before we first changed it
    tables   the ENI route tables we own (device index + 1)
    snat     whether SNAT chains, jumps and the fwmark rule were installed

Only the first value of a sysctl or a link is kept: the one from before the install. Pod
wiring (veths, /32 routes, the 512/1536 rules) is not recorded: it goes with each pod's DEL.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RECORD_NAME = "host-network.json"
RECORD_VERSION = 1


class RecordError(RuntimeError):
    """The record cannot be read or written; the message names the file."""


def empty_record() -> dict[str, Any]:
    return {"version": RECORD_VERSION, "sysctls": {}, "links": {}, "tables": [], "snat": False}


def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The record at ``path``; an empty one when there is none."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return empty_record()
    except (OSError, ValueError) as exc:
        raise RecordError(f"host record {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != RECORD_VERSION:
        raise RecordError(f"host record {path}: unknown format (version "
                          f"{data.get('version') if isinstance(data, dict) else None!r})")
    return {**empty_record(), **data}


class HostRecord:
    """Thread-safe writer of the record; ``HostRecord(None)`` records nothing (tests of
    the datapath alone)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._data = read_record(self.path) if self.path is not None else empty_record()

    def note_sysctl(self, name: str, before: str) -> None:
        self._update(lambda d: d["sysctls"].setdefault(name, before))

    def note_link(self, mac: str, up: bool, mtu: int) -> None:
        self._update(lambda d: d["links"].setdefault(mac.lower(), {"up": up, "mtu": mtu}))

    def note_table(self, table: int) -> None:
        self._update(lambda d: None if table in d["tables"] else d["tables"].append(table))

    def note_snat(self) -> None:
        self._update(lambda d: d.__setitem__("snat", True))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._data))

    def _update(self, change: Any) -> None:
        with self._lock:
            before = json.dumps(self._data, sort_keys=True)
            change(self._data)
            after = json.dumps(self._data, sort_keys=True)
            if after == before or self.path is None:
                return
            self._write(after)

    def _write(self, text: str) -> None:
        assert self.path is not None
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(tmp, "w") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RecordError(f"cannot write host record {self.path}: {exc.strerror}") from None
