"""A listening TCP socket on 127.0.0.1 inside another network namespace, so that processes
there (an agent in a node namespace) reach the fake API server. Only a short-lived helper
thread enters the namespace; the socket stays bound there after the thread ends."""
from __future__ import annotations

import socket
import threading
from typing import Any

from lab.ec2.server import _open_socket_in_netns

NETNS_TIMEOUT = 10.0


def open_socket_in_netns(netns_path: str, port: int) -> socket.socket:
    """Bind and listen on 127.0.0.1:``port`` in the namespace at ``netns_path`` (its loopback
    is brought up first)."""
    made: dict[str, Any] = {}
    thread = threading.Thread(target=_open_socket_in_netns, args=(netns_path, port, made),
                              name="fake-apiserver-netns", daemon=True)
    thread.start()
    thread.join(timeout=NETNS_TIMEOUT)
    if "error" in made:
        raise OSError(f"cannot listen in {netns_path}: {made['error']}")
    if "socket" not in made:
        raise TimeoutError(f"opening a socket in {netns_path} did not finish")
    return made["socket"]
