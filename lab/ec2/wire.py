"""The EC2 query protocol as the strict layer sees it: parse a form-encoded request into
an action and flat parameters, re-encode rewritten parameters, and render EC2-style XML
answers (errors and the few responses the layer writes itself)."""
from __future__ import annotations

import io
import logging
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 * 1024 * 1024

HTTP_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
                500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class ApiRequest:
    """One EC2 query request: its action and flat parameters in wire order."""

    action: str
    params: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return default

    def indexed(self, prefix: str) -> list[str]:
        """Values of ``prefix.1``, ``prefix.2``, ... in index order."""
        found = []
        for key, value in self.params:
            head, _, tail = key.rpartition(".")
            if head == prefix and tail.isdigit():
                found.append((int(tail), value))
        return [value for _, value in sorted(found)]

    def members(self, prefix: str) -> list[dict[str, str]]:
        """Structures ``prefix.N.Field`` as one dict per N, in index order."""
        groups: dict[int, dict[str, str]] = {}
        start = prefix + "."
        for key, value in self.params:
            if not key.startswith(start):
                continue
            index, _, field = key[len(start):].partition(".")
            if index.isdigit() and field:
                groups.setdefault(int(index), {})[field] = value
        return [groups[i] for i in sorted(groups)]

    def filters(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for member in self.members("Filter"):
            name = member.get("Name")
            if name is None:
                continue
            values = [v for k, v in sorted(member.items(), key=_value_order) if k.startswith("Value.")]
            result.setdefault(name, []).extend(values)
        return result

    def has_prefix(self, prefix: str) -> bool:
        return any(key == prefix or key.startswith(prefix + ".") for key, _ in self.params)

    def without(self, *prefixes: str) -> list[tuple[str, str]]:
        """Parameters minus every key equal to or under one of ``prefixes``."""
        return [
            (k, v) for k, v in self.params
            if not any(k == p or k.startswith(p + ".") for p in prefixes)
        ]


def _value_order(item: tuple[str, str]) -> tuple[int, str]:
    key = item[0]
    tail = key.rpartition(".")[2]
    return (int(tail) if tail.isdigit() else 0, key)


def read_request(environ: dict[str, Any]) -> ApiRequest | None:
    """Parse the request and put the body back for the next application.
    Returns None when the request carries no Action (not an EC2 query call)."""
    body = b""
    if environ.get("REQUEST_METHOD", "GET") == "POST":
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        body = environ["wsgi.input"].read(min(length, MAX_BODY_BYTES)) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
    text = body.decode("utf-8", "replace") if body else environ.get("QUERY_STRING", "")
    params = tuple(parse_qsl(text, keep_blank_values=True))
    action = next((v for k, v in params if k == "Action"), None)
    if action is None:
        return None
    return ApiRequest(action=action, params=params)


def replace_body(environ: dict[str, Any], params: list[tuple[str, str]]) -> None:
    """Hand the next application a request with these parameters instead."""
    body = urlencode(params).encode()
    environ["REQUEST_METHOD"] = "POST"
    environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded; charset=utf-8"
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["QUERY_STRING"] = ""
    environ["wsgi.input"] = io.BytesIO(body)


def new_request_id() -> str:
    return str(uuid.uuid4())


def error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{new_request_id()}</RequestID></Response>"
    ).encode()


def result_xml(action: str, inner: str) -> bytes:
    """A success response written by the layer itself; ``inner`` is already escaped."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{action}Response xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>{new_request_id()}</requestId>{inner}</{action}Response>"
    ).encode()


def parse_answer(body: bytes) -> tuple[ET.Element, Callable[[str], str]]:
    """moto's XML answer, and a function naming a tag in its namespace."""
    root = ET.fromstring(body)
    namespace = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else ""
    ET.register_namespace("", namespace)
    return root, (lambda name: f"{{{namespace}}}{name}" if namespace else name)


def respond(start_response: Any, status: int, body: bytes,
            content_type: str = "text/xml") -> list[bytes]:
    start_response(
        f"{status} {HTTP_REASONS.get(status, 'Error')}",
        [("Content-Type", content_type), ("Content-Length", str(len(body)))],
    )
    return [body]


class Refusal(Exception):
    """The layer answers the call with an EC2 error and changes nothing."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def parse_count(request: ApiRequest, name: str) -> int:
    """An integer parameter >= 0 (0 when absent), or InvalidParameterValue naming it."""
    raw = request.get(name)
    if raw is None:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise Refusal("InvalidParameterValue", f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise Refusal("InvalidParameterValue", f"{name} must be >= 0, got {value}")
    return value
