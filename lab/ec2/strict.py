"""The strict layer: WSGI middleware in front of moto's EC2 app.

Per EC2 call, in order:
  1. count the call; a call marked as set-up (header ``X-Underlay-Emulator-Setup: 1``, used
     by the world builder) skips counting, buckets and faults, never the rules;
  2. take a token from the action's bucket or refuse with RequestLimitExceeded (503);
  3. maybe inject a fault: throttle (RequestLimitExceeded 503), 5xx (InternalError 500),
     timeout (stall, then InternalError 500); a refused or faulted call changes nothing,
     except lost_reply: the call is carried out and its answer replaced by InternalError
     (what a client sees when EC2 acted but the reply was lost or timed out);
  4. AttachNetworkInterface: validate, then wait the attach latency (outside the lock);
  5. under one lock: check the rules against moto's state (rules.py), rewrite the request
     where the layer decides for moto (addresses), keep what moto cannot (IPv4 prefixes,
     prefix_rules.py), pass the request to moto, fix up the answer.
The rules named in settings.SWITCHABLE_RULES can be switched off (settings or control API)
to show that a test fails without the rule it checks; every other rule is always on.
Control calls under ``/_emulator/`` go to the control API instead.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable

from lab.ec2 import rules
from lab.ec2.prefix_rules import list_prefixes_on_every_eni
from lab.ec2.settings import categorise_action
from lab.ec2.faults import CallCounter, FaultInjector, TokenBuckets
from lab.ec2.wire import ApiRequest, Refusal, error_xml, read_request, replace_body, respond

logger = logging.getLogger(__name__)

SETUP_HEADER = "HTTP_X_UNDERLAY_EMULATOR_SETUP"
_REGION_IN_AUTH = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/ec2/")


class RuntimeKnobs:
    """What the control API changes while the emulator runs."""

    def __init__(self, *, buckets: TokenBuckets, faults: FaultInjector, counts: CallCounter,
                 attach_latency: float, route_table_limit: int,
                 timeout_fault_seconds: float, seed: int,
                 rules_off: frozenset[str] = frozenset()) -> None:
        self.buckets = buckets
        self.faults = faults
        self.counts = counts
        self.attach_latency = attach_latency
        self.route_table_limit = route_table_limit
        self.timeout_fault_seconds = timeout_fault_seconds
        self.seed = seed
        self.rules_off = rules_off  # replaced whole, never mutated: a call sees one set


class StrictLayer:
    def __init__(self, moto_app: Callable[..., Any], *, account_id: str, region: str,
                 knobs: RuntimeKnobs, control_app: Callable[..., Any],
                 stopping: threading.Event) -> None:
        self._moto_app = moto_app
        self._control_app = control_app
        self.account_id = account_id
        self.region = region
        self.knobs = knobs
        self.lock = threading.RLock()
        self._stopping = stopping
        self._allocator = rules.AddressAllocator(knobs.seed)
        list_prefixes_on_every_eni()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith("/_emulator/"):
            return self._control_app(environ, start_response)
        request = read_request(environ)
        if request is None:
            return respond(start_response, 400, error_xml(
                "MissingAction", "the request names no Action; this endpoint serves EC2 only"))
        environ["HTTP_X_MOTO_ACCOUNT_ID"] = self.account_id
        region = self._request_region(environ)
        setup = environ.get(SETUP_HEADER) == "1"
        try:
            lost_reply = False if setup else self._admit(request)
            if lost_reply:
                self._serve(request, region, environ, lambda status, headers: None)
                raise Refusal("InternalError", "An internal error has occurred.", 500)
            return self._serve(request, region, environ, start_response)
        except Refusal as refusal:
            if not setup:
                self.knobs.counts.count_refusal(request.action, refusal.code)
            logger.info("refused %s: %s %s", request.action, refusal.code, refusal.message)
            return respond(start_response, refusal.status, error_xml(refusal.code, refusal.message))
        except Exception:  # a bug here must still answer like EC2, not with an HTML page
            logger.exception("emulator failed on %s", request.action)
            return respond(start_response, 500, error_xml(
                "InternalError", f"the emulator failed on {request.action}; see its log"))

    def _request_region(self, environ: dict[str, Any]) -> str:
        match = _REGION_IN_AUTH.search(environ.get("HTTP_AUTHORIZATION", ""))
        return match.group(1) if match else self.region

    def _admit(self, request: ApiRequest) -> bool:
        """Count, bucket and fault checks that may refuse a call before any rule runs; True
        when the call is to be carried out but its answer lost."""
        knobs = self.knobs
        knobs.counts.count_call(request.action)
        filtered = request.has_prefix("Filter") or any(
            key.endswith("Id.1") for key, _ in request.params)
        if not knobs.buckets.take(categorise_action(request.action, filtered)):
            raise Refusal("RequestLimitExceeded", "Request limit exceeded.", 503)
        fault = knobs.faults.pick(request.action)
        if fault is None:
            return False
        if fault.kind == "lost_reply":
            return True
        if fault.kind == "throttle":
            raise Refusal("RequestLimitExceeded", "Request limit exceeded.", 503)
        if fault.kind == "timeout":
            self._stopping.wait(fault.seconds if fault.seconds is not None
                                else knobs.timeout_fault_seconds)
        raise Refusal("InternalError", "An internal error has occurred.", 500)

    def _serve(self, request: ApiRequest, region: str, environ: dict[str, Any],
               start_response: Any) -> Any:
        if request.action == "AttachNetworkInterface" and self.knobs.attach_latency > 0:
            with self.lock:
                self._check(request, region)
            self._stopping.wait(self.knobs.attach_latency)
        with self.lock:
            verdict = self._check(request, region)
            if verdict.params is not None:
                replace_body(environ, verdict.params)
            if verdict.before is not None:
                verdict.before()
            status, headers, body = _call_app(self._moto_app, environ)
            if status.startswith("200") and verdict.after is not None:
                body = verdict.after(body)
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def _check(self, request: ApiRequest, region: str) -> rules.Verdict:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[self.account_id][region]
        context = rules.RuleContext(backend=backend, allocator=self._allocator,
                                    route_table_limit=self.knobs.route_table_limit,
                                    rules_off=self.knobs.rules_off)
        return rules.check_request(request, context)


def _call_app(app: Callable[..., Any], environ: dict[str, Any]) -> tuple[str, list, bytes]:
    """Run a WSGI app to completion and collect its answer."""
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list, exc_info: Any = None) -> None:
        captured["status"], captured["headers"] = status, list(headers)

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return captured["status"], captured["headers"], body
