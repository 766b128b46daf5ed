"""Shared pieces of the installer tests (no tests here): the host executable (the static Go
shim, ``make shim``) and an older build of it for upgrades, a fake host root, its listing,
and running ``underlay-install`` as the init container does."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lab.node_io import build_shim
from cni.conflist import ConflistOptions, render_conflist_json

REPO = Path(__file__).resolve().parent.parent
INSTALL = [sys.executable, "-m", "ipam_daemon.installer"]


@pytest.fixture(scope="session")
def plugin_binary() -> Path:
    """``build/underlay``: the executable the image ships."""
    return Path(build_shim())


@pytest.fixture(scope="session")
def older_plugin_binary(tmp_path_factory) -> Path:
    """The same program built as another version (``--version`` tells them apart)."""
    out = tmp_path_factory.mktemp("older") / "underlay"
    subprocess.run([str(REPO / "cni" / "shim" / "build.sh"), str(out), "0.0.9"], check=True,
                   capture_output=True, timeout=600)
    return out


def reported_version(exe: Path) -> str:
    return subprocess.run([str(exe), "--version"], capture_output=True, text=True,
                          timeout=30, check=True).stdout.split()[-1]


def listing(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: type and mode, and for files size, content hash, mtime.
    Directory mtimes are left out (adding and removing an entry changes them)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(st.st_mode & 0o7777))
            else:
                out[rel] = ("file", oct(st.st_mode & 0o7777), st.st_size, st.st_mtime_ns,
                            st.st_ino, hash(path.read_bytes()))
    return out


def make_host(root: Path, populated: bool) -> Path:
    """A fake host root; ``populated``: other plugins and another conflist already there."""
    root.mkdir()
    if populated:
        (root / "opt/cni/bin").mkdir(parents=True)
        (root / "opt/cni/bin/loopback").write_bytes(b"\x7fELF other plugin")
        (root / "opt/cni/bin/loopback").chmod(0o755)
        (root / "etc/cni/net.d").mkdir(parents=True)
        (root / "etc/cni/net.d/99-loopback.conf").write_text('{"type": "loopback"}\n')
        (root / "var/lib/underlay").mkdir(parents=True)  # an operator's file beside ours
        (root / "var/lib/underlay/README.operator").write_bytes(b"notes")
    return root


def write_template(path: Path, socket: str) -> Path:
    path.write_text(render_conflist_json(ConflistOptions(socket=socket)))
    return path


def run_install(host: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "UNDERLAY_"))}
    return subprocess.run([*INSTALL, "--host-root", str(host), *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)
