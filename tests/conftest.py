"""Suite-wide guard: the machine's root network namespace must look after the suite as it
did before it (no new links, addresses, routes, rules or namespaces)."""
from __future__ import annotations

import os
import subprocess

import pytest
from hypothesis import settings

# `make test` (and CI) replays the same property-based examples every run, so a red build
# is a change's doing and reproducible; `make fuzz` (UNDERLAY_FUZZ=explore) draws fresh
# random ones, and its failures print the example to pin as a regression test.
settings.register_profile("replay", derandomize=True, database=None)
settings.register_profile("explore")
settings.load_profile("explore" if os.environ.get("UNDERLAY_FUZZ") == "explore" else "replay")


def _snapshot() -> dict[str, str]:
    def run(*args: str) -> str:
        return subprocess.run(args, capture_output=True, text=True, check=False).stdout

    return {
        "links": run("ip", "-o", "link", "show"),
        "addresses": run("ip", "-o", "addr", "show"),
        "routes": run("ip", "route", "show", "table", "all"),
        "rules": run("ip", "rule", "show"),
        "netns": run("ip", "netns", "list"),
    }


def _normalise(kind: str, text: str) -> set[str]:
    lines = set()
    for line in text.splitlines():
        if kind == "links":
            # counters and state flags change by themselves; keep name and type
            parts = line.split(":")
            line = parts[1].strip() if len(parts) > 1 else line
        if kind == "addresses" and "valid_lft" in line:
            line = line.split("valid_lft")[0]
        lines.add(line.strip())
    return lines


@pytest.fixture(scope="session", autouse=True)
def root_namespace_untouched():
    # UNDERLAY_SHARED_MACHINE=1: another test run (a second checkout) may be creating
    # namespaces of its own meanwhile; the root namespace's own state is still compared.
    shared = os.environ.get("UNDERLAY_SHARED_MACHINE") == "1"
    before = {k: _normalise(k, v) for k, v in _snapshot().items()}
    yield
    after = {k: _normalise(k, v) for k, v in _snapshot().items()}
    if shared:
        before.pop("netns")
        after.pop("netns")
    added = {k: sorted(after[k] - before[k]) for k in after if after[k] - before[k]}
    assert not added, f"the suite left things in the root network namespace: {added}"


def pytest_addoption(parser):
    parser.addoption(
        "--emulator-rules-off", default="", metavar="RULES",
        help="comma-separated strict rules of the emulated EC2 (lab.ec2.settings."
             "SWITCHABLE_RULES) that the prefix tests' emulator does not enforce, or 'all': "
             "to show that those tests fail without the rules they check")


@pytest.fixture(scope="session")
def emulator_rules_off(pytestconfig) -> frozenset[str]:
    """The --emulator-rules-off option as rule names (validated by EmulatorSettings)."""
    from lab.ec2.settings import SWITCHABLE_RULES

    raw = pytestconfig.getoption("--emulator-rules-off")
    if raw.strip() == "all":
        return frozenset(SWITCHABLE_RULES)
    return frozenset(name.strip() for name in raw.split(",") if name.strip())
