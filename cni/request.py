"""Parse one CNI invocation (environment + stdin) into a frozen ``Request``, or fail with a
``CniError`` whose message names the variable or key and the bad value.

Validation order follows the reference skeleton (libcni's ``skel``): the command, the
environment the command needs, then stdin (size, JSON, cniVersion, then the keys).
Nothing here has side effects: bad input never reaches the service or the kernel.

This runs in the agent (``cni.invocation``). The host executable checks a few of the same
things itself, with the same messages, because it cannot frame a request without them
(see ``cni/shim/main.go``): keep the two in step.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from cni.spec import DEFAULT_SOCKET, MODES, PLUGIN_TYPE, SUPPORTED_VERSIONS, Code, CniError

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
MAX_STDIN_BYTES = 1 << 20
DEFAULT_TIMEOUT = 30.0
MAX_TIMEOUT = 300.0
OLDER_THAN_1_1 = ("0.4.0", "1.0.0")  # STATUS and GC came with spec 1.1.0
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
LEGACY_ATTACHMENTS = "cni.dev/attachments"
MIN_MTU, MAX_MTU = 576, 9001  # as the agent accepts: EC2's jumbo frames stop at 9001
# Which environment variables each command needs (CNI spec 1.1, "Parameters"). CNI_PATH is
# optional for ADD, CHECK, DEL and STATUS but required for GC (the reference plugins' skel
# requires it for ADD/CHECK/DEL as well; the spec does not, and we follow the spec).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
}
ATTACHMENT_COMMANDS = ("ADD", "CHECK", "DEL")  # those that name one (container, ifname)
# CNI_ARGS keys we understand: what kubelet and the CRI runtimes put there.
KNOWN_ARGS = {
    "K8S_POD_NAMESPACE": "pod_namespace",
    "K8S_POD_NAME": "pod_name",
    "K8S_POD_INFRA_CONTAINER_ID": "infra_container_id",
    "K8S_POD_UID": "pod_uid",
}
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*\Z")
# The spec's and libcni's rule for CNI_IFNAME is at most 15 bytes (the kernel's IFNAMSIZ),
# not . or .., no '/', ':' or whitespace; of those names the datapath wires only ASCII
# letters, digits, '_', '-' and '.' (cni.datapath.base.validate_pod). The spec asks for an
# error when the plugin cannot use the name: refusing it here, before an address is
# borrowed, is that error; refused later, the rollback could not unwire it either.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,15}\Z")
# CNI_ARGS IgnoreUnknown takes the values libcni's UnmarshallableBool takes (any case).
_ARG_BOOLS = {"1": True, "true": True, "0": False, "false": False}
_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\Z")


@dataclass(frozen=True)
class Request:
    """One parsed invocation. ``pod``: pod_namespace, pod_name, pod_uid, infra_container_id
    from CNI_ARGS (those present); ``mtu`` None: the agent's; ``prev_result`` the netconf's
    prevResult; ``valid_attachments`` (GC only) the cni.dev/valid-attachments entries."""

    command: str
    cni_version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    pod: dict[str, str] = dataclass_field(default_factory=dict)
    network: str = ""
    socket: str = DEFAULT_SOCKET
    mode: str = "veth"
    mtu: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    prev_result: dict[str, Any] | None = None
    valid_attachments: tuple[dict[str, str], ...] | None = None


def parse_request(env: dict[str, str], stdin: bytes) -> Request:
    check_env_encoding(env)
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(Code.INVALID_ENV, "CNI_COMMAND is not set; expected one of "
                       + ", ".join(COMMANDS))
    if command not in COMMANDS:
        raise CniError(Code.INVALID_ENV, f"CNI_COMMAND {command!r} is not a CNI command; "
                       "expected one of " + ", ".join(COMMANDS))
    missing = [name for name in REQUIRED_ENV.get(command, ()) if not env.get(name)]
    if missing:
        raise CniError(Code.INVALID_ENV, f"{command} needs the environment variable(s) "
                       + ", ".join(missing) + ", which are missing or empty")
    conf = decode_stdin(stdin, allow_empty=command == "VERSION")
    if command == "VERSION":
        return Request(command, _version_for_answer(conf))
    version = check_version(conf)
    if command in ("STATUS", "GC") and version in OLDER_THAN_1_1:
        raise CniError(Code.INCOMPATIBLE_VERSION, f"cniVersion {version} does not allow "
                       f"{command}: it needs 1.1.0")
    fields: dict[str, Any] = {"command": command, "cni_version": version}
    if command in ATTACHMENT_COMMANDS:
        fields.update(parse_env(command, env))
    fields.update(parse_conf(command, conf))
    return Request(**fields)


def decode_stdin(stdin: bytes, allow_empty: bool = False) -> dict[str, Any]:
    if len(stdin) > MAX_STDIN_BYTES:
        raise CniError(Code.DECODE_FAILURE, f"network configuration on stdin is larger than "
                       f"{MAX_STDIN_BYTES} bytes; refusing to decode it")
    if not stdin.strip():
        if allow_empty:
            return {}
        raise CniError(Code.DECODE_FAILURE, "no network configuration on stdin")
    try:
        conf = json.loads(stdin)
    except UnicodeDecodeError as exc:
        raise CniError(Code.DECODE_FAILURE, f"network configuration on stdin is not UTF-8: "
                       f"{exc.reason} at byte {exc.start}") from None
    except ValueError as exc:
        raise CniError(Code.DECODE_FAILURE, f"network configuration on stdin is not valid "
                       f"JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(Code.DECODE_FAILURE, "network configuration on stdin must be a JSON "
                       f"object, got {_a(_type_name(conf))}")
    return conf


def check_version(conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion")
    if version is None:
        raise CniError(Code.INCOMPATIBLE_VERSION, "cniVersion is missing from the network "
                       "configuration; supported: " + ", ".join(SUPPORTED_VERSIONS))
    if not isinstance(version, str):
        raise CniError(Code.INVALID_CONFIG, f"cniVersion must be a string, got "
                       f"{_a(_type_name(version))}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(Code.INCOMPATIBLE_VERSION, f"cniVersion {version!r} is not supported; "
                       "supported: " + ", ".join(SUPPORTED_VERSIONS))
    return version


def check_env_encoding(env: dict[str, str]) -> None:
    """CNI_* values must be UTF-8: Python keeps undecodable bytes as lone surrogates,
    which would only fail later, deep in the agent, as an internal error."""
    for name, value in env.items():
        if not name.startswith("CNI_"):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise CniError(Code.INVALID_ENV, f"{name} is not valid UTF-8 (byte "
                           f"{exc.start} of its value)") from None


def parse_env(command: str, env: dict[str, str]) -> dict[str, Any]:
    container_id = env["CNI_CONTAINERID"]
    if not _NAME_RE.match(container_id):
        raise CniError(Code.INVALID_ENV, f"CNI_CONTAINERID {container_id!r} has invalid "
                       "characters (allowed: letters, digits, _ . -, not first: _ . -)")
    ifname = env["CNI_IFNAME"]
    if not _IFNAME_RE.match(ifname) or ifname in (".", ".."):
        raise CniError(Code.INVALID_ENV, f"CNI_IFNAME {ifname!r} is not an interface name "
                       "this plugin can use (1-15 bytes of ASCII letters, digits, '_', '-', "
                       "'.'; not . or ..)")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CniError(Code.INVALID_ENV, f"CNI_NETNS {netns!r} must be an absolute path")
    return {"container_id": container_id, "ifname": ifname, "netns": netns,
            "pod": parse_cni_args(env.get("CNI_ARGS", ""))}


def parse_cni_args(text: str) -> dict[str, str]:
    """``K=V;K2=V2`` -> pod fields; unknown keys are an error unless IgnoreUnknown is true.
    As libcni's ``types.LoadArgs`` reads them (what the reference plugins use): exactly one
    '=' per item, and IgnoreUnknown one of 1, true, 0, false in any case."""
    pairs: dict[str, str] = {}
    for item in text.split(";") if text else ():
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise CniError(Code.INVALID_ENV, f"CNI_ARGS item {item!r} is not of the form K=V")
        pairs[key] = value
    ignore = pairs.pop("IgnoreUnknown", "false")
    if ignore.lower() not in _ARG_BOOLS:
        raise CniError(Code.INVALID_ENV, f"CNI_ARGS IgnoreUnknown {ignore!r} is not a "
                       "boolean (1, true, 0 or false)")
    ignore_unknown = _ARG_BOOLS[ignore.lower()]
    unknown = sorted(k for k in pairs if k not in KNOWN_ARGS)
    if unknown and not ignore_unknown:
        raise CniError(Code.INVALID_ENV, "CNI_ARGS has unknown key(s) " + ", ".join(unknown)
                       + " (set IgnoreUnknown=1 to ignore them)")
    return {KNOWN_ARGS[k]: v for k, v in pairs.items() if k in KNOWN_ARGS}


def parse_conf(command: str, conf: dict[str, Any]) -> dict[str, Any]:
    name = _get(conf, "name", str)
    if not name or not _NAME_RE.match(name):
        raise CniError(Code.INVALID_CONFIG, f"name {name!r} is not a valid network name "
                       "(letters, digits, _ . -, not first: _ . -)")
    plugin_type = _get(conf, "type", str)
    if plugin_type != PLUGIN_TYPE:
        raise CniError(Code.INVALID_CONFIG, f"type is {plugin_type!r}; this plugin is "
                       f"{PLUGIN_TYPE!r}")
    if "ipam" in conf:  # code 2: the spec wants the key and its value in the message
        raise CniError(Code.UNSUPPORTED_FIELD, f"ipam {json.dumps(conf['ipam']):.200} is not "
                       "supported: underlay allocates VPC addresses itself (remove the ipam "
                       "section)")
    sock = _get(conf, "socket", str, DEFAULT_SOCKET)
    if not sock.startswith("/"):
        raise CniError(Code.INVALID_CONFIG, f"socket {sock!r} must be an absolute path")
    mode = _get(conf, "mode", str, "veth")
    if mode not in MODES:
        raise CniError(Code.INVALID_CONFIG, f"mode {mode!r} is not supported; use one of "
                       + ", ".join(MODES))
    mtu = _get(conf, "mtu", int, None)
    if mtu is not None and not MIN_MTU <= mtu <= MAX_MTU:
        raise CniError(Code.INVALID_CONFIG, f"mtu {mtu} is out of range ({MIN_MTU}-{MAX_MTU})")
    timeout = _get(conf, "timeout", (int, float), DEFAULT_TIMEOUT)
    if not 0 < timeout <= MAX_TIMEOUT:
        raise CniError(Code.INVALID_CONFIG, f"timeout {timeout} is out of range "
                       f"(0-{MAX_TIMEOUT:g} seconds)")
    _get(conf, "runtimeConfig", dict, None)
    prev = _get(conf, "prevResult", dict, None)
    if prev is not None:
        check_result_shape(prev, "prevResult")
    if command == "CHECK" and prev is None:
        raise CniError(Code.INVALID_CONFIG, "prevResult is required for CHECK")
    fields = {"network": name, "socket": sock, "mode": mode, "mtu": mtu,
              "timeout": float(timeout), "prev_result": prev}
    if command == "GC":
        fields["valid_attachments"] = parse_valid_attachments(conf)
    return fields


def parse_valid_attachments(conf: dict[str, Any]) -> tuple[dict[str, str], ...]:
    """The spec's ``cni.dev/valid-attachments``; ``cni.dev/attachments``, the name of an
    earlier draft that libcni still sends alongside, is accepted when it comes alone."""
    key = VALID_ATTACHMENTS if VALID_ATTACHMENTS in conf else LEGACY_ATTACHMENTS
    if key not in conf:
        raise CniError(Code.INVALID_CONFIG, f"{VALID_ATTACHMENTS} is required for GC (without "
                       "it every attachment of the network would be released)")
    items = conf[key]
    if not isinstance(items, list):
        raise CniError(Code.INVALID_CONFIG, f"{key} must be a list, got {_a(_type_name(items))}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise CniError(Code.INVALID_CONFIG, f"{key}[{i}] must be an object with "
                           f"containerID and ifname, got {_a(_type_name(item))}")
        for field in ("containerID", "ifname"):
            if not isinstance(item.get(field), str) or not item[field]:
                raise CniError(Code.INVALID_CONFIG, f"{key}[{i}].{field} must be a "
                               "non-empty string")
        out.append({"containerID": item["containerID"], "ifname": item["ifname"]})
    return tuple(out)


def check_result_shape(result: dict[str, Any], where: str) -> None:
    for key in ("interfaces", "ips", "routes"):
        value = result.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise CniError(Code.INVALID_CONFIG, f"{where}.{key} must be a list of objects")
    if not isinstance(result.get("dns", {}), dict):
        raise CniError(Code.INVALID_CONFIG, f"{where}.dns must be an object")


def netns_exists(path: str) -> bool:
    return os.path.exists(path)


def is_version(value: Any) -> bool:
    """A version string of the form X.Y.Z (as VERSION accepts and errors echo)."""
    return isinstance(value, str) and bool(_VERSION_RE.match(value))


def _version_for_answer(conf: dict[str, Any]) -> str:
    """VERSION answers in the version it was asked in; the newest when none was given."""
    version = conf.get("cniVersion")
    if is_version(version):
        return version
    if version is not None:
        raise CniError(Code.INVALID_CONFIG, f"cniVersion {version!r} is not a version "
                       "of the form X.Y.Z")
    return SUPPORTED_VERSIONS[-1]


def _get(conf: dict[str, Any], key: str, kind, default: Any = ...) -> Any:
    if key not in conf:
        if default is ...:
            raise CniError(Code.INVALID_CONFIG, f"{key} is missing from the network "
                           "configuration")
        return default
    value = conf[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        names = "number" if float in kinds else _type_name(kind())
        raise CniError(Code.INVALID_CONFIG, f"{key} must be {_a(names)}, got "
                       f"{_a(_type_name(value))} ({value!r:.40})")
    return value


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", int: "integer", float: "number",
            bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)
