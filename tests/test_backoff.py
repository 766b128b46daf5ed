"""Back-off of the agent's loops (ipam_daemon.backoff, through tenacity): exponential,
jittered, bounded, reset by a success; a retried call ends once stopping is asked."""
from __future__ import annotations

import threading

import pytest

from ipam_daemon.backoff import Backoff, retry_until_stopped


def test_delays_grow_twofold_with_jitter_up_to_the_maximum():
    backoff = Backoff(0.5, 8.0)
    delays = [backoff.next_delay() for _ in range(8)]
    for n, delay in enumerate(delays, start=1):
        base = 0.5 * 2 ** (n - 1)
        assert min(base, 8.0) <= delay <= min(base + 0.5, 8.0), (n, delay)
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0
    # jitter: two loops that fail together do not retry in step
    others = [Backoff(0.5, 8.0) for _ in range(20)]
    assert len({round(b.next_delay(), 6) for b in others}) > 1


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="0 < initial <= maximum"):
        Backoff(2.0, 1.0)


def test_retry_until_stopped_retries_what_it_is_told_and_nothing_else():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "done"

    stop = threading.Event()
    assert retry_until_stopped(flaky, retry_on=ConnectionError, stop=stop, initial=0.01,
                               maximum=0.02, what="flaky") == "done"
    assert len(calls) == 3
    with pytest.raises(KeyError):  # not in retry_on: raised at once
        retry_until_stopped(lambda: {}["x"], retry_on=ConnectionError, stop=stop,
                            initial=0.01, maximum=0.02, what="broken")


def test_stopping_ends_the_retries_with_the_last_error():
    """Once stopping is asked, a failure is not retried: the error surfaces (the waits
    themselves are on the same event, so a wait in progress ends with it)."""
    stop = threading.Event()
    calls = []

    def never() -> None:
        calls.append(1)
        stop.set()  # the agent is asked to stop while this call fails
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        retry_until_stopped(never, retry_on=ConnectionError, stop=stop, initial=5.0,
                            maximum=30.0, what="never")
    assert len(calls) == 1
