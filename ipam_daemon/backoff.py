"""Back-off for the agent's loops, through tenacity (as the EC2 adapter's retries are):
exponential from ``initial`` up to ``maximum``, with jitter, so that many nodes failing at
once do not retry in step.

- ``Backoff``: for a loop that runs for ever (a watch, a status patcher, a route sync):
  ``next_delay()`` after a failure, ``reset()`` after a success.
- ``retry_until_stopped``: call something until it succeeds, retrying the given errors,
  waiting on a ``threading.Event`` so that stopping the agent ends the wait at once.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """The wait after the n-th failure in a row: ``initial * 2**(n-1)`` plus up to
    ``initial`` of jitter, at most ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError(f"back-off needs 0 < initial <= maximum, got {initial}, {maximum}")
        self._wait = wait_exponential_jitter(multiplier=initial, max=maximum, jitter=initial)
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return self._wait(SimpleNamespace(attempt_number=self.failures))

    def reset(self) -> None:
        self.failures = 0


def retry_until_stopped(call: Callable[[], T], *, retry_on: type[BaseException] |
                        tuple[type[BaseException], ...], stop: threading.Event,
                        initial: float, maximum: float, what: str) -> T:
    """``call()`` until it returns; ``retry_on`` errors are retried with back-off, others
    raised at once. Once ``stop`` is set the last error is raised (or the call's error)."""

    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        logger.warning("%s failed (%s); retrying in %.1fs", what, error,
                       state.next_action.sleep if state.next_action else 0.0)

    retrying = Retrying(retry=retry_if_exception_type(retry_on),
                        wait=wait_exponential_jitter(multiplier=initial, max=maximum,
                                                     jitter=initial),
                        stop=stop_when_event_set(stop), sleep=stop.wait,
                        before_sleep=log_retry, reraise=True)
    return retrying(call)
