"""``underlay-install``: put the CNI executable and the conflist on the host, or take them off.

    underlay-install install   [--host-root /host] [--plugin-source FILE|DIR]
                               [--conflist-template FILE] [--skip-conflist | --conflist-only]
                               [--agent-socket PATH] [--wait-seconds N] [--stay]
    underlay-install uninstall [--host-root /host] [--agent-socket PATH] [--force]

``install`` copies the executable into ``<host-root>/opt/cni/bin`` and writes the conflist
into ``<host-root>/etc/cni/net.d``, each atomically (temp file in the same directory, fsync,
rename, fsync of the directory). The conflist is written only once the agent answers
``GET /v1/status`` with ``ready``: the kubelet keeps the node NotReady until a conflist
exists, so no pod is scheduled before the agent can serve it. A wait longer than
``--wait-seconds`` fails with a message naming the socket and the agent's last answer, and
writes nothing. Re-running changes nothing when the content is the same (mtime kept).

The plugin source is the host executable: one static file (``cni/shim``, built by the
image's Go stage), or a directory holding it as ``underlay``. It is renamed over the old one:
at every instant ``/opt/cni/bin/underlay`` starts completely, old or new. An install over
release 0.1.0, whose executable was a PyInstaller bundle, removes that bundle's contents
directory at the next run (an exec that began before the switch may still load from it).

Everything written, and every directory created, is recorded in
``<host-root>/var/lib/underlay/installed.json``; ``uninstall`` removes exactly those (a file
whose content someone else changed since is left alone and named in the log), then the
directories it created if they are empty, so the host is as before. Before the files, it
undoes what the agent changed in the node's network namespace (``cni.datapath.hostclean``,
from ``host-network.json`` beside the agent's state): SNAT chains, the fwmark rule, the ENI
route tables, ENI link settings and sysctls; the agent's state database goes too (the ENIs
stay attached: a later install adopts them by their tag). It refuses, changing nothing, while the agent
still answers on its socket or while pods are still wired (``--force`` cuts them off).

The conflist is ``05-underlay.conflist`` so that it sorts before the conflists other
plugins leave in the directory (``10-aws.conflist`` of the AWS VPC CNI, ``10-calico``,
...): the runtime loads the first file. An older name of ours (``10-underlay.conflist``)
is removed once the new one is written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cni.datapath import DatapathError
from cni.datapath.hostclean import remove_host_changes
from cni.datapath.hostrecord import RecordError
from cni.spec import DEFAULT_SOCKET, PLUGIN_TYPE
from ipam_daemon.client import AgentClient

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1
PLUGIN_NAME = PLUGIN_TYPE


class InstallError(RuntimeError):
    """Installation cannot proceed; the message names the path or the cause."""


@dataclass(frozen=True)
class HostPaths:
    root: Path
    bin_dir: str = "/opt/cni/bin"
    netd_dir: str = "/etc/cni/net.d"
    conflist_name: str = "05-underlay.conflist"
    manifest: str = "/var/lib/underlay/installed.json"
    host_record: str = "/var/lib/underlay/host-network.json"  # the agent's (hostrecord)
    state_files: tuple[str, ...] = tuple(f"/var/lib/underlay/ipam.db{end}"
                                         for end in ("", "-wal", "-shm"))

    def on_host(self, host_path: str) -> Path:
        """``/opt/cni/bin`` -> ``<root>/opt/cni/bin``; refuses paths that leave the root."""
        if not host_path.startswith("/"):
            raise InstallError(f"host path {host_path!r} must be absolute")
        path = Path(os.path.normpath(str(self.root).rstrip("/") + host_path))
        if self.root != path and self.root not in path.parents:
            raise InstallError(f"host path {host_path!r} leaves the host root {self.root}")
        return path


# ---- atomic writes ----------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` (temp + fsync + rename); False when it was already so."""
    try:
        st = path.stat()
        if (st.st_mode & 0o7777) == mode and st.st_size == len(data) \
                and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # not subject to the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def make_dirs(paths: HostPaths, host_dir: str, created: list[str]) -> Path:
    """Create ``host_dir`` under the root, recording each directory this call made."""
    missing = []
    probe = host_dir
    while probe != "/" and not paths.on_host(probe).exists():
        missing.append(probe)
        probe = os.path.dirname(probe)
    for host in reversed(missing):
        paths.on_host(host).mkdir(mode=0o755)
        created.append(host)
    return paths.on_host(host_dir)


# ---- the manifest -----------------------------------------------------------------------

