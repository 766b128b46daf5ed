"""The emulator's control API: JSON over HTTP under ``/_emulator/`` on the EC2 endpoint,
and ``EmulatorControl``, its client, so a test can drive an emulator in another process.

    GET    /_emulator/health              {"ok": true, "region": ..}
    PUT    /_emulator/faults              {"faults": [{action, kind, rate, seconds?}], "seed": n|null}
    DELETE /_emulator/faults
    PUT    /_emulator/attach-latency      {"seconds": s}
    PUT    /_emulator/buckets             {"enabled": bool, "<category>": {capacity, refill_per_second}}
    GET    /_emulator/counts              {"calls": {action: n}, "refused": [[action, code, n], ...]}
    DELETE /_emulator/counts
    PUT    /_emulator/route-table-limit   {"limit": n}
    GET    /_emulator/snapshot            see snapshot.py
    GET    /_emulator/rules               {"off": [..], "switchable": {name: what it enforces}}
    PUT    /_emulator/rules               {"off": [names]}: those rules are not enforced
                                          (to show a test fails without them); [] restores

Bad input answers 400 with {"error": "..."} naming the problem and changes nothing.
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from typing import Any, Callable

from lab.ec2.settings import SWITCHABLE_RULES, validate_rule_names
from lab.ec2.wire import respond

logger = logging.getLogger(__name__)

PREFIX = "/_emulator/"
MAX_CONTROL_BODY = 1024 * 1024


class ControlError(RuntimeError):
    """The control API refused a request (bad input) or could not be reached."""


class ControlApp:
    """WSGI app serving the control API; ``emulator`` is the running server's handle."""

    def __init__(self, knobs: Any, take_snapshot: Callable[[], dict], region: str) -> None:
        self._knobs = knobs
        self._take_snapshot = take_snapshot
        self._region = region

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        name = environ.get("PATH_INFO", "")[len(PREFIX):].strip("/")
        try:
            payload = _read_json(environ) if method in ("PUT", "POST") else {}
            result = self._dispatch(method, name, payload)
        except (ValueError, TypeError) as exc:
            return _json(start_response, 400, {"error": str(exc)})
        except LookupError:
            return _json(start_response, 404, {"error": f"no control call {method} {PREFIX}{name}"})
        return _json(start_response, 200, result)

    def _dispatch(self, method: str, name: str, payload: dict) -> Any:
        knobs = self._knobs
        if (method, name) == ("GET", "health"):
            return {"ok": True, "region": self._region}
        if (method, name) == ("PUT", "faults"):
            faults, seed = payload.get("faults"), payload.get("seed")
            if not isinstance(faults, list):
                raise ValueError(f"'faults' must be a list of faults, got {faults!r}")
            if seed is not None and not isinstance(seed, int):
                raise ValueError(f"'seed' must be an integer, got {seed!r}")
            knobs.faults.set(faults, seed)
            return {"faults": knobs.faults.describe()}
        if (method, name) == ("DELETE", "faults"):
            knobs.faults.clear()
            return {"faults": []}
        if (method, name) == ("PUT", "attach-latency"):
            seconds = payload.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
                raise ValueError(f"'seconds' must be a number >= 0, got {seconds!r}")
            knobs.attach_latency = float(seconds)
            return {"seconds": knobs.attach_latency}
        if (method, name) == ("PUT", "buckets"):
            knobs.buckets.configure(payload)
            return knobs.buckets.describe()
        if (method, name) == ("GET", "counts"):
            refused = [[a, c, n] for (a, c), n in sorted(knobs.counts.refusals().items())]
            return {"calls": knobs.counts.calls(), "refused": refused}
        if (method, name) == ("DELETE", "counts"):
            knobs.counts.reset()
            return {}
        if (method, name) == ("PUT", "route-table-limit"):
            limit = payload.get("limit")
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"'limit' must be an integer >= 1, got {limit!r}")
            knobs.route_table_limit = limit
            return {"limit": limit}
        if (method, name) == ("GET", "snapshot"):
            return self._take_snapshot()
        if (method, name) == ("GET", "rules"):
            return {"off": sorted(knobs.rules_off), "switchable": dict(SWITCHABLE_RULES)}
        if (method, name) == ("PUT", "rules"):
            knobs.rules_off = validate_rule_names(payload.get("off"))
            if knobs.rules_off:
                logger.warning("strict rules switched off: %s", ", ".join(sorted(knobs.rules_off)))
            return {"off": sorted(knobs.rules_off)}
        raise LookupError(name)


def _read_json(environ: dict[str, Any]) -> dict:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ValueError("bad Content-Length") from None
    if length > MAX_CONTROL_BODY:
        raise ValueError(f"control body too large ({length} bytes)")
    raw = environ["wsgi.input"].read(length) if length else b"{}"
    try:
        payload = json.loads(raw or b"{}")
    except json.JSONDecodeError as exc:
        raise ValueError(f"control body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"control body must be a JSON object, got {type(payload).__name__}")
    return payload


def _json(start_response: Any, status: int, payload: Any) -> list[bytes]:
    return respond(start_response, status, json.dumps(payload).encode(), "application/json")


class EmulatorControl:
    """Client of the control API. Every call has a timeout; refusals raise ControlError."""

    def __init__(self, endpoint: str, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, name: str, payload: dict | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        request = urllib.request.Request(
            f"{self.endpoint}{PREFIX}{name}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ControlError(f"{method} {PREFIX}{name}: {detail}") from None
        except OSError as exc:
            raise ControlError(f"emulator control at {self.endpoint} unreachable: {exc}") from exc

    def health(self) -> dict:
        return self._call("GET", "health")

    def set_faults(self, faults: list[dict], *, seed: int | None = None) -> None:
        self._call("PUT", "faults", {"faults": faults, "seed": seed})

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def set_attach_latency(self, seconds: float) -> None:
        self._call("PUT", "attach-latency", {"seconds": seconds})

    def set_buckets(self, overrides: dict) -> None:
        """``{"enabled": False}`` turns buckets off; ``{"mutating": {"capacity": 2,
        "refill_per_second": 0}}`` reshapes one category (it starts full)."""
        self._call("PUT", "buckets", overrides)

    def call_counts(self) -> dict[str, int]:
        """Calls received per action, refused ones included."""
        return self._call("GET", "counts")["calls"]

    def refused_counts(self) -> dict[tuple[str, str], int]:
        """Refused calls per (action, error code)."""
        return {(a, c): n for a, c, n in self._call("GET", "counts")["refused"]}

    def reset_counts(self) -> None:
        self._call("DELETE", "counts")

    def set_route_table_limit(self, n: int) -> None:
        self._call("PUT", "route-table-limit", {"limit": n})

    def snapshot(self) -> dict:
        return self._call("GET", "snapshot")

    def rules_off(self) -> list[str]:
        return self._call("GET", "rules")["off"]

    def set_rules_off(self, names: list[str]) -> None:
        """Stop enforcing these strict rules (settings.SWITCHABLE_RULES); [] restores all."""
        self._call("PUT", "rules", {"off": list(names)})
