"""The list+watch loop against the fake API server: it resumes from its resourceVersion when
a stream ends, relists on 410 Gone without missing a deletion that happened in between,
survives an API server that goes down and comes back, and stops promptly."""
from __future__ import annotations

import threading

from fake_apiserver.fixtures import add_pod, apiserver, kube_api, wait_until  # noqa: F401
from ipam_daemon.kube.watcher import Watcher


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, kind: str, obj: dict) -> None:
        with self.lock:
            self.events.append((kind, obj["metadata"]["name"]))

    def names(self, kind: str) -> list[str]:
        with self.lock:
            return [name for k, name in self.events if k == kind]


def pod_watcher(api, recorder: Recorder) -> Watcher:
    return Watcher(api, api.core.list_pod_for_all_namespaces, recorder, name="pods",
                   selectors={"field_selector": "spec.nodeName=node-a"}, page_size=2)


def test_lists_in_pages_then_streams(apiserver):
    for i in range(5):
        add_pod(apiserver, "ns", f"p{i}")
    add_pod(apiserver, "ns", "elsewhere", node="node-b")
    recorder = Recorder()
    with kube_api(apiserver) as api:
        watcher = pod_watcher(api, recorder).start()
        try:
            wait_until(watcher.synced.is_set, "the first list")
            assert sorted(recorder.names("ADDED")) == [f"p{i}" for i in range(5)]
            add_pod(apiserver, "ns", "late")
            apiserver.delete("pods", "p0", "ns")
            wait_until(lambda: recorder.names("DELETED") == ["p0"], "the deletion")
            assert "late" in recorder.names("ADDED") and "elsewhere" not in recorder.names("ADDED")
        finally:
            watcher.stop()
    list_calls = [r for r in apiserver.requests if r.verb == "list"]
    assert len(list_calls) == 3  # 5 pods in pages of 2


def test_dropped_stream_resumes_from_last_rv_without_relist(apiserver):
    add_pod(apiserver, "ns", "a")
    recorder = Recorder()
    with kube_api(apiserver) as api:
        watcher = pod_watcher(api, recorder).start()
        try:
            wait_until(watcher.synced.is_set, "the first list")
            apiserver.drop_watches()
            apiserver.delete("pods", "a", "ns")  # while no stream is open
            wait_until(lambda: recorder.names("DELETED") == ["a"], "the deletion after resuming")
            assert watcher.relists == 1 and watcher.resumes >= 1
        finally:
            watcher.stop()


def test_410_gone_relists_and_still_delivers_the_deletion(apiserver):
    add_pod(apiserver, "ns", "keep")
    add_pod(apiserver, "ns", "doomed")
    recorder = Recorder()
    with kube_api(apiserver) as api:
        watcher = pod_watcher(api, recorder).start()
        try:
            wait_until(watcher.synced.is_set, "the first list")
            apiserver.go_down()  # the watch breaks; nothing can reconnect
            apiserver.delete("pods", "doomed", "ns")
            add_pod(apiserver, "ns", "new")
            apiserver.compact()  # the history the watcher would resume from is gone
            apiserver.come_up()
            wait_until(lambda: watcher.relists == 2, "the relist after 410")
            wait_until(lambda: recorder.names("DELETED") == ["doomed"], "the deletion from the relist")
            assert "new" in recorder.names("ADDED")
            assert "keep" not in recorder.names("DELETED")
            assert sorted(o["metadata"]["name"] for o in watcher.snapshot()) == ["keep", "new"]
            gone = [r for r in apiserver.requests if r.verb == "watch" and r.status == 200]
            assert gone, "the watch requests were logged"
        finally:
            watcher.stop()


def test_stop_ends_an_idle_stream(apiserver):
    recorder = Recorder()
    with kube_api(apiserver, watch_timeout=300) as api:
        watcher = pod_watcher(api, recorder).start()
        wait_until(watcher.synced.is_set, "the first list")
        wait_until(lambda: any(r.verb == "list" for r in apiserver.requests), "the list")
        watcher.stop(timeout=10)
        assert not watcher._thread.is_alive()
