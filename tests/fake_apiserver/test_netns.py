"""The fake API server serves inside a node's network namespace too: a process there reads
an object through 127.0.0.1, not after go_down, again after come_up, never after stop."""
from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from .server import FakeApiServer

PROBE = ("import sys, urllib.request; "
         "print(urllib.request.urlopen(sys.argv[1] + '/api/v1/nodes/' + sys.argv[2],"
         " timeout=5).read().decode())")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"ufapi-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def fetch_inside(netns: str, url: str, node: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, url, node],
                          capture_output=True, text=True, timeout=60)


def test_listen_in_netns_serves_inside_across_down_and_up_until_stopped(netns):
    server = FakeApiServer().start()
    try:
        server.create("nodes", {"metadata": {"name": "in-ns"}, "spec": {}})
        url = server.listen_in_netns(f"/run/netns/{netns}")
        assert url == server.url
        first = fetch_inside(netns, url, "in-ns")
        assert first.returncode == 0 and '"name": "in-ns"' in first.stdout, first.stderr
        server.go_down()
        assert fetch_inside(netns, url, "in-ns").returncode != 0
        server.come_up()
        again = fetch_inside(netns, url, "in-ns")
        assert again.returncode == 0 and '"in-ns"' in again.stdout, again.stderr
    finally:
        server.stop()
    after = fetch_inside(netns, url, "in-ns")
    assert after.returncode != 0 and "Connection refused" in after.stderr


def test_listen_in_netns_refuses_a_missing_namespace():
    with FakeApiServer() as server:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            server.listen_in_netns(f"/run/netns/ufapi-missing-{secrets.token_hex(3)}")
