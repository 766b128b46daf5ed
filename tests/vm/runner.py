"""Run a command inside a throwaway qemu VM that boots Debian's kernel (which has ipvlan).

The VM sees the host's ``/`` read-only over 9p, so the venv, the repository and the host's
modules are all there without building an image. ``/tmp`` and ``/run`` are fresh tmpfs, and
``/etc``, ``/var`` and ``/root`` get a tmpfs overlay when overlayfs accepts the 9p lower
layer. A second 9p share, writable, is mounted at the same path as on the host, so the
command can leave results (junit XML) there. The VM has no NIC: nothing leaves the machine.

Boot path (fast: no bootloader, no disk image):

- the uncompressed ELF ``vmlinux`` is extracted from the bzImage (the xz payload after the
  ``\\xfd7zXZ\\0`` magic); it carries a PVH note, so ``qemu -kernel`` boots it directly;
- a busybox initramfs (cpio newc, written here) loads virtio-pci + 9p (+ overlay) from the
  host's ``/lib/modules/<version>``, mounts the shares, points ``kernel.modprobe`` at a
  wrapper that chroots into the host root (so ipvlan/veth autoload works), chroots into the
  host root, runs the command, prints ``UNDERLAY-VM-EXIT=<rc>`` and powers off.

Always ``-accel tcg`` (this machine's /dev/kvm cannot boot a stock kernel) and always under
``timeout``. A VM that does not report an exit code raises ``VmBootError`` with the console
tail. Usage: ``python -m tests.vm.runner [--timeout S] -- CMD ARGS...``.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import logging
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.vm.initramfs import build_initramfs

logger = logging.getLogger(__name__)

BUILD_ROOT = Path(__file__).resolve().parent / "build"
XZ_MAGIC = b"\xfd7zXZ\x00"
START_MARKER = "UNDERLAY-VM-START"
EXIT_MARKER = "UNDERLAY-VM-EXIT="
QEMU = "qemu-system-x86_64"
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")


class VmBootError(RuntimeError):
    """The VM did not boot or did not report the command's exit code."""


@dataclass(frozen=True)
class KernelImage:
    version: str
    bzimage: Path
    modules_dir: Path


@dataclass(frozen=True)
class VmRun:
    exit_code: int
    output: str
    boot_seconds: float  # qemu start -> the init's start marker
    total_seconds: float


