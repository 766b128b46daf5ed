"""ENI links by MAC and their route tables, and the netns module, in real namespaces."""
from __future__ import annotations

import dataclasses
import os
import threading

import pytest

from cni.datapath import DatapathError, NetnsMissing
from cni.datapath.eni import ensure_eni, ensure_host_sysctls
from cni.datapath.netns import entered_netns, open_netns
from datapath_fixtures import call_in_netns, netns_path, sh, static_vpc


def table(v, number: int) -> list[str]:
    return sh("ip", "-n", v.node, "route", "show", "table", str(number)).stdout.splitlines()


def sysctl(v, name: str) -> str:
    return sh("ip", "netns", "exec", v.node, "sysctl", "-n", name).stdout.strip()


def test_ensure_eni_finds_the_link_by_mac_and_owns_its_table():
    with static_vpc() as v:
        eni = dataclasses.replace(v.enis[1], mac=v.enis[1].mac.upper(), mtu=9001)
        assert v.in_node(ensure_eni, eni) == "eni1"
        link = sh("ip", "-n", v.node, "-o", "link", "show", "eni1").stdout
        assert "mtu 9001" in link and ",UP" in link
        assert table(v, 2) == ["default via 10.0.2.1 dev eni1 proto static ",
                               "10.0.2.0/24 dev eni1 proto static scope link "]
        assert sysctl(v, "net.ipv4.conf.eni1.rp_filter") == "2"
        # a stray route in our table goes; a second run changes nothing
        sh("ip", "-n", v.node, "route", "add", "192.0.2.0/24", "dev", "eni1", "table", "2")
        assert v.in_node(ensure_eni, eni) == "eni1"
        assert v.in_node(ensure_eni, eni) == "eni1"
        assert table(v, 2) == ["default via 10.0.2.1 dev eni1 proto static ",
                               "10.0.2.0/24 dev eni1 proto static scope link "]


def test_ensure_eni_waits_for_a_link_that_is_still_attaching():
    with static_vpc(n_enis=1) as v:
        mac = "02:ee:00:00:77:01"
        eni = dataclasses.replace(v.enis[0], mac=mac, device_index=3)
        started = threading.Event()

        def attach_later() -> None:
            started.wait(10)
            sh("ip", "-n", v.node, "link", "add", "late0", "address", mac, "type", "veth",
               "peer", "name", "late0p")

        attacher = threading.Thread(target=attach_later)
        attacher.start()
        try:
            # the link does not exist when ensure_eni starts looking
            assert sh("ip", "-n", v.node, "link", "show", "late0", check=False).returncode != 0
            started.set()
            assert v.in_node(ensure_eni, eni, timeout=20) == "late0"
        finally:
            attacher.join(20)
        assert "default via 10.0.1.1 dev late0" in "\n".join(table(v, 4))


def test_ensure_eni_gives_up_naming_the_mac_and_changes_nothing():
    with static_vpc(n_enis=1) as v:
        before = sh("ip", "-n", v.node, "route", "show", "table", "all").stdout
        missing = dataclasses.replace(v.enis[0], mac="02:ee:00:00:00:99", device_index=5)
        stop = threading.Event()
        stop.set()  # a stopping agent does not wait out the timeout
        with pytest.raises(DatapathError, match="02:ee:00:00:00:99"):
            v.in_node(ensure_eni, missing, timeout=30, stop=stop)
        with pytest.raises(DatapathError, match="no link with MAC 02:ee:00:00:00:99"):
            v.in_node(ensure_eni, missing, timeout=0)
        for field, value, message in (("mac", "02:ee:zz", "MAC '02:ee:zz'"),
                                      ("gateway", "10.0.9.1", "outside its subnet"),
                                      ("subnet_cidr", "10.0.1.5/24", "subnet_cidr '10.0.1.5/24'"),
                                      ("mtu", 100, "mtu 100")):
            with pytest.raises(DatapathError, match=message):
                v.in_node(ensure_eni, dataclasses.replace(v.enis[0], **{field: value}))
        assert sh("ip", "-n", v.node, "route", "show", "table", "all").stdout == before


def test_host_sysctls_enable_forwarding_in_the_node_only():
    root_forwarding = open("/proc/sys/net/ipv4/ip_forward").read()
    with static_vpc(n_enis=1) as v:
        assert sysctl(v, "net.ipv4.ip_forward") == "0"
        v.in_node(ensure_host_sysctls)
        assert sysctl(v, "net.ipv4.ip_forward") == "1"
    assert open("/proc/sys/net/ipv4/ip_forward").read() == root_forwarding


def test_netns_helpers_never_create_and_always_switch_back():
    with static_vpc(n_enis=1) as v:
        path = netns_path(v.node)
        root = os.readlink("/proc/thread-self/ns/net")
        inside = call_in_netns(path, lambda: os.readlink("/proc/thread-self/ns/net"))
        assert inside != root
        with pytest.raises(RuntimeError, match="boom"):
            def fail_inside() -> None:
                with entered_netns(path):
                    raise RuntimeError("boom")
            fail_inside()
        assert os.readlink("/proc/thread-self/ns/net") == root
        with open_netns(path) as ns:
            assert {link.get_attr("IFLA_IFNAME") for link in ns.get_links()} >= {"lo", "eni0"}
        ghost = netns_path(f"{v.node}-ghost")
        for opener in (open_netns, entered_netns):
            with pytest.raises(NetnsMissing, match=f"{ghost} does not exist"):
                with opener(ghost):
                    pass
        assert not os.path.exists(ghost)
        with pytest.raises(DatapathError, match="/etc/passwd is not a network namespace"):
            with entered_netns("/etc/passwd"):
                pass
        assert os.readlink("/proc/thread-self/ns/net") == root


def test_importing_the_types_and_the_registry_does_not_load_pyroute2():
    """An IPAM-only agent (datapath none) never loads pyroute2; a kernel mode does."""
    import subprocess
    import sys

    code = ("import sys, cni.datapath\n"
            "from cni.datapath.registry import build_datapath, datapath_names\n"
            "assert build_datapath('none').name == 'none'\n"
            "assert 'pyroute2' not in sys.modules, 'types alone pulled in pyroute2'\n"
            "assert datapath_names() == ('veth', 'ipvlan', 'none')\n"
            "veth = build_datapath('veth')\n"
            "assert veth.name == 'veth' and callable(veth.setup)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
