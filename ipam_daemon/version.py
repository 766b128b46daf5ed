"""The one version string of underlay.

It is written once, as ``version`` in ``pyproject.toml``; everything else reads it from
there: the installed package's metadata (``importlib.metadata``) at run time, the Makefile
and the image's Go stage when they build the host executable (``cni/shim/build.sh OUT
VERSION``). ``underlay-agent --version``, the agent's start-up log line, the
``underlay_build_info`` metric, ``/healthz`` and the Kubernetes user agent all print
:data:`VERSION`. A source tree that was never installed falls back to reading
``pyproject.toml`` beside the package, so a checkout reports the same string."""
from __future__ import annotations

import importlib.metadata
import logging
import tomllib
from pathlib import Path

logger = logging.getLogger(__name__)

DISTRIBUTION = "underlay"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def read_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "0+unknown"


VERSION = read_version()
