"""A minimal HTTP/1.1 + JSON client for the agent's unix socket, for the CNI executable.

Why not ``http.client``: it imports ``email.*`` and ``socket`` pulls in ``enum`` and
``selectors``; the executable starts for every pod and its whole budget is about 25 ms, so
this module speaks the few lines of HTTP/1.1 the agent needs over ``_socket`` directly
(one request per connection, ``Connection: close``, Content-Length or chunked replies).

Errors, so that callers can decide per CNI command (DEL succeeds when the agent is down):

    AgentError
      +-- AgentUnreachable   nothing listens: no socket file, refused, connect timed out
      +-- AgentFailed        the agent took the request but no valid answer came back
                             (timeout, connection closed, not HTTP, not JSON)
"""
from __future__ import annotations

import _socket  # the C module: ``socket`` would add ~3 ms of enum/selectors imports
import json
import time

MAX_REPLY_BYTES = 4 << 20


class AgentError(Exception):
    """The agent could not answer; the message names the socket and the cause."""


class AgentUnreachable(AgentError):
    """Nothing listens on the socket: the request never reached the agent."""


class AgentFailed(AgentError):
    """The request may have reached the agent, but no valid reply came back."""


def call_agent(sock_path: str, method: str, path: str, body: dict | None,
               timeout: float) -> tuple[int, dict]:
    """Send one request and return (HTTP status, decoded JSON object of the reply)."""
    deadline = time.monotonic() + timeout
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: underlay-agent\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n").encode()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        _connect(sock, sock_path, deadline)
        try:
            sock.settimeout(_remaining(deadline, sock_path))
            sock.sendall(head + payload)
            raw = _read_reply(sock, sock_path, deadline)
        except TimeoutError:
            raise AgentFailed(f"agent at {sock_path} did not answer {method} {path} "
                              f"within {timeout:g} s") from None
        except OSError as exc:
            raise AgentFailed(f"connection to agent at {sock_path} failed during "
                              f"{method} {path}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    return _parse_reply(raw, sock_path)


def _remaining(deadline: float, sock_path: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(sock_path)
    return left


def _connect(sock, sock_path: str, deadline: float) -> None:
    try:
        sock.settimeout(_remaining(deadline, sock_path))
        sock.connect(sock_path)
    except FileNotFoundError:
        raise AgentUnreachable(f"agent socket {sock_path} does not exist "
                               "(is the underlay agent running?)") from None
    except ConnectionRefusedError:
        raise AgentUnreachable(f"agent at {sock_path} refused the connection "
                               "(is the underlay agent running?)") from None
    except TimeoutError:
        raise AgentUnreachable(f"connecting to agent at {sock_path} timed out") from None
    except OSError as exc:
        raise AgentUnreachable(f"cannot connect to agent at {sock_path}: "
                               f"{exc.strerror or exc}") from None


def _read_reply(sock, sock_path: str, deadline: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        sock.settimeout(_remaining(deadline, sock_path))
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        size += len(data)
        if size > MAX_REPLY_BYTES:
            raise AgentFailed(f"agent at {sock_path} sent more than {MAX_REPLY_BYTES} bytes")
        chunks.append(data)
        if _is_complete(b"".join(chunks)):
            return b"".join(chunks)


def _is_complete(raw: bytes) -> bool:
    """True once the headers and a Content-Length body are in (else read to EOF)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in raw[:end].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            try:
                return len(raw) - end - 4 >= int(value)
            except ValueError:
                return False
    return False


def _parse_reply(raw: bytes, sock_path: str) -> tuple[int, dict]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise AgentFailed(f"agent at {sock_path} sent a reply that is not HTTP/1.x "
                          f"({lines[0][:60]!r})")
    status = int(parts[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = _dechunk(body, sock_path)
    elif b"content-length" in headers:
        body = body[: int(headers[b"content-length"])]
    if not body.strip():
        return status, {}
    try:
        reply = json.loads(body)
    except ValueError as exc:
        raise AgentFailed(f"agent at {sock_path} sent HTTP {status} with a body that is "
                          f"not JSON: {exc}") from None
    if not isinstance(reply, dict):
        raise AgentFailed(f"agent at {sock_path} sent HTTP {status} with a JSON "
                          f"{type(reply).__name__}, expected an object")
    return status, reply


def _dechunk(body: bytes, sock_path: str) -> bytes:
    out = []
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise AgentFailed(f"agent at {sock_path} sent a malformed chunked body") from None
        if size == 0 or not sep:
            return b"".join(out)
        out.append(rest[:size])
        body = rest[size + 2:]
