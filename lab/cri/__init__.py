"""A CRI client for the lab: the kubelet's side of the runtime's RuntimeService, enough to
run, inspect, stop and remove pod sandboxes (``client.CriClient``).

``runtime_v1.proto`` is the subset of the CRI API it needs, written from the public field
numbers. Its Python stubs are generated on first use with grpcio-tools into
``build/cri/<hash of the proto>/`` (not committed) and imported from there.
"""
from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("runtime_v1.proto")
BUILD = Path(__file__).resolve().parents[2] / "build" / "cri"
_lock = threading.Lock()


def load_api() -> tuple[ModuleType, ModuleType]:
    """(messages module, gRPC stubs module) for ``runtime_v1.proto``."""
    with _lock:
        source = PROTO.read_bytes()
        out = BUILD / hashlib.sha256(source).hexdigest()[:16]
        if not (out / "runtime_v1_pb2_grpc.py").exists():
            _generate(out)
        if str(out) not in sys.path:
            sys.path.insert(0, str(out))
        return (importlib.import_module("runtime_v1_pb2"),
                importlib.import_module("runtime_v1_pb2_grpc"))


def _generate(out: Path) -> None:
    from grpc_tools import protoc  # test extra: only the lab needs it

    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{PROTO.parent}", f"--python_out={tmp}", f"--grpc_python_out={tmp}",
            str(PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc could not compile {PROTO}")
    try:
        os.rename(tmp, out)
    except OSError:
        if not (out / "runtime_v1_pb2_grpc.py").exists():  # not another process that won
            raise
