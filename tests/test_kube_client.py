"""Client set-up: a kubeconfig file or a host URL with a bearer token reach the API server
with the agent's user agent; the token never shows in settings or logs; bad settings and
API errors are named."""
from __future__ import annotations

import logging

import pytest

from fake_apiserver import FakeApiServer
from fake_apiserver.fixtures import INSTANCE, add_node, apiserver, kube_api, settings_for  # noqa: F401
from ipam_daemon.kube.client import (USER_AGENT, KubeApi, KubeNotFound, KubeRejected, KubeSettings,
                                     KubeUnavailable, build_api_client)

TOKEN = "s3cr3t-token-value"


@pytest.fixture
def secured():
    server = FakeApiServer(token=TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def test_kubeconfig_file_with_token(secured, tmp_path, caplog):
    add_node(secured)
    path = tmp_path / "kubeconfig"
    path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{secured.url}"}}}}]
users: [{{name: agent, user: {{token: {TOKEN}}}}}]
contexts: [{{name: ctx, context: {{cluster: fake, user: agent}}}}]
current-context: ctx
""")
    settings = KubeSettings(node_name="node-a", kubeconfig=str(path))
    caplog.set_level(logging.DEBUG, logger="ipam_daemon")
    api = KubeApi(build_api_client(settings), settings)
    try:
        node = api.get_node("node-a")
    finally:
        api.api_client.close()
    assert node["spec"]["providerID"].endswith(INSTANCE)
    assert secured.requests[-1].user_agent == USER_AGENT and secured.requests[-1].status == 200
    assert TOKEN not in caplog.text


def test_host_with_token_and_token_kept_out_of_repr(secured):
    add_node(secured)
    settings = settings_for(secured, token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)
    with kube_api(secured, token=TOKEN) as api:
        assert api.get_node("node-a")["metadata"]["name"] == "node-a"
    with kube_api(secured, token="wrong") as api:
        with pytest.raises(KubeRejected, match="401"):
            api.get_node("node-a")


def test_errors_translated(apiserver):
    with kube_api(apiserver) as api:
        with pytest.raises(KubeNotFound, match="get node nope: HTTP 404"):
            api.get_node("nope")
        apiserver.fail_next(1, status=503)
        with pytest.raises(KubeUnavailable, match="503"):
            api.get_node("node-a")
        apiserver.go_down()
        with pytest.raises(KubeUnavailable, match="get node node-a"):
            api.get_node("node-a")


@pytest.mark.parametrize("kwargs, named", [
    ({}, "exactly one of host, kubeconfig, in_cluster"),
    ({"host": "http://127.0.0.1:1", "in_cluster": True}, "exactly one"),
    ({"host": "http://127.0.0.1:1", "node_name": ""}, "node_name"),
    ({"host": "http://127.0.0.1:1", "request_timeout": 0}, "request_timeout=0"),
    ({"host": "http://127.0.0.1:1", "event_queue_size": 0}, "event_queue_size"),
])
def test_bad_settings_named(kwargs, named):
    values = {"node_name": "node-a", **kwargs}
    with pytest.raises(ValueError, match=named):
        KubeSettings(**values).validate()
