"""How the EC2 adapter retries: exponential backoff with full jitter (tenacity), bounded
in attempts and in total time, stoppable through an event.

Only retryable cloud errors (``Throttled``, ``CloudUnavailable``) are retried, plus
``NotFound`` for an ENI this client created moments ago (EC2 is eventually consistent:
a follow-up call right after CreateNetworkInterface may not see the new ENI yet).
When the budget is spent the last typed error surfaces unchanged.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from cloud.errors import CloudError, CloudUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` counts the first try. A wait is drawn uniformly from
    [0, min(max_delay, base_delay * 2**n)] ("full jitter"); no retry starts after
    ``deadline`` seconds. ``not_found_window``: how long after creating an ENI a NotFound
    on it is taken for eventual consistency and retried."""

    attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 8.0
    deadline: float = 30.0
    not_found_window: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be >= 1, got {self.attempts}")
        for name in ("base_delay", "max_delay", "deadline", "not_found_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"retry {name} must be >= 0, got {getattr(self, name)}")


def run_with_retries(
    attempt: Callable[[], T],
    policy: RetryPolicy,
    *,
    action: str,
    stop: threading.Event,
    also_retry: Callable[[CloudError], bool] = lambda _error: False,
    sleep: Callable[[float], object] | None = None,
) -> T:
    """Run ``attempt`` (which raises only ``CloudError``) until it succeeds, a permanent
    error occurs, or the policy's budget is spent. Setting ``stop`` ends the waiting at
    once and fails the call with ``CloudUnavailable``. ``sleep`` defaults to waiting on
    ``stop``."""

    def should_retry(exc: BaseException) -> bool:
        if not isinstance(exc, CloudError) or stop.is_set():
            return False
        return exc.retryable or also_retry(exc)

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning(
            "%s failed (attempt %d/%d): %s; retrying in %.2fs",
            action,
            state.attempt_number,
            policy.attempts,
            error,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def checked_attempt() -> T:
        if stop.is_set():
            raise CloudUnavailable(
                f"{action} not attempted: the cloud client is closed",
                code="ClientClosed",
                action=action,
            )
        return attempt()

    retrying = Retrying(
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.deadline),
        wait=wait_random_exponential(multiplier=policy.base_delay, max=policy.max_delay),
        retry=retry_if_exception(should_retry),
        sleep=sleep or stop.wait,
        before_sleep=log_retry,
        reraise=True,
    )
    return retrying(checked_attempt)
