"""`make demo` stays working: the demo with one pod per node pings across nodes, shows the
source check, prints both nodes' pool tables and leaves nothing of its run behind."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from lab import cleanup


def test_the_demo_runs_and_cleans_up() -> None:
    proc = subprocess.run([sys.executable, "-m", "lab.demo", "--pods", "1"],
                          capture_output=True, text=True, timeout=180, check=False,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = proc.stdout
    assert proc.returncode == 0, f"{out}\n{proc.stderr}"
    assert len(re.findall(r"2/2 replies", out)) == 3  # a0 <-> b0, and b0 again after
    assert "no reply (the VPC router drops" in out
    assert out.count("underlay-status on ") == 2 and out.count("  ready yes") == 2
    prefix = re.search(r"nothing of the run \((ul[0-9a-f]+)-\*\) is left", out).group(1)
    assert not [n for n in os.listdir(cleanup.NETNS_DIR) if n.startswith(prefix)]
    assert not [n for n in os.listdir(cleanup.STATE_DIR) if n.startswith(prefix)]


def test_the_demo_refuses_a_bad_pod_count_before_doing_anything() -> None:
    proc = subprocess.run([sys.executable, "-m", "lab.demo", "--pods", "0"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "--pods must be between 1 and 6, got 0" in proc.stderr
    assert proc.stdout == ""
