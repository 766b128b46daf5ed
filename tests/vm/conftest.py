"""Tests named ``test_*_in_vm.py`` need the VM kernel (ipvlan): they are collected only
inside the VM, where the runner sets UNDERLAY_IN_VM=1. On the host, tests/test_ipvlan_vm.py
boots the VM and runs them."""
from __future__ import annotations

import os

collect_ignore_glob = [] if os.environ.get("UNDERLAY_IN_VM") == "1" else ["test_*_in_vm.py"]
