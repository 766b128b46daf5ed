"""libcni (1.1.2, what containerd and CRI-O link) drives the plugin: VERSION over our
rendered conflist, ADD with the agent down comes back as code 11, DEL succeeds; and the
client itself is proven on a chain of the reference plugins (ptp + host-local) in a node
namespace we create, passing real packets. The root namespace is never the node."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from cni_fixtures import (  # noqa: F401 - fixtures
    cni_bin_dir, cni_path, libcni_client, make_netns, run_libcni, short_tmp,
)

from cni.conflist import ConflistOptions, render_conflist

CID = "c0ffee4b1d"


def write_json(path: str, data: dict) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path


@pytest.fixture
def underlay_conflist(short_tmp) -> str:
    opts = ConflistOptions(name="h4net", socket=os.path.join(short_tmp, "agent.sock"),
                           tuning_sysctls={"net.ipv4.conf.IFNAME.arp_notify": "1"})
    return write_json(os.path.join(short_tmp, "10-underlay.conflist"), render_conflist(opts))


def test_libcni_loads_the_conflist_and_drives_version(libcni_client, cni_bin_dir,
                                                       underlay_conflist, short_tmp):
    run = run_libcni(libcni_client, "version", underlay_conflist, cni_path_=cni_path(cni_bin_dir),
                     cache_dir=os.path.join(short_tmp, "cache"))
    assert run.returncode == 0, run.stdout + run.stderr
    versions = run.json()
    assert versions["underlay"] == ["0.4.0", "1.0.0", "1.1.0"]
    assert set(versions) == {"underlay", "portmap", "bandwidth", "tuning"}


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_add_through_libcni_without_agent_is_11_and_del_succeeds(
        libcni_client, cni_bin_dir, underlay_conflist, make_netns, short_tmp, version):
    conflist = json.load(open(underlay_conflist))
    conflist["cniVersion"] = version
    path = write_json(os.path.join(short_tmp, f"v{version}.conflist"), conflist)
    node, pod = make_netns("h4nod"), make_netns("h4pod")
    common = {"cni_path_": cni_path(cni_bin_dir), "cache_dir": os.path.join(short_tmp, "cache"),
              "netns_exec": node}
    args = (f"/run/netns/{pod}", CID, "eth0", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
    add = run_libcni(libcni_client, "add", path, *args, **common)
    assert add.returncode != 0
    err = add.json()
    assert err["code"] == 11, err
    assert "agent unreachable" in err["msg"] and "agent.sock" in err["msg"]
    delete = run_libcni(libcni_client, "del", path, *args, **common)
    assert delete.returncode == 0, delete.stdout + delete.stderr
    assert delete.stdout == ""


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def test_reference_chain_ptp_host_local_through_the_client(libcni_client, make_netns,
                                                          short_tmp):
    """Proves the client before the agent exists: ADD wires a pod with ptp + host-local
    (real veth, real address, ping works), CHECK passes, DEL removes it, DEL again is fine."""
    node, pod = make_netns("h4nod"), make_netns("h4pod")
    data_dir = os.path.join(short_tmp, "host-local")
    conflist = write_json(os.path.join(short_tmp, "ptp.conflist"), {
        "cniVersion": "1.0.0", "name": "h4ptp", "plugins": [{
            "type": "ptp", "ipMasq": False, "mtu": 1500,
            "ipam": {"type": "host-local", "dataDir": data_dir,
                     "ranges": [[{"subnet": "10.244.7.0/28"}]]},
        }]})
    common = {"cni_path_": "/usr/lib/cni", "cache_dir": os.path.join(short_tmp, "cache"),
              "netns_exec": node}
    args = (f"/run/netns/{pod}", CID, "eth0")
    add = run_libcni(libcni_client, "add", conflist, *args, **common)
    assert add.returncode == 0, add.stdout + add.stderr
    result = add.json()
    assert result["cniVersion"] == "1.0.0"
    address = result["ips"][0]["address"]
    gateway = result["ips"][0]["gateway"]
    assert address.startswith("10.244.7.")
    assert address in _ip(pod, "-o", "addr", "show", "dev", "eth0")
    ping = subprocess.run(["ip", "netns", "exec", pod, "busybox", "ping", "-c", "1", "-W", "2", gateway],
                          capture_output=True, text=True, timeout=30)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    host_links = [ln for ln in _ip(node, "-o", "link").splitlines() if "veth" in ln]
    assert len(host_links) == 1

    check = run_libcni(libcni_client, "check", conflist, *args, **common)
    assert check.returncode == 0, check.stdout + check.stderr

    for _ in range(2):  # DEL twice: the second finds nothing and still succeeds
        delete = run_libcni(libcni_client, "del", conflist, *args, **common)
        assert delete.returncode == 0, delete.stdout + delete.stderr
    assert "veth" not in _ip(node, "-o", "link")
    assert "eth0" not in _ip(pod, "-o", "link")
    allocated = [f for f in os.listdir(os.path.join(data_dir, "h4ptp")) if f.startswith("10.")]
    assert allocated == []
