"""The installer as the DaemonSet runs it, against a fake host root: the self-contained
executable and the conflist land atomically with modes 0755/0644, the conflist only once
the real agent (datapath none, emulated EC2) reports ready, a re-run changes nothing, an
upgrade swaps versions, bad input changes nothing, and uninstall leaves the host as it was."""
from __future__ import annotations

import json
import subprocess

import pytest
from test_agent_helpers import (  # noqa: F401 - fixtures
    control, emulator, make_world, start_agent, wait_for,
)
from test_installer_helpers import (  # noqa: F401 - fixtures
    INSTALL, listing, make_host, plugin_bundle, run_install, write_template,
)

from cni.launcher import write_plugin_launcher

BIN = "opt/cni/bin"
CONFLIST = "etc/cni/net.d/10-underlay.conflist"
MANIFEST = "var/lib/underlay/installed.json"


@pytest.fixture
def agent(emulator, control, start_agent):
    return start_agent(make_world(emulator), warm_ips=1)


@pytest.mark.parametrize("populated", [False, True], ids=["empty-host", "host-with-others"])
def test_init_container_install_rerun_uninstall(tmp_path, plugin_bundle, agent, populated):
    host = make_host(tmp_path / "host", populated)
    template = write_template(tmp_path / "10-underlay.conflist", agent.config["socket_path"])
    before = listing(host)
    args = ("install", "--plugin-source", str(plugin_bundle), "--conflist-template",
            str(template), "--agent-socket", agent.config["socket_path"], "--wait-seconds", "30")

    first = run_install(host, *args)
    assert first.returncode == 0, first.stderr
    exe = host / BIN / "underlay"
    contents = host / BIN / next(plugin_bundle.glob("underlay.*")).name
    assert oct(exe.stat().st_mode & 0o7777) == "0o755"
    assert exe.read_bytes() == (plugin_bundle / "underlay").read_bytes()
    assert contents.is_dir() and (contents / "base_library.zip").is_file()
    conflist = host / CONFLIST
    assert oct(conflist.stat().st_mode & 0o7777) == "0o644"
    assert conflist.read_text() == template.read_text()
    manifest = json.loads((host / MANIFEST).read_text())
    assert set(manifest["files"]) == {f"/{BIN}/underlay", f"/{CONFLIST}"}
    assert set(manifest["trees"]) == {f"/{BIN}/{contents.name}"}
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


def test_upgrade_switches_versions_and_removes_the_old(tmp_path, plugin_bundle):
    """launcher (one file) -> bundle -> launcher -> launcher: the executable switches at
    once; the replaced version's contents dir stays for one run (an exec that began before
    the switch may still load from it), then goes."""
    host = make_host(tmp_path / "host", populated=True)
    before = listing(host)
    launcher = write_plugin_launcher(str(tmp_path / "v1"))
    tree = next(plugin_bundle.glob("underlay.*")).name
    steps = [(launcher, []), (str(plugin_bundle), [tree]), (launcher, [tree]), (launcher, [])]
    for source, trees in steps:
        proc = run_install(host, "install", "--skip-conflist", "--plugin-source", source)
        assert proc.returncode == 0, proc.stderr
        exe = host / BIN / "underlay"
        expected = plugin_bundle / "underlay" if source == str(plugin_bundle) else launcher
        assert exe.read_bytes() == open(expected, "rb").read()
        assert sorted(p.name for p in (host / BIN).glob("underlay.*")) == trees, source
        version = subprocess.run([str(exe)], input=b'{"cniVersion":"1.1.0"}',
                                 env={"CNI_COMMAND": "VERSION"}, capture_output=True,
                                 timeout=30, check=False)
        assert json.loads(version.stdout)["cniVersion"] == "1.1.0", version.stdout
    assert run_install(host, "uninstall").returncode == 0
    assert listing(host) == before


def test_uninstall_right_after_an_upgrade_removes_both_versions(tmp_path, plugin_bundle):
    host = make_host(tmp_path / "host", populated=False)
    launcher = write_plugin_launcher(str(tmp_path / "v1"))
    for source in (str(plugin_bundle), launcher):
        assert run_install(host, "install", "--skip-conflist", "--plugin-source",
                           source).returncode == 0
    assert len(list((host / BIN).glob("underlay.*"))) == 1  # the replaced bundle, kept
    assert run_install(host, "uninstall").returncode == 0
    assert list(host.iterdir()) == []


@pytest.mark.parametrize("case", ["not-json", "wrong-type", "no-template", "no-plugin",
                                  "negative-wait"])
def test_bad_input_is_named_and_changes_nothing(tmp_path, plugin_bundle, case):
    host = make_host(tmp_path / "host", populated=True)
    template = write_template(tmp_path / "t.conflist", "/run/underlay/agent.sock")
    source = str(plugin_bundle)
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
        expect = "is neither an executable file nor a bundle"
    else:
        extra = ["--wait-seconds", "-1"]
        expect = "--wait-seconds -1 must be >= 0"
    before = listing(host)
    proc = run_install(host, "install", "--plugin-source", source, "--conflist-template",
                       str(template), "--agent-socket", str(tmp_path / "none.sock"), *extra)
    assert proc.returncode != 0 and expect in proc.stderr, proc.stderr
    assert listing(host) == before


def test_uninstall_spares_a_file_changed_since(tmp_path):
    host = make_host(tmp_path / "host", populated=False)
    launcher = write_plugin_launcher(str(tmp_path / "v1"))
    assert run_install(host, "install", "--skip-conflist", "--plugin-source",
                       launcher).returncode == 0
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
