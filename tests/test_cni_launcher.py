"""The launcher written into a CNI bin dir: executable, runs the plugin with this
interpreter in isolated mode whatever the caller's environment and working directory."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from cni.launcher import render_launcher, write_plugin_launcher


def test_launcher_is_an_executable_with_an_isolated_interpreter(tmp_path):
    path = write_plugin_launcher(str(tmp_path / "bin"))
    assert os.path.basename(path) == "underlay"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    first = open(path).readline()
    assert first == f"#!{os.path.abspath(sys.executable)} -IS\n"
    assert os.listdir(tmp_path / "bin") == ["underlay"]  # no temp file left behind


def test_launcher_ignores_the_callers_python_environment(tmp_path):
    """A runtime's environment may carry PYTHONPATH or PYTHONHOME of something else, and
    its cwd is anywhere: the plugin still starts from this tree."""
    path = write_plugin_launcher(str(tmp_path / "bin"))
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    # without isolation PYTHONPATH comes before the standard library: this json would win
    (decoy / "json.py").write_text("raise SystemExit('decoy json imported')\n")
    env = {"CNI_COMMAND": "VERSION", "PYTHONPATH": str(decoy), "PYTHONWARNINGS": "error"}
    proc = subprocess.run([path], input=b'{"cniVersion": "1.0.0"}', env=env,
                          cwd=str(decoy), capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


def test_rewriting_replaces_atomically(tmp_path):
    bin_dir = str(tmp_path / "bin")
    first = write_plugin_launcher(bin_dir)
    inode = os.stat(first).st_ino
    second = write_plugin_launcher(bin_dir)
    assert first == second and os.stat(second).st_ino != inode


@pytest.mark.parametrize("python,names", [("python3", "absolute"),
                                          ("/opt/my python/bin/python", "shebang")])
def test_interpreter_paths_that_cannot_work_are_refused(python, names):
    with pytest.raises(ValueError, match=names):
        render_launcher(python, "/work/main")