def read_manifest(paths: HostPaths) -> dict:
    path = paths.on_host(paths.manifest)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"version": MANIFEST_VERSION, "files": {}, "trees": {}, "created_dirs": []}
    except (OSError, ValueError) as exc:
        raise InstallError(f"manifest {path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION:
        raise InstallError(f"manifest {path}: unknown format (version {data.get('version')!r})")
    return data


def write_manifest(paths: HostPaths, manifest: dict) -> None:
    manifest_dir = make_dirs(paths, os.path.dirname(paths.manifest), manifest["created_dirs"])
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    write_file_atomic(manifest_dir / os.path.basename(paths.manifest), data, 0o644)


# ---- install ----------------------------------------------------------------------------

def check_plugin_source(source: Path) -> Path:
    """The executable: ``source`` itself, or ``source/underlay`` for a directory."""
    exe = source / PLUGIN_NAME if source.is_dir() else source
    if not exe.is_file():
        raise InstallError(f"plugin source {source} is neither the executable nor a "
                           f"directory holding '{PLUGIN_NAME}'")
    return exe


def check_conflist(text: str, origin: str) -> bytes:
    """The template's bytes if it is a conflist whose first plugin is ours."""
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise InstallError(f"conflist template {origin} is not JSON: {exc}") from None
    plugins = conf.get("plugins") if isinstance(conf, dict) else None
    if not isinstance(plugins, list) or not plugins or not isinstance(plugins[0], dict):
        raise InstallError(f"conflist template {origin}: 'plugins' must be a non-empty list")
    if plugins[0].get("type") != PLUGIN_TYPE:
        raise InstallError(f"conflist template {origin}: the first plugin's type is "
                           f"{plugins[0].get('type')!r}, expected {PLUGIN_TYPE!r}")
    if not str(plugins[0].get("socket", DEFAULT_SOCKET)).startswith("/"):
        raise InstallError(f"conflist template {origin}: socket must be an absolute path")
    if not isinstance(conf.get("name"), str) or not conf["name"]:
        raise InstallError(f"conflist template {origin}: 'name' is missing")
    return text.encode()


def install_plugin(paths: HostPaths, source: Path, manifest: dict) -> bool:
    """Install the executable. A bundle contents dir of the release before (``trees`` in
    the manifest) is kept until the next run, then removed."""
    exe = check_plugin_source(source)
    bin_dir = make_dirs(paths, paths.bin_dir, manifest["created_dirs"])
    previous = manifest.get("current_tree")
    host_exe = f"{paths.bin_dir}/{PLUGIN_NAME}"
    data = exe.read_bytes()
    changed = write_file_atomic(bin_dir / PLUGIN_NAME, data, 0o755)
    manifest["files"][host_exe] = hashlib.sha256(data).hexdigest()
    manifest["current_tree"] = None
    for host_tree in list(manifest["trees"]):
        if host_tree != previous:
            shutil.rmtree(paths.on_host(host_tree), ignore_errors=True)
            del manifest["trees"][host_tree]
            logger.info("removed the old plugin version %s", host_tree)
    write_manifest(paths, manifest)
    logger.info("CNI executable %s %s", paths.on_host(host_exe),
                "installed" if changed else "already up to date")
    return changed


def verify_plugin(paths: HostPaths, timeout: float = 10.0) -> None:
    """Run the installed executable's VERSION with an empty environment."""
    exe = paths.on_host(f"{paths.bin_dir}/{PLUGIN_NAME}")
    try:
        proc = subprocess.run([str(exe)], input=b'{"cniVersion":"1.0.0"}',
                              env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                              timeout=timeout, check=False)
        reply = json.loads(proc.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"installed executable {exe} does not answer VERSION: {exc}") from None
    if proc.returncode != 0 or "supportedVersions" not in reply:
        raise InstallError(f"installed executable {exe} failed VERSION: {proc.stdout[:200]!r}")


def wait_for_agent(socket_path: str, wait_seconds: float, stop: threading.Event,
                   poll: float = 0.5) -> None:
    """Return once the agent answers ready; InstallError after ``wait_seconds``."""
    deadline = time.monotonic() + wait_seconds
    last = "no answer yet"
    while True:
        client = AgentClient(socket_path, timeout=min(5.0, max(wait_seconds, 0.1)))
        try:
            status, body = client.get("/v1/status")
            if status == 200 and isinstance(body, dict) and body.get("ready") is True:
                return
            last = f"HTTP {status}: {body}"
        except (OSError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            client.close()
        left = deadline - time.monotonic()
        if left <= 0 or stop.wait(min(poll, left)):
            raise InstallError(f"agent at {socket_path} not ready after {wait_seconds:g} s "
                               f"(last: {last}); the conflist was not written")


def install_conflist(paths: HostPaths, data: bytes, manifest: dict) -> bool:
    netd = make_dirs(paths, paths.netd_dir, manifest["created_dirs"])
    host = f"{paths.netd_dir}/{paths.conflist_name}"
    changed = write_file_atomic(netd / paths.conflist_name, data, 0o644)
    manifest["files"][host] = hashlib.sha256(data).hexdigest()
    for old in [f for f in manifest["files"] if f.endswith(".conflist") and f != host]:
        remove_file(paths, old, manifest["files"].pop(old))  # ours, under an older name
    write_manifest(paths, manifest)
    logger.info("conflist %s %s", paths.on_host(host), "written" if changed else "unchanged")
    return changed


# ---- uninstall --------------------------------------------------------------------------

def remove_file(paths: HostPaths, host: str, digest: str) -> bool:
    """Remove ``host`` if it still holds what we wrote (``digest``)."""
    path = paths.on_host(host)
    try:
        current = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return False
    if current != digest:
        logger.warning("leaving %s: changed since it was installed", path)
        return False
    path.unlink()
    return True


def check_agent_gone(socket_path: str) -> None:
    """InstallError when the agent still answers: it would redo what uninstall undoes."""
    client = AgentClient(socket_path, timeout=3.0)
    try:
        status, _ = client.get("/v1/status")
    except (OSError, ValueError):
        return
    finally:
        client.close()
    raise InstallError(f"the agent still answers on {socket_path} (HTTP {status}): delete the"
                       " underlay DaemonSet first (kubectl delete -k deploy/); nothing was changed")


def uninstall(paths: HostPaths, *, agent_socket: str = DEFAULT_SOCKET,
              force: bool = False) -> list[str]:
    """Undo the agent's network changes, then remove what the manifest lists; return what
    was removed (network lines first, then host paths)."""
    check_agent_gone(agent_socket)
    manifest = read_manifest(paths)
    try:
        removed = remove_host_changes(paths.on_host(paths.host_record), force=force)
    except (DatapathError, RecordError) as exc:
        raise InstallError(f"network clean-up refused: {exc}") from None
    for host, digest in sorted(manifest["files"].items()):
        if remove_file(paths, host, digest):
            removed.append(host)
    for host in sorted(manifest["trees"]):
        shutil.rmtree(paths.on_host(host), ignore_errors=True)
        removed.append(host)
    for host in paths.state_files:  # the agent's state: meaningless without the agent
        if paths.on_host(host).exists():
            paths.on_host(host).unlink()
            removed.append(host)
    paths.on_host(paths.manifest).unlink(missing_ok=True)
    for host in sorted(manifest["created_dirs"], key=len, reverse=True):
        try:
            paths.on_host(host).rmdir()
            removed.append(host)
        except FileNotFoundError:
            pass
        except OSError:
            logger.warning("leaving directory %s: not empty", paths.on_host(host))
    logger.info("uninstalled: %s", ", ".join(removed) or "nothing was installed")
    return removed


# ---- command line -----------------------------------------------------------------------

def run_install(args: argparse.Namespace, paths: HostPaths, stop: threading.Event) -> None:
    conflist = None
    if not args.skip_conflist:  # read and check everything before changing anything
        try:
            text = Path(args.conflist_template).read_text()
        except OSError as exc:
            raise InstallError(f"conflist template {args.conflist_template}: "
                               f"{exc.strerror}") from None
        conflist = check_conflist(text, args.conflist_template)
    if not args.conflist_only:
        check_plugin_source(Path(args.plugin_source))
    manifest = read_manifest(paths)
    if not args.conflist_only:
        install_plugin(paths, Path(args.plugin_source), manifest)
        verify_plugin(paths)
    if conflist is not None:
        wait_for_agent(args.agent_socket, args.wait_seconds, stop)
        install_conflist(paths, conflist, manifest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="underlay-install", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host-root", default="/", help="where the host's / is mounted")
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install")
    inst.add_argument("--plugin-source", default="/opt/underlay/plugin/underlay")
    inst.add_argument("--conflist-template", default="/etc/underlay/05-underlay.conflist")
    only = inst.add_mutually_exclusive_group()
    only.add_argument("--skip-conflist", action="store_true", help="the executable only")
    only.add_argument("--conflist-only", action="store_true", help="the conflist only")
    inst.add_argument("--agent-socket", default=DEFAULT_SOCKET)
    inst.add_argument("--wait-seconds", type=float, default=300.0)
    inst.add_argument("--stay", action="store_true",
                      help="after installing, keep running until SIGTERM (a sidecar)")
    gone = sub.add_parser("uninstall")
    gone.add_argument("--agent-socket", default=DEFAULT_SOCKET,
                      help="refuse while an agent answers here")
    gone.add_argument("--force", action="store_true",
                      help="also remove the wiring of pods that are still running")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    root = Path(os.path.abspath(args.host_root))
    if not root.is_dir():
        print(f"underlay-install: host root {root} is not a directory", file=sys.stderr)
        return 2
    paths = HostPaths(root=root)
    try:
        if args.command == "uninstall":
            uninstall(paths, agent_socket=args.agent_socket, force=args.force)
            return 0
        if args.wait_seconds < 0:
            raise InstallError(f"--wait-seconds {args.wait_seconds:g} must be >= 0")
        run_install(args, paths, stop)
    except (InstallError, OSError) as exc:
        print(f"underlay-install: {exc}", file=sys.stderr)
        return 1
    if args.stay:
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
