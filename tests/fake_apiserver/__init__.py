"""A fake Kubernetes API server for tests (see server.py). Use::

    with FakeApiServer() as api:
        api.create("nodes", {"metadata": {"name": "n1"}, "spec": {...}})
        client = build_api_client(KubeSettings(host=api.url))
"""
from .server import FakeApiServer, RequestRecord, rbac_verb
from .store import ApiError

__all__ = ["FakeApiServer", "RequestRecord", "ApiError", "rbac_verb"]
