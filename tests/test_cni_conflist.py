"""The conflist the installer writes: valid JSON of the right shape, options validated with
messages naming the option (libcni loading it is in test_cni_libcni.py)."""
from __future__ import annotations

import json

import pytest

from cni.conflist import ConflistOptions, render_conflist, render_conflist_json


def test_default_conflist_shape():
    data = json.loads(render_conflist_json(ConflistOptions()))
    assert data["cniVersion"] == "1.0.0" and data["cniVersions"] == ["1.0.0", "1.1.0"]
    assert data["name"] == "underlay"
    first, *rest = data["plugins"]
    assert first == {"type": "underlay", "socket": "/run/underlay/agent.sock", "mtu": 9001}
    assert [p["type"] for p in rest] == ["portmap", "bandwidth"]
    assert rest[0]["capabilities"] == {"portMappings": True}
    assert rest[1]["capabilities"] == {"bandwidth": True}


def test_optional_plugins_follow_options():
    data = render_conflist(ConflistOptions(portmap=False, bandwidth=False,
                                           tuning_sysctls={"net.core.somaxconn": "1024"}))
    assert [p["type"] for p in data["plugins"]] == ["underlay", "tuning"]
    assert "mode" not in data["plugins"][0]  # the agent's datapath setting decides
    assert data["plugins"][1]["sysctl"] == {"net.core.somaxconn": "1024"}


@pytest.mark.parametrize("opts,names", [
    (ConflistOptions(name="bad name"), "'bad name'"),
    (ConflistOptions(socket="agent.sock"), "socket 'agent.sock'"),
    (ConflistOptions(mtu=10), "mtu 10"),
    (ConflistOptions(mtu=True), "mtu True"),
])
def test_bad_options_are_named(opts, names):
    with pytest.raises(ValueError, match=names):
        render_conflist(opts)
