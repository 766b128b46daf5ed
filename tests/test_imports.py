"""The rooms and their arrows (docs/architecture.md), checked on the source tree (ast for
Python, ``go list`` for the host executable).

- ``cloud`` imports neither ``ipam_daemon`` nor ``cni``;
- ``ipam_daemon`` imports, of ``cni``, only its public modules: the datapath, the spec
  types, the CNI invocation it answers, the conflist it installs;
- ``cni`` never imports ``ipam_daemon`` (it would close a cycle);
- no production package (cloud, cni, ipam_daemon) imports the test world (lab, tests,
  bench) or its libraries (moto, werkzeug), nor names the lab or those libraries in a
  string: what ships to nodes must not reach them by a module path, a ``python -m`` or a
  file path (a docstring may still say which test or bench checks it);
- the host executable (``cni/shim``) is Go's standard library and nothing else.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from cni_fixtures import REPO

CNI_PUBLIC = ("cni.datapath", "cni.spec", "cni.invocation", "cni.conflist")
PRODUCTION = ("cloud", "cni", "ipam_daemon")
TEST_WORLD = ("lab", "tests", "bench", "moto", "werkzeug")
# the lab by a module path (lab.harness), a file path (lab/ec2) or alone; its libraries
_NAMES_TEST_WORLD = re.compile(r"(?<![\w./])lab(?:[./][A-Za-z_]|$)|"
                               r"(?<![\w.])(?:moto|werkzeug)\b")


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
    sample.write_text("def f():\n    from ..invocation import run\n    import ipam_daemon.store\n")
    found = imported_modules(sample, package="cni.datapath")
    assert {"cni.invocation", "cni.invocation.run", "ipam_daemon.store"} <= found


def strings_naming_the_test_world(path: Path) -> list[str]:
    """String constants (docstrings too) in a file that name the test world."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.value for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and any(_NAMES_TEST_WORLD.search(line) for line in node.value.splitlines()
                    or [node.value])]


def test_the_string_check_sees_paths_and_modules_but_not_words(tmp_path):
    """The checker itself: it catches module and file paths, not an ordinary word."""
    sample = tmp_path / "probe.py"
    sample.write_text("A = 'python -m lab.harness'\nB = 'see lab/libcni/main.go'\nC = 'lab'\n"
                      "D = 'a label, a lab coat, tests/test_x.py'\nE = 'import moto'\n")
    assert strings_naming_the_test_world(sample) == ["python -m lab.harness",
                                                      "see lab/libcni/main.go", "lab",
                                                      "import moto"]


def test_production_never_names_the_test_world():
    imports = {f: sorted(m for m in mods if any(_within(m, w) for w in TEST_WORLD))
               for package in PRODUCTION for f, mods in package_imports(package).items()}
    assert not {f: m for f, m in imports.items() if m}
    strings = {str(p.relative_to(REPO)): strings_naming_the_test_world(p)
               for package in PRODUCTION for p in sorted((Path(REPO) / package).rglob("*.py"))}
    assert not {f: s for f, s in strings.items() if s}


def test_cloud_imports_neither_ipam_daemon_nor_cni():
    bad = {f: sorted(m for m in mods if _within(m, "ipam_daemon") or _within(m, "cni"))
           for f, mods in package_imports("cloud").items()}
    assert not {f: m for f, m in bad.items() if m}


def test_ipam_daemon_imports_only_the_public_modules_of_cni():
    bad = {f: sorted(m for m in mods if _within(m, "cni")
                     and not any(_within(m, a) for a in CNI_PUBLIC))
           for f, mods in package_imports("ipam_daemon").items()}
    assert not {f: m for f, m in bad.items() if m}


def test_cni_never_imports_ipam_daemon():
    bad = {f: sorted(m for m in mods if _within(m, "ipam_daemon"))
           for f, mods in package_imports("cni").items()}
    assert not {f: m for f, m in bad.items() if m}


def test_host_executable_is_standard_library_only():
    """``go list -deps`` of the shim: every package it links is in Go's standard library."""
    env = dict(os.environ, CGO_ENABLED="0", GO111MODULE="on", GOFLAGS="-mod=mod")
    proc = subprocess.run(["go", "list", "-deps", "-f", "{{.ImportPath}} {{.Standard}}", "."],
                          cwd=os.path.join(REPO, "cni", "shim"), env=env, capture_output=True, text=True,
                          timeout=120, check=True)
    packages = dict(line.split() for line in proc.stdout.splitlines())
    assert "os" in packages and "net" in packages  # the listing is real
    assert {p for p, standard in packages.items() if standard != "true"} == {"underlay.io/shim"}
