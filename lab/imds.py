"""The emulated instance metadata service: IMDSv2 on 169.254.169.254:80 inside one node's
namespace, answering from the emulated cloud's state for that node's instance.

    PUT /latest/api/token   (X-aws-ec2-metadata-token-ttl-seconds: 1..21600) -> a token
    GET /latest/meta-data/<path>   (X-aws-ec2-metadata-token: the token) -> text

Tokens are required (``HttpTokens: required``, as the launch template of a hardened node
sets): a GET without a valid token is 401, a PUT without a TTL 400, an unknown path 404.
Served paths: ``instance-id``, ``instance-type``, ``local-ipv4``, ``mac``,
``placement/availability-zone``, ``placement/region`` and, per attached ENI,
``network/interfaces/macs/<mac>/`` ``interface-id``, ``subnet-id``, ``vpc-id``,
``device-number``, ``local-ipv4s``, ``subnet-ipv4-cidr-block``, ``security-group-ids``.

The address is put on the node namespace's ``lo`` and the socket made inside it: nothing
listens in the root namespace. ``stop()`` closes the socket and removes the address.
"""
from __future__ import annotations

import logging
import secrets
import subprocess
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lab.ec2.server import open_socket_in_netns

logger = logging.getLogger(__name__)

IMDS_ADDRESS = "169.254.169.254"
IMDS_PORT = 80
MAX_TTL = 21600
Snapshot = Callable[[], Mapping[str, Any]]


def instance_metadata(snapshot: Mapping[str, Any], instance_id: str, region: str) -> dict[str, str]:
    """Pure: every served path of ``instance_id`` -> its text, from a cloud snapshot."""
    instance = next((i for i in snapshot["instances"] if i["id"] == instance_id), None)
    if instance is None:
        return {}
    subnets = {s["id"]: s for s in snapshot["subnets"]}
    enis = {e["id"]: e for e in snapshot["enis"]}
    attached = [enis[eni_id] for _, eni_id in sorted(instance["enis"].items(), key=lambda kv: int(kv[0]))
                if eni_id in enis]
    primary = next((e for e in attached if e.get("device_index") == 0), None)
    zone = subnets.get(instance["subnet_id"], {}).get("availability_zone", "")
    paths = {"instance-id": instance_id, "instance-type": instance["instance_type"],
             "local-ipv4": instance["private_ip"], "placement/availability-zone": zone,
             "placement/region": region}
    if primary is not None:
        paths["mac"] = primary["mac"].lower()
    for eni in attached:
        base = f"network/interfaces/macs/{eni['mac'].lower()}/"
        paths.update({base + "interface-id": eni["id"], base + "subnet-id": eni["subnet_id"],
                      base + "vpc-id": eni["vpc_id"],
                      base + "device-number": str(eni.get("device_index") or 0),
                      base + "local-ipv4s": "\n".join(eni["ips"]),
                      base + "subnet-ipv4-cidr-block": subnets.get(eni["subnet_id"], {}).get("cidr", ""),
                      base + "security-group-ids": "\n".join(eni.get("security_groups", []))})
    return paths


class _Handler(BaseHTTPRequestHandler):
    server: "ImdsServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("imds %s: " + format, self.server.instance_id, *args)

    def _answer(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        if self.path != "/latest/api/token":
            self._answer(404, "Not Found")
            return
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= MAX_TTL:
            self._answer(400, "Bad Request")
            return
        self._answer(200, self.server.issue_token())

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            self._answer(401, "Unauthorized")
            return
        prefix = "/latest/meta-data/"
        paths = self.server.metadata()
        if not self.path.startswith(prefix) or self.path[len(prefix):] not in paths:
            self._answer(404, "Not Found")
            return
        self._answer(200, paths[self.path[len(prefix):]])


class ImdsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, netns: str, netns_path: str, instance_id: str, region: str,
                 snapshot: Snapshot) -> None:
        self.netns = netns
        self.instance_id = instance_id
        self.region = region
        self._snapshot = snapshot
        self.tokens: set[str] = set()
        self._lock = threading.Lock()
        subprocess.run(["ip", "-n", netns, "addr", "replace", f"{IMDS_ADDRESS}/32", "dev", "lo"],
                       check=True, capture_output=True, timeout=10)
        try:
            sock = open_socket_in_netns(netns_path, IMDS_PORT, IMDS_ADDRESS)
        except BaseException:
            self._remove_address()
            raise
        super().__init__((IMDS_ADDRESS, IMDS_PORT), _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"imds-{instance_id}", daemon=True)
        self._thread.start()
        logger.info("emulated IMDS for %s on %s:%d in %s", instance_id, IMDS_ADDRESS, IMDS_PORT,
                    netns)

    def issue_token(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.tokens.add(token)
        return token

    def metadata(self) -> dict[str, str]:
        return instance_metadata(self._snapshot(), self.instance_id, self.region)

    def _remove_address(self) -> None:
        subprocess.run(["ip", "-n", self.netns, "addr", "del", f"{IMDS_ADDRESS}/32", "dev", "lo"],
                       capture_output=True, timeout=10, check=False)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=5)
        self._remove_address()
