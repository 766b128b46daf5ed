"""Pod garbage collection: the pure decision, table-tested, and the loop against the fake
API server with real netns paths (files that exist or not): only allocations whose pod is
gone (by uid), after the grace period and with their netns gone, are released, including
pods deleted while the agent was down; nothing is released before the first list."""
from __future__ import annotations

import threading

import pytest

from fake_apiserver.fixtures import add_pod, apiserver, kube_api, wait_until  # noqa: F401
from ipam_daemon.kube.podgc import Allocation, LivePods, PodGarbageCollector, decide_releases

LIVE = LivePods(uids=frozenset({"uid-live"}), names=frozenset({("ns", "live"), ("ns", "reborn")}))


def alloc(key, name, uid, netns="/run/netns/x"):
    return Allocation(key, "ns", name, uid, netns)


@pytest.mark.parametrize("allocation, missing_since, now, netns_present, release, waiting", [
    # pod alive by uid: kept, whatever the netns says
    (alloc("k", "live", "uid-live"), {}, 100.0, False, (), ()),
    # pod gone, first seen now: grace starts
    (alloc("k", "gone", "uid-gone"), {}, 100.0, False, (), ("k",)),
    # pod gone, grace not over yet
    (alloc("k", "gone", "uid-gone"), {"k": 80.0}, 100.0, False, (), ("k",)),
    # pod gone, grace over, netns gone: released
    (alloc("k", "gone", "uid-gone"), {"k": 60.0}, 100.0, False, ("k",), ()),
    # pod gone, grace over, netns still there: never released under a live netns
    (alloc("k", "gone", "uid-gone"), {"k": 0.0}, 100.0, True, (), ("k",)),
    # same name recreated with a new uid (StatefulSet): the old allocation is dead
    (alloc("k", "reborn", "uid-old"), {"k": 0.0}, 100.0, False, ("k",), ()),
    # no uid recorded: fall back to namespace/name
    (alloc("k", "live", ""), {"k": 0.0}, 100.0, False, (), ()),
    (alloc("k", "other", ""), {"k": 0.0}, 100.0, False, ("k",), ()),
])
def test_decision_table(allocation, missing_since, now, netns_present, release, waiting):
    decision = decide_releases([allocation], LIVE, missing_since, now, 30.0, {"k": netns_present})
    assert decision.release == release and decision.waiting == waiting
    assert set(decision.missing_since) == set(waiting)


def test_pod_that_comes_back_forgets_its_missing_time():
    decision = decide_releases([alloc("k", "live", "uid-live")], LIVE, {"k": 1.0}, 100.0, 30.0, {})
    assert decision.missing_since == {} and decision.release == ()


class Allocations:
    """The agent's store, as the collector sees it: rows and the single release path."""

    def __init__(self, rows):
        self.rows = {row[0]: row for row in rows}
        self.released = []
        self.lock = threading.Lock()

    def list(self):
        with self.lock:
            return list(self.rows.values())

    def release(self, key):
        with self.lock:
            del self.rows[key]
            self.released.append(key)


@pytest.fixture
def netns_dir(tmp_path):
    return tmp_path


def netns_file(directory, name, exists=True):
    path = directory / name
    if exists:
        path.write_text("")
    return str(path)


def test_loop_releases_only_dead_pods_including_those_deleted_while_down(apiserver, netns_dir):
    live = add_pod(apiserver, "ns", "live")
    held = add_pod(apiserver, "ns", "netns-held")
    later = add_pod(apiserver, "ns", "later")
    offline = add_pod(apiserver, "ns", "offline")
    other_node = add_pod(apiserver, "ns", "other", node="node-b")
    apiserver.delete("pods", "offline", "ns")  # deleted while the agent was not running
    apiserver.delete("pods", "netns-held", "ns")
    uid = lambda pod: pod["metadata"]["uid"]  # noqa: E731
    store = Allocations([
        ("c-live", "ns", "live", uid(live), netns_file(netns_dir, "live", exists=False)),
        ("c-held", "ns", "netns-held", uid(held), netns_file(netns_dir, "held", exists=True)),
        ("c-later", "ns", "later", uid(later), netns_file(netns_dir, "later", exists=False)),
        ("c-offline", "ns", "offline", uid(offline), netns_file(netns_dir, "offline", exists=False)),
        ("c-elsewhere", "ns", "other", uid(other_node), netns_file(netns_dir, "other", exists=False)),
    ])
    with kube_api(apiserver) as api:
        gc = PodGarbageCollector(api, "node-a", store.list, store.release, grace=0.0, interval=0.1).start()
        try:
            wait_until(lambda: "c-offline" in store.released, "the pod deleted while the agent was down")
            # a pod bound to another node is not ours to judge present: its allocation here is stale
            wait_until(lambda: "c-elsewhere" in store.released, "the allocation of a pod on another node")
            apiserver.delete("pods", "later", "ns")
            wait_until(lambda: "c-later" in store.released, "the pod deleted while watching")
            assert "c-live" in store.rows and "c-held" in store.rows
            (netns_dir / "held").unlink()  # the runtime finally removed the netns
            wait_until(lambda: "c-held" in store.released, "the pod whose netns went away")
            assert sorted(store.rows) == ["c-live"]
        finally:
            gc.stop()


def test_nothing_released_before_the_first_list(apiserver, netns_dir):
    store = Allocations([("c-1", "ns", "p", "uid-never-seen", netns_file(netns_dir, "p", exists=False))])
    apiserver.go_down()
    with kube_api(apiserver) as api:
        gc = PodGarbageCollector(api, "node-a", store.list, store.release, grace=0.0, interval=0.05).start()
        try:
            wait_until(lambda: gc.watcher.errors >= 2, "the watcher to fail against the down server")
            assert gc.sweep() == () and store.released == []
            apiserver.come_up()
            wait_until(lambda: store.released == ["c-1"], "the release after the first list")
        finally:
            gc.stop()


def test_grace_period_counts_from_first_seen_missing(apiserver, netns_dir):
    now = [1000.0]
    store = Allocations([("c-1", "ns", "p", "uid-gone", netns_file(netns_dir, "p", exists=False))])
    with kube_api(apiserver) as api:
        gc = PodGarbageCollector(api, "node-a", store.list, store.release, grace=30.0, interval=60.0,
                                 clock=lambda: now[0])
        gc.watcher.start()
        try:
            wait_until(gc.watcher.synced.is_set, "the first list")
            assert gc.sweep() == ()
            now[0] += 29.0
            assert gc.sweep() == ()
            now[0] += 1.0
            assert gc.sweep() == ("c-1",)
        finally:
            gc.stop()


def test_release_failure_is_retried_next_sweep(apiserver, netns_dir):
    failures = [RuntimeError("store busy")]
    store = Allocations([("c-1", "ns", "p", "uid-gone", netns_file(netns_dir, "p", exists=False))])

    def release(key):
        if failures:
            raise failures.pop()
        store.release(key)

    with kube_api(apiserver) as api:
        gc = PodGarbageCollector(api, "node-a", store.list, release, grace=0.0, interval=60.0)
        gc.watcher.start()
        try:
            wait_until(gc.watcher.synced.is_set, "the first list")
            assert gc.sweep() == ()
            assert gc.sweep() == ("c-1",)
        finally:
            gc.stop()
