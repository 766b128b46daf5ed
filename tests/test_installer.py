"""The installer as the DaemonSet runs it, against a fake host root: the static executable
and the conflist land atomically with modes 0755/0644, the conflist only once the real
agent (datapath none, emulated EC2) reports ready, a re-run changes nothing, an upgrade
swaps versions (also over release 0.1.0's PyInstaller bundle), bad input changes nothing,
and uninstall leaves the host as it was."""
from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, make_world, start_agent, wait_for,
)
from test_installer_helpers import (  # noqa: F401 - fixtures
    INSTALL, listing, make_host, older_plugin_binary, plugin_binary, reported_version,
    run_install, write_template,
)

BIN = "opt/cni/bin"
CONFLIST = "etc/cni/net.d/05-underlay.conflist"
MANIFEST = "var/lib/underlay/installed.json"


@pytest.fixture
def agent(emulator, control, start_agent):
    return start_agent(make_world(emulator), warm_ips=1)


@pytest.mark.parametrize("populated", [False, True], ids=["empty-host", "host-with-others"])
def test_init_container_install_rerun_uninstall(tmp_path, plugin_binary, agent, populated):
    host = make_host(tmp_path / "host", populated)
    template = write_template(tmp_path / "05-underlay.conflist", agent.config["socket_path"])
    before = listing(host)
    args = ("install", "--plugin-source", str(plugin_binary), "--conflist-template",
            str(template), "--agent-socket", agent.config["socket_path"], "--wait-seconds", "30")

    first = run_install(host, *args)
    assert first.returncode == 0, first.stderr
    exe = host / BIN / "underlay"
    assert oct(exe.stat().st_mode & 0o7777) == "0o755"
    assert exe.read_bytes() == plugin_binary.read_bytes()
    assert sorted(p.name for p in (host / BIN).iterdir() if p.name.startswith("underlay")) \
        == ["underlay"]  # one file, nothing beside it
    conflist = host / CONFLIST
    assert oct(conflist.stat().st_mode & 0o7777) == "0o644"
    assert conflist.read_text() == template.read_text()
    manifest = json.loads((host / MANIFEST).read_text())
    assert set(manifest["files"]) == {f"/{BIN}/underlay", f"/{CONFLIST}"}
    assert manifest["trees"] == {}
    assert not [p for p in host.rglob(".*tmp*")], "temp files left behind"

    installed = listing(host)
    second = run_install(host, *args)
    assert second.returncode == 0, second.stderr
    assert listing(host) == installed  # same inode, mtime and content: nothing rewritten
    assert "already up to date" in second.stderr and "unchanged" in second.stderr

    removed = run_install(host, "uninstall")
    assert removed.returncode == 0, removed.stderr
    assert listing(host) == before


