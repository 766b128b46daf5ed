"""Who this instance is, from the EC2 instance metadata service (IMDSv2), the way an EC2
node normally learns it: used when the Kubernetes Node carries no ``spec.providerID``
(or Kubernetes is off) and the configuration names no ``instance_id``.

IMDSv2 is a session protocol: ``PUT /latest/api/token`` with the header
``X-aws-ec2-metadata-token-ttl-seconds`` returns a token, and every ``GET
/latest/meta-data/...`` carries it in ``X-aws-ec2-metadata-token``. Read here, in order:
``instance-id``, ``placement/availability-zone``, ``placement/region``, ``mac`` (the
primary ENI's), then that ENI's details under ``network/interfaces/macs/<mac>/``:
``interface-id``, ``subnet-id``, ``vpc-id``, ``device-number``, ``local-ipv4s``,
``subnet-ipv4-cidr-block`` and ``security-group-ids``.

Every request has a timeout; a failure is :class:`MetadataUnavailable` naming the endpoint,
the path and the cause. The token is never logged. On EKS the instance's metadata hop limit
must allow the agent: it runs with ``hostNetwork``, so the default limit of 1 suffices.
"""
from __future__ import annotations

import http.client
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from cloud.errors import CloudUnavailable

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://169.254.169.254"
TOKEN_PATH = "/latest/api/token"
TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL_SECONDS = 300  # one identity lookup needs the token for a moment only
TIMEOUT = 2.0


class MetadataUnavailable(CloudUnavailable):
    """The instance metadata service did not answer as expected; the message says where."""


@dataclass(frozen=True)
class InstanceIdentity:
    instance_id: str
    zone: str
    region: str
    mac: str
    eni_id: str
    subnet_id: str
    vpc_id: str
    device_number: int
    local_ipv4s: tuple[str, ...]
    subnet_cidr: str
    security_groups: tuple[str, ...]

    def describe(self) -> str:
        return (f"instance {self.instance_id} in {self.zone}, primary ENI {self.eni_id}"
                f" ({self.mac}) in {self.subnet_id}")


class _Session:
    def __init__(self, endpoint: str, timeout: float) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"instance metadata endpoint {endpoint!r}: expected http://host[:port]")
        self.endpoint = endpoint
        self._host, self._port = parts.hostname, parts.port or 80
        self._timeout = timeout
        self._token = ""

    def _request(self, method: str, path: str, headers: dict[str, str]) -> str:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            conn.request(method, path, headers=headers)
            reply = conn.getresponse()
            body = reply.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise MetadataUnavailable(f"the instance metadata service at {self.endpoint} did not"
                                      f" answer {method} {path}: {exc}") from None
        finally:
            conn.close()
        if reply.status != 200:
            raise MetadataUnavailable(f"the instance metadata service at {self.endpoint}"
                                      f" answered {method} {path} with HTTP {reply.status}")
        return body.strip()

    def open(self) -> None:
        self._token = self._request("PUT", TOKEN_PATH, {TOKEN_TTL_HEADER: str(TOKEN_TTL_SECONDS)})
        if not self._token:
            raise MetadataUnavailable(f"the instance metadata service at {self.endpoint} gave"
                                      " an empty IMDSv2 token")

    def get(self, path: str) -> str:
        return self._request("GET", f"/latest/meta-data/{path}", {TOKEN_HEADER: self._token})


def read_instance_identity(endpoint: str = DEFAULT_ENDPOINT,
                           timeout: float = TIMEOUT) -> InstanceIdentity:
    """Token, then instance-id, placement, mac and the primary ENI's details."""
    session = _Session(endpoint, timeout)
    session.open()
    instance_id = session.get("instance-id")
    if not instance_id.startswith("i-"):
        raise MetadataUnavailable(f"the instance metadata service at {endpoint} gave instance-id"
                                  f" {instance_id[:40]!r}, not an instance id")
    zone = session.get("placement/availability-zone")
    region = session.get("placement/region")
    mac = session.get("mac").lower()
    eni = f"network/interfaces/macs/{mac}/"
    number = session.get(eni + "device-number")
    try:
        device_number = int(number)
    except ValueError:
        raise MetadataUnavailable(f"the instance metadata service at {endpoint} gave"
                                  f" device-number {number[:20]!r}") from None
    identity = InstanceIdentity(
        instance_id=instance_id, zone=zone, region=region, mac=mac,
        eni_id=session.get(eni + "interface-id"), subnet_id=session.get(eni + "subnet-id"),
        vpc_id=session.get(eni + "vpc-id"), device_number=device_number,
        local_ipv4s=tuple(session.get(eni + "local-ipv4s").split()),
        subnet_cidr=session.get(eni + "subnet-ipv4-cidr-block"),
        security_groups=tuple(session.get(eni + "security-group-ids").split()))
    logger.info("instance metadata service at %s: %s", endpoint, identity.describe())
    return identity