def find_kernel(pattern: str = "/boot/vmlinuz-6.1.*-amd64") -> KernelImage:
    """The newest Debian kernel matching ``pattern`` that has its modules installed."""
    candidates = []
    for path in glob.glob(pattern):
        version = Path(path).name.removeprefix("vmlinuz-")
        modules = Path("/lib/modules") / version
        if (modules / "modules.dep").is_file():
            candidates.append(KernelImage(version, Path(path), modules))
    if not candidates:
        raise VmBootError(
            f"no kernel matching {pattern} with modules under /lib/modules: "
            "install the Debian package linux-image-amd64"
        )

    def version_key(k: KernelImage) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", k.version)]

    return max(candidates, key=version_key)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside an xz-compressed bzImage."""
    start = bzimage.find(XZ_MAGIC)
    if start < 0:
        raise VmBootError("bzImage has no xz payload (magic fd 37 7a 58 5a 00 not found)")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        # the payload is followed by other data; the decompressor stops at the stream end
        elf = decompressor.decompress(bzimage[start:])
    except lzma.LZMAError as exc:
        raise VmBootError(f"cannot decompress the bzImage's xz payload: {exc}") from None
    if not elf.startswith(b"\x7fELF"):
        raise VmBootError("the bzImage's xz payload is not an ELF kernel")
    return elf


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def prepare_boot_files(kernel: KernelImage) -> tuple[Path, Path]:
    """(vmlinux, initramfs), built once per kernel version and initramfs recipe."""
    build = BUILD_ROOT / kernel.version
    vmlinux = build / "vmlinux"
    if not vmlinux.is_file():
        logger.info("extracting vmlinux from %s", kernel.bzimage)
        _write_atomically(vmlinux, extract_vmlinux(kernel.bzimage.read_bytes()))
    image = build_initramfs(kernel.modules_dir)
    digest = hashlib.sha256(image).hexdigest()[:12]
    initramfs = build / f"initramfs-{digest}.cpio"
    if not initramfs.is_file():
        _write_atomically(initramfs, image)
    return vmlinux, initramfs


def write_guest_script(share: Path, cmd: list[str], cwd: str, env: dict[str, str]) -> None:
    """The script the init runs (inside the chroot) for ``cmd``."""
    lines = ["set -u", f"cd {shlex.quote(cwd)} || exit 125"]
    for key, value in env.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ValueError(f"bad environment variable name for the VM: {key!r}")
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + " ".join(shlex.quote(part) for part in cmd))
    (share / "cmd.sh").write_text("\n".join(lines) + "\n")


def qemu_command(vmlinux: Path, initramfs: Path, share: Path, timeout: float,
                 workdir: str = "/") -> list[str]:
    append = [
        "console=ttyS0", "quiet", "loglevel=1", "panic=-1", "mitigations=off",
        f"underlay.share={share}",
    ]
    shares = []
    if workdir != "/":
        append.append(f"underlay.workdir={workdir}")
        shares = ["-fsdev", f"local,id=workdir,path={workdir},readonly=on,security_model=none,"
                  "multidevs=remap", "-device", "virtio-9p-pci,fsdev=workdir,mount_tag=workdir"]
    return [
        "timeout", "-k", "5", str(int(timeout)),
        QEMU, "-M", "pc", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "1G",
        "-nodefaults", "-nic", "none", "-display", "none", "-serial", "stdio", "-no-reboot",
        "-kernel", str(vmlinux), "-initrd", str(initramfs), "-append", " ".join(append),
        "-fsdev", "local,id=hostroot,path=/,readonly=on,security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=vmshare,path={share},security_model=none,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=vmshare,mount_tag=vmshare",
        *shares,
    ]


def run_vm(
    cmd: list[str],
    timeout: float = 300,
    share: Path | None = None,
    cwd: str = "/",
    env: dict[str, str] | None = None,
) -> VmRun:
    """Boot a VM, run ``cmd`` in it, return its exit code and the console output."""
    if not cmd:
        raise ValueError("run_vm needs a command")
    if shutil.which(QEMU) is None:
        raise VmBootError(f"{QEMU} not found: install the Debian package qemu-system-x86")
    vmlinux, initramfs = prepare_boot_files(find_kernel())
    own_share = share is None
    share_dir = Path(tempfile.mkdtemp(prefix="underlay-vm-")) if own_share else Path(share)
    share_dir = share_dir.resolve()
    if not SAFE_PATH.match(str(share_dir)):
        raise ValueError(f"share path {share_dir} has characters the VM command line cannot carry")
    cwd = str(Path(cwd).resolve())
    if not SAFE_PATH.match(cwd):
        raise ValueError(f"working directory {cwd} has characters the VM command line cannot carry")
    try:
        guest_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                     "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1", "VM_SHARE": str(share_dir),
                     "UNDERLAY_IN_VM": "1"}
        guest_env.update(env or {})
        write_guest_script(share_dir, cmd, cwd, guest_env)
        return _boot(qemu_command(vmlinux, initramfs, share_dir, timeout, cwd), timeout)
    finally:
        if own_share:
            shutil.rmtree(share_dir, ignore_errors=True)


def _boot(argv: list[str], timeout: float) -> VmRun:
    started = time.monotonic()
    lines: list[str] = []
    marks: dict[str, float] = {}
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def read_console() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", "")
            if START_MARKER in line and START_MARKER not in marks:
                marks[START_MARKER] = time.monotonic()
            lines.append(line)

    reader = threading.Thread(target=read_console, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout + 15)  # `timeout` inside kills qemu first
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    total = time.monotonic() - started
    output = "\n".join(lines)
    exit_code = _parse_exit_code(lines)
    if exit_code is None:
        tail = "\n".join(lines[-40:])
        raise VmBootError(
            f"VM did not report an exit code (qemu exited {proc.returncode} after "
            f"{total:.1f}s; 124 means the {timeout:.0f}s timeout hit). Console tail:\n{tail}"
        )
    boot = marks.get(START_MARKER, started) - started
    return VmRun(exit_code, output, boot, total)


def _parse_exit_code(lines: list[str]) -> int | None:
    for line in reversed(lines):
        match = re.search(re.escape(EXIT_MARKER) + r"(\d+)", line)
        if match:
            return int(match.group(1))
    return None


def run_in_vm(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd`` in a fresh VM; (exit code, console output)."""
    result = run_vm(cmd, timeout=timeout, cwd=os.getcwd())
    return result.exit_code, result.output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("cmd", nargs="+", help="command to run in the VM (after --)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    result = run_vm(args.cmd, timeout=args.timeout, cwd=os.getcwd())
    print(result.output)
    print(f"# boot {result.boot_seconds:.1f}s, total {result.total_seconds:.1f}s, "
          f"exit {result.exit_code}", file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
