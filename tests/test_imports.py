"""The import rules of DESIGN.md, checked on the source tree (ast) and on the executable's
real import graph (``-X importtime`` of the launcher running a command).

- ``cloud`` imports neither ``ipam_daemon`` nor ``cni``;
- ``ipam_daemon`` imports, of ``cni``, only ``cni.datapath`` and ``cni.spec``;
- ``cni`` never imports ``ipam_daemon`` (it would close a cycle);
- the CNI executable loads the standard library and ``cni.spec`` (plus its own small
  modules) only: no pyroute2, boto3, botocore, kubernetes, ipam_daemon, cni.datapath,
  cloud; and none of the heavy stdlib modules it avoids on purpose for start-up time.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cni_fixtures import REPO, cni_bin_dir  # noqa: F401 - fixture

EXECUTABLE_OWN_MODULES = {"cni", "cni.plugin", "cni.request", "cni.agent_client", "cni.spec"}
FORBIDDEN_IN_EXECUTABLE = ("pyroute2", "boto3", "botocore", "kubernetes", "ipam_daemon",
                           "cni.datapath", "cloud", "yaml", "urllib3", "requests")
AVOIDED_STDLIB = ("http", "email", "dataclasses", "inspect", "logging", "asyncio", "selectors",
                  "subprocess", "ssl", "typing")


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute module names imported anywhere in a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_imports(package: str) -> dict[str, set[str]]:
    root = Path(REPO) / package
    return {str(p.relative_to(REPO)): imported_modules(p) for p in sorted(root.rglob("*.py"))}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_ast_walker_sees_relative_and_nested_imports(tmp_path):
    """The checker itself must catch what it is meant to catch."""
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from ..plugin import main\n    import ipam_daemon.store\n")
    found = imported_modules(sample, package="cni.datapath")
    assert {"cni.plugin", "cni.plugin.main", "ipam_daemon.store"} <= found


def test_cloud_imports_neither_ipam_daemon_nor_cni():
    bad = {f: sorted(m for m in mods if _within(m, "ipam_daemon") or _within(m, "cni"))
           for f, mods in package_imports("cloud").items()}
    assert not {f: m for f, m in bad.items() if m}


def test_ipam_daemon_imports_only_datapath_and_spec_of_cni():
    allowed = ("cni.datapath", "cni.spec")
    bad = {f: sorted(m for m in mods if _within(m, "cni")
                     and not any(_within(m, a) for a in allowed))
           for f, mods in package_imports("ipam_daemon").items()}
    assert not {f: m for f, m in bad.items() if m}


def test_cni_never_imports_ipam_daemon():
    bad = {f: sorted(m for m in mods if _within(m, "ipam_daemon"))
           for f, mods in package_imports("cni").items()}
    assert not {f: m for f, m in bad.items() if m}


@pytest.mark.parametrize("command", ["VERSION", "ADD", "DEL", "STATUS"])
def test_executable_import_graph_is_stdlib_and_spec_only(cni_bin_dir, tmp_path, command):
    """Runs the launcher's interpreter line with ``-X importtime`` through a whole command
    (lazy imports included) and inspects every module it loaded."""
    netns = "/proc/self/ns/net"  # exists; the agent is absent so nothing is touched
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc", "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": cni_bin_dir}
    stdin = ('{"cniVersion": "1.1.0", "name": "n", "type": "underlay", '
             f'"socket": "{tmp_path}/none.sock"}}')
    launcher = os.path.join(cni_bin_dir, "underlay")
    proc = subprocess.run([sys.executable, "-IS", "-X", "importtime", launcher], env=env,
                          input=stdin.encode(), capture_output=True, timeout=30, check=False)
    loaded = {line.rsplit("|", 1)[1].strip()
              for line in proc.stderr.decode().splitlines() if line.startswith("import time:")}
    loaded.discard("imported package")  # the header line
    assert "cni.plugin" in loaded and "cni.spec" in loaded, proc.stderr[-2000:]
    assert not [m for m in loaded if any(_within(m, f) for f in FORBIDDEN_IN_EXECUTABLE)]
    assert not [m for m in loaded if any(_within(m, f) for f in AVOIDED_STDLIB)]
    ours = {m for m in loaded if _within(m, "cni")}
    assert ours <= EXECUTABLE_OWN_MODULES, ours - EXECUTABLE_OWN_MODULES
    third_party = {m.split(".")[0] for m in loaded} - set(sys.stdlib_module_names) - {"cni"}
    assert not third_party, third_party


def test_spec_wire_types_are_reexported_lazily():
    """``cni.spec`` loads without ``typing``; its wire TypedDicts still import from it."""
    code = ("import sys; import cni.spec; assert 'typing' not in sys.modules, 'typing loaded'; "
            "from cni.spec import AttachRequest, Result, ErrorReply; "
            "assert 'netns' in AttachRequest.__required_keys__; "
            "assert 'mtu' in AttachRequest.__optional_keys__; print('ok')")
    proc = subprocess.run([sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {REPO!r}); "
                           + code], capture_output=True, text=True, timeout=30, check=False)
    assert proc.stdout.strip() == "ok", proc.stderr
