"""Build the self-contained host CNI executable: a PyInstaller *onedir* bundle of
``cni/plugin.py`` (the bootloader, libpython and the few stdlib modules the plugin imports).

    python deploy/build_plugin.py [--out build/plugin-binary]   -> prints the bundle dir

The bundle is ``<out>/<hash>/underlay/`` holding the executable ``underlay`` and
``_internal/``; ``<hash>`` covers the plugin's sources, this script, and the Python and
PyInstaller versions, so an unchanged tree is never rebuilt (tests call this once per
session). A build goes into a temporary directory and is renamed into place, so a
concurrent reader never sees half a bundle.

Why onedir and not onefile: onefile unpacks itself into /tmp on every exec (tens of ms
and a writable /tmp on the host); onedir starts from the files in place.
Why not a copied interpreter + stdlib subset: the interpreter here links a shared
libpython through an absolute RUNPATH, so a relocated copy needs LD_LIBRARY_PATH (a shell
wrapper; hosts such as Bottlerocket have no shell) or an ELF patcher. The bench
(bench/bench_plugin_binary.py) measures both anyway.

glibc: the bootloader and libpython are linked against the build host's glibc; the bundle
runs on that glibc or newer only. ``oldest_glibc`` reads the highest GLIBC_x.y symbol
version the bundle's ELF files require (objdump -T).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("cni/plugin.py", "cni/agent_client.py", "cni/request.py", "cni/spec.py",
           "cni/spec_wire.py", "cni/__init__.py", "deploy/build_plugin.py")
DEFAULT_OUT = REPO / "build" / "plugin-binary"
BUILD_TIMEOUT = 600.0
# Modules PyInstaller would otherwise pull in through the stdlib's optional imports; the
# plugin never uses them (tests/test_imports.py checks its real import graph).
EXCLUDES = ("tkinter", "unittest", "pydoc", "doctest", "email", "http", "xml", "sqlite3",
            "ssl", "_ssl", "hashlib", "_hashlib", "lzma", "bz2", "_bz2", "_lzma", "decimal",
            "_decimal", "multiprocessing", "asyncio", "concurrent", "ctypes", "pdb", "inspect")


def source_hash() -> str:
    digest = hashlib.sha256()
    digest.update(sys.version.encode())
    digest.update(_pyinstaller_version().encode())
    for rel in SOURCES:
        digest.update(rel.encode())
        digest.update((REPO / rel).read_bytes())
    return digest.hexdigest()[:16]


def _pyinstaller_version() -> str:
    try:
        import PyInstaller  # noqa: PLC0415 - only the builder needs it
    except ImportError:
        raise RuntimeError("pyinstaller is not installed in this interpreter "
                           "(pip install -r requirements.lock)") from None
    return PyInstaller.__version__


def build_plugin(out: Path = DEFAULT_OUT) -> Path:
    """Return ``<out>/<hash>/underlay`` (the bundle dir), building it when missing.

    The bundle holds the executable ``underlay`` and its contents directory
    ``underlay.<hash>``: a name per build, so the installer can put a new version beside
    the old one and switch by renaming the executable alone (no half-upgraded bundle)."""
    digest = source_hash()
    final = out / digest / "underlay"
    if (final / "underlay").is_file():
        return final
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    try:
        cmd = [sys.executable, "-m", "PyInstaller", "--onedir", "--noconfirm", "--clean", "--strip",
               "--log-level", "WARN", "--name", "underlay", "--paths", str(REPO),
               "--contents-directory", f"underlay.{digest}",
               "--distpath", str(work / "dist"), "--workpath", str(work / "work"),
               "--specpath", str(work)]
        for name in EXCLUDES:
            cmd += ["--exclude-module", name]
        cmd.append(str(REPO / "cni" / "plugin.py"))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
                              check=False, cwd=str(work))
        if proc.returncode != 0:
            raise RuntimeError(f"PyInstaller failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(work / "dist" / "underlay", final)
        except OSError:
            if not (final / "underlay").is_file():  # not a concurrent build that won
                raise
        logger.info("built %s", final)
        return final
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bundle_size(bundle: Path) -> int:
    """Bytes on disk (allocated blocks) of every file in the bundle."""
    return sum(p.lstat().st_blocks * 512 for p in bundle.rglob("*") if p.is_file())


_GLIBC_RE = re.compile(r"GLIBC_(\d+)\.(\d+)(?:\.(\d+))?")


def oldest_glibc(bundle: Path) -> str:
    """The newest GLIBC_ symbol version any ELF file of the bundle needs, i.e. the oldest
    glibc it can run on."""
    newest: tuple[int, ...] = (0,)
    for path in bundle.rglob("*"):
        if not path.is_file() or path.open("rb").read(4) != b"\x7fELF":
            continue
        proc = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True,
                              timeout=60, check=False)
        for match in _GLIBC_RE.finditer(proc.stdout):
            newest = max(newest, tuple(int(g) for g in match.groups() if g is not None))
    return ".".join(str(n) for n in newest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--report", action="store_true",
                        help="also print size on disk and the oldest glibc supported")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        bundle = build_plugin(args.out)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"build_plugin: {exc}", file=sys.stderr)
        return 1
    print(bundle)
    if args.report:
        print(f"size on disk: {bundle_size(bundle) / 1e6:.1f} MB; "
              f"oldest glibc: {oldest_glibc(bundle)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