def test_conflist_waits_for_the_agent(tmp_path, emulator, control, start_agent):
    """No agent: a bounded wait fails naming the socket and writes no conflist; an
    installer waiting while the agent starts writes it once the agent is ready."""
    world = make_world(emulator)
    host = make_host(tmp_path / "host", populated=False)
    sock = str(tmp_path / "agent0" / "run" / "agent.sock")  # where start_agent puts it
    template = write_template(tmp_path / "t.conflist", sock)
    args = ("install", "--conflist-only", "--conflist-template", str(template),
            "--agent-socket", sock)
    timed_out = run_install(host, *args, "--wait-seconds", "0.5")
    assert timed_out.returncode == 1
    assert f"agent at {sock} not ready after 0.5 s" in timed_out.stderr, timed_out.stderr
    assert "conflist was not written" in timed_out.stderr
    assert not (host / CONFLIST).exists()

    waiting = subprocess.Popen([*INSTALL, "--host-root", str(host), *args, "--wait-seconds",
                                "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert not (host / CONFLIST).exists()  # nothing can be ready: no agent exists yet
        agent = start_agent(world, warm_ips=1)
        _, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert agent.ready()
        assert (host / CONFLIST).read_text() == template.read_text()
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(timeout=10)


def make_legacy_install(host: Path) -> None:
    """What release 0.1.0's installer left on an empty host: a PyInstaller bundle (the
    executable and its contents dir ``underlay.<hash>``) and its manifest."""
    exe = host / BIN / "underlay"
    tree = host / BIN / "underlay.0123abcd"
    tree.mkdir(parents=True)
    (tree / "base_library.zip").write_bytes(b"stdlib")
    exe.write_bytes(b"\x7fELF bootloader")
    exe.chmod(0o755)
    (host / MANIFEST).parent.mkdir(parents=True)
    (host / MANIFEST).write_text(json.dumps({
        "version": 1, "current_tree": f"/{BIN}/underlay.0123abcd",
        "files": {f"/{BIN}/underlay": hashlib.sha256(exe.read_bytes()).hexdigest()},
        "trees": {f"/{BIN}/underlay.0123abcd": "digest"},
        "created_dirs": ["/opt", "/opt/cni", "/opt/cni/bin", "/var", "/var/lib",
                         "/var/lib/underlay"]}))


def test_upgrade_switches_versions(tmp_path, plugin_binary, older_plugin_binary):
    """older -> current -> current -> older: the executable switches at once (a rename),
    a re-run changes nothing, and each answers VERSION and reports its own version."""
    host = make_host(tmp_path / "host", populated=True)
    before = listing(host)
    for source in (older_plugin_binary, plugin_binary, plugin_binary, older_plugin_binary):
        proc = run_install(host, "install", "--skip-conflist", "--plugin-source", str(source))
        assert proc.returncode == 0, proc.stderr
        exe = host / BIN / "underlay"
        assert exe.read_bytes() == source.read_bytes()
        assert reported_version(exe) == reported_version(source)
        version = subprocess.run([str(exe)], input=b'{"cniVersion":"1.1.0"}',
                                 env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                                 timeout=30, check=False)
        assert json.loads(version.stdout)["cniVersion"] == "1.1.0", version.stdout
    assert reported_version(older_plugin_binary) != reported_version(plugin_binary)
    assert run_install(host, "uninstall").returncode == 0
    assert listing(host) == before


def test_upgrade_over_the_bundle_of_release_0_1_0(tmp_path, plugin_binary):
    """The bundle's contents dir stays for one run (an exec that began before the switch
    may still load from it), then goes; uninstall then leaves the host empty."""
    host = make_host(tmp_path / "host", populated=False)
    make_legacy_install(host)
    tree = host / BIN / "underlay.0123abcd"
    for kept in (True, False):
        proc = run_install(host, "install", "--skip-conflist", "--plugin-source",
                           str(plugin_binary))
        assert proc.returncode == 0, proc.stderr
        assert (host / BIN / "underlay").read_bytes() == plugin_binary.read_bytes()
        assert tree.is_dir() is kept
    assert run_install(host, "uninstall").returncode == 0
    assert list(host.iterdir()) == []


def test_uninstall_right_after_an_upgrade_removes_both_versions(tmp_path, plugin_binary):
    host = make_host(tmp_path / "host", populated=False)
    make_legacy_install(host)
    assert run_install(host, "install", "--skip-conflist", "--plugin-source",
                       str(plugin_binary)).returncode == 0
    assert (host / BIN / "underlay.0123abcd").is_dir()  # the replaced bundle, kept
    assert run_install(host, "uninstall").returncode == 0
    assert list(host.iterdir()) == []


@pytest.mark.parametrize("case", ["not-json", "wrong-type", "no-template", "no-plugin",
                                  "negative-wait"])
def test_bad_input_is_named_and_changes_nothing(tmp_path, plugin_binary, case):
    host = make_host(tmp_path / "host", populated=True)
    template = write_template(tmp_path / "t.conflist", "/run/underlay/agent.sock")
    source = str(plugin_binary)
    extra = []
    if case == "not-json":
        template.write_text('{"plugins": [')
        expect = "is not JSON"
    elif case == "wrong-type":
        template.write_text(json.dumps({"name": "x", "plugins": [{"type": "bridge"}]}))
        expect = "first plugin's type is 'bridge'"
    elif case == "no-template":
        template = tmp_path / "absent.conflist"
        expect = "absent.conflist: No such file"
    elif case == "no-plugin":
        source = str(tmp_path / "nothing-here")
        (tmp_path / "nothing-here").mkdir()
        expect = "is neither the executable nor a directory holding 'underlay'"
    else:
        extra = ["--wait-seconds", "-1"]
        expect = "--wait-seconds -1 must be >= 0"
    before = listing(host)
    proc = run_install(host, "install", "--plugin-source", source, "--conflist-template",
                       str(template), "--agent-socket", str(tmp_path / "none.sock"), *extra)
    assert proc.returncode != 0 and expect in proc.stderr, proc.stderr
    assert listing(host) == before


def test_uninstall_spares_a_file_changed_since(tmp_path, plugin_binary):
    host = make_host(tmp_path / "host", populated=False)
    assert run_install(host, "install", "--skip-conflist", "--plugin-source",
                       str(plugin_binary)).returncode == 0
    (host / BIN / "underlay").write_bytes(b"someone else's plugin")
    proc = run_install(host, "uninstall")
    assert proc.returncode == 0 and "changed since it was installed" in proc.stderr
    assert (host / BIN / "underlay").read_bytes() == b"someone else's plugin"
    assert not (host / MANIFEST).exists() and not (host / "var").exists()


def test_host_paths_cannot_leave_the_root(tmp_path):
    from ipam_daemon.installer import HostPaths, InstallError

    paths = HostPaths(root=tmp_path)
    assert paths.on_host("/opt/cni/bin") == tmp_path / "opt/cni/bin"
    for bad in ("/../etc/passwd", "relative/path"):
        with pytest.raises(InstallError, match="leaves the host root|must be absolute"):
            paths.on_host(bad)
