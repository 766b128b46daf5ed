"""ipvlan mode, tested in a VM: this machine's kernel has no ipvlan driver.

Boots ONE qemu VM (software emulation, Debian's kernel) per run and runs the in-VM tests
(tests/vm/test_ipvlan_in_vm.py) there with the venv's pytest. The VM failing to boot is a
test failure, never a skip. Boot and total times are printed (run with -s to see them).
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.vm.initramfs import resolve_modules, write_cpio
from tests.vm.runner import VmBootError, extract_vmlinux, find_kernel, run_vm

REPO = Path(__file__).resolve().parent.parent
IN_VM_TESTS = "tests/vm/test_ipvlan_in_vm.py"
EXPECTED_IN_VM_TESTS = 7
VM_TIMEOUT = 480

pytestmark = pytest.mark.timeout(VM_TIMEOUT + 60)


def test_extract_vmlinux_finds_the_xz_payload_and_ignores_trailing_bytes():
    import lzma

    elf = b"\x7fELF" + bytes(range(256)) * 64
    image = b"MZ-setup-code" + lzma.compress(elf, format=lzma.FORMAT_XZ) + b"\0trailing"
    assert extract_vmlinux(image) == elf
    with pytest.raises(VmBootError, match="no xz payload"):
        extract_vmlinux(b"MZ no payload here")
    not_elf = b"MZ" + lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    with pytest.raises(VmBootError, match="not an ELF"):
        extract_vmlinux(not_elf)


def test_modules_load_dependencies_first():
    kernel = find_kernel()
    order = [p.name.split(".ko")[0] for p in resolve_modules(kernel.modules_dir)]
    for dep, user in (("virtio", "virtio_pci"), ("9pnet", "9pnet_virtio"),
                      ("9pnet_virtio", "9p"), ("netfs", "9p")):
        assert order.index(dep) < order.index(user), order


def test_cpio_entries_are_4_byte_aligned_newc():
    archive = write_cpio([("init", 0o100755, b"abc", (0, 0)), ("dev/console", 0o20600, b"",
                                                                (5, 1))])
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert archive.count(b"070701") == 3  # two entries and the trailer
    assert b"TRAILER!!!\0" in archive


def test_vm_that_never_reports_raises_with_the_console_tail():
    # 2 s is far too short to boot: the runner must raise, never pass or skip quietly
    with pytest.raises(VmBootError, match="did not report an exit code.*Console tail"):
        run_vm(["true"], timeout=2)


def test_ipvlan_datapath_in_vm(tmp_path: Path):
    share = tmp_path / "share"
    share.mkdir()
    junit = share / "junit.xml"
    # Code runs ~15x slower in the VM: no plugin autoload (hypothesis' plugin alone costs
    # ~15 s of imports there), only the timeout plugin.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-p", "pytest_timeout", "--color=no", "-o", "addopts=", "-o", "timeout=300",
           f"--junitxml={junit}", IN_VM_TESTS]
    run = run_vm(cmd, timeout=VM_TIMEOUT, share=share, cwd=str(REPO),
                 env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    print(f"\nipvlan VM: boot {run.boot_seconds:.1f}s, whole run {run.total_seconds:.1f}s, "
          f"in-VM pytest exit {run.exit_code}")
    assert run.exit_code == 0, f"in-VM pytest failed (exit {run.exit_code}):\n{run.output}"
    assert junit.is_file(), f"in-VM pytest wrote no junit report:\n{run.output}"
    suite = ET.parse(junit).getroot()
    suite = suite.find("testsuite") if suite.tag == "testsuites" else suite
    counts = {k: int(suite.get(k, "0")) for k in ("tests", "failures", "errors", "skipped")}
    assert counts == {"tests": EXPECTED_IN_VM_TESTS, "failures": 0, "errors": 0,
                      "skipped": 0}, f"{counts}\n{run.output}"
    assert f"{EXPECTED_IN_VM_TESTS} passed" in run.output, run.output

