"""The test VM's initramfs: busybox, the virtio/9p/overlay modules and an init script.

Written as a cpio "newc" archive by Python (no root needed for the /dev/console node).
Modules come from the host's ``/lib/modules/<version>``; their load order follows
``modules.dep`` (dependencies first). ``.ko.xz`` modules are decompressed here because
busybox insmod may not read them; other compressions are refused with a clear error.
"""
from __future__ import annotations

import logging
import lzma
import shutil
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

# virtio-pci transport + 9p, then overlay for the writable /etc, /var, /root
WANTED_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

INIT_SCRIPT = r"""#!/bin/sh
# PID 1 of the underlay test VM: mount the host's root read-only, run one command, power off.
export PATH=/bin
fail() { echo "UNDERLAY-VM-INIT-FAILED: $*"; sync; poweroff -f; exit 1; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/modules/$m" || fail "insmod $m"; done < /modules/order
share=$(sed -n 's/.*underlay\.share=\([^ ]*\).*/\1/p' /proc/cmdline)
[ -n "$share" ] || fail "no underlay.share= on the kernel command line"
R=/newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot $R \
  || fail "mount of the host root over 9p"
mount -t tmpfs -o mode=1777 tmpfs $R/tmp || fail "tmpfs on /tmp"
mount -t tmpfs -o mode=755 tmpfs $R/run || fail "tmpfs on /run"
mkdir -p /overlay && mount -t tmpfs tmpfs /overlay
for d in etc var root; do
  mkdir -p /overlay/$d/upper /overlay/$d/work
  mount -t overlay -o lowerdir=$R/$d,upperdir=/overlay/$d/upper,workdir=/overlay/$d/work \
    overlay $R/$d 2>/dev/null || echo "note: /$d stays read-only (no overlay)"
done
mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sysfs $R/sys || fail "sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/shm $R/dev/pts
mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm
mount -t devpts devpts $R/dev/pts
# the command's working directory (the repository) is shared on its own, read-only: it may
# live under /tmp or /run, which are fresh tmpfs here
workdir=$(sed -n 's/.*underlay\.workdir=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$workdir" ]; then
  mkdir -p "$R$workdir" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose workdir \
    "$R$workdir" || fail "mount of the working directory at $workdir"
fi
mkdir -p "$R$share" 2>/dev/null
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vmshare "$R$share" \
  || fail "mount of the writable share at $share"
echo /bin/modprobe-host > /proc/sys/kernel/modprobe
echo UNDERLAY-VM-START
chroot $R /bin/sh "$share/cmd.sh"
rc=$?
sync
echo "UNDERLAY-VM-EXIT=$rc"
poweroff -f
"""

# The kernel runs this (as kernel.modprobe) from the initramfs root, not from the chroot.
MODPROBE_WRAPPER = """#!/bin/sh
exec /bin/chroot /newroot /sbin/modprobe "$@"
"""


def _module_key(path: str) -> str:
    name = Path(path).name
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name.replace("-", "_")


def resolve_modules(modules_dir: Path, wanted: tuple[str, ...] = WANTED_MODULES) -> list[Path]:
    """Module files for ``wanted`` and their dependencies, dependencies first."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        if ":" not in line:
            continue
        target, _, rest = line.partition(":")
        deps[_module_key(target)] = (target, [_module_key(d) for d in rest.split()])
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in deps:
            raise RuntimeError(f"module {name} is not in {modules_dir}/modules.dep")
        if name in chain:
            raise RuntimeError(f"module dependency loop: {' -> '.join(chain + (name,))}")
        for dep in deps[name][1]:
            visit(dep, chain + (name,))
        order.append(name)

    for name in wanted:
        visit(name.replace("-", "_"), ())
    return [modules_dir / deps[name][0] for name in order]


def read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise RuntimeError(f"cannot unpack module {path}: only .ko and .ko.xz are handled")


def _cpio_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
                ino: int = 0) -> bytes:
    name_bytes = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_bytes), 0]
    header = b"070701" + b"".join(b"%08x" % f for f in fields)
    out = header + name_bytes
    out += b"\0" * (-len(out) % 4)
    out += data
    out += b"\0" * (-len(out) % 4)
    return out


def write_cpio(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of (name, mode, data, (rdev major, minor)) entries."""
    parts = [_cpio_entry(name, mode, data, rdev, ino) for ino, (name, mode, data, rdev)
             in enumerate(entries, start=1)]
    parts.append(_cpio_entry("TRAILER!!!", 0))
    return b"".join(parts)


def find_busybox() -> Path:
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:4096]:
            return path
    found = shutil.which("busybox")
    raise RuntimeError(
        f"no static busybox (looked at {', '.join(BUSYBOX_CANDIDATES)}, PATH has {found}): "
        "install the Debian package busybox-static"
    )


def build_initramfs(modules_dir: Path) -> bytes:
    """The whole initramfs image for the kernel whose modules live in ``modules_dir``."""
    directory = stat.S_IFDIR | 0o755
    regular = stat.S_IFREG | 0o755
    symlink = stat.S_IFLNK | 0o777
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = [
        (d, directory, b"", (0, 0)) for d in ("bin", "dev", "proc", "sys", "newroot", "modules")
    ]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)))
    entries.append(("bin/busybox", regular, find_busybox().read_bytes(), (0, 0)))
    for applet in ("sh", "mount", "insmod", "mkdir", "sed", "chroot", "sync", "poweroff"):
        entries.append((f"bin/{applet}", symlink, b"busybox", (0, 0)))
    entries.append(("bin/modprobe-host", regular, MODPROBE_WRAPPER.encode(), (0, 0)))
    entries.append(("init", regular, INIT_SCRIPT.encode(), (0, 0)))
    order = []
    for index, path in enumerate(resolve_modules(modules_dir)):
        name = f"{index:02d}-{_module_key(str(path))}.ko"
        entries.append((f"modules/{name}", stat.S_IFREG | 0o644, read_module(path), (0, 0)))
        order.append(name)
    entries.append(("modules/order", stat.S_IFREG | 0o644, ("\n".join(order) + "\n").encode(),
                    (0, 0)))
    return write_cpio(entries)
