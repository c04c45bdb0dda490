"""`cast-vllm serve` (the keyed server): where it listens, and the API key on every route; and the
checks plain `vllm serve` passes in test_serving_vllm_plugin.py, on `cast-vllm serve`."""

import pytest
from servers import CHECK_IDS, CHECKS

SERVER = "keyed"


def test_binds_loopback_by_default(server):
    import psutil

    root = psutil.Process(server.process.proc.pid)
    listening = set()
    for proc in [root, *root.children(recursive=True)]:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port:
                listening.add(c.laddr.ip)
    assert listening == {"127.0.0.1"}


def test_api_key_enforced_on_every_route(server):
    routes = [("POST", "/v1/completions", {"json": {"model": "x", "prompt": "hi", "max_tokens": 1}}),
              ("POST", "/v1/chat/completions", {"json": {"model": "x", "messages": []}}),
              ("GET", "/v1/models", {}),
              ("GET", "/v1/steering/vectors", {}),
              ("GET", "/v1/steering/vectors/v0", {}),
              ("POST", "/v1/steering/vectors", {"json": {"name": "v0"}}),
              ("DELETE", "/v1/steering/vectors/v0", {}),
              ("GET", "/metrics", {}),
              ("POST", "/tokenize", {"json": {"model": "x", "prompt": "hi"}}),
              ("GET", "/version", {})]
    for key in (None, "wrong-key"):
        for method, path, kw in routes:
            assert server.http(method, path, key=key, **kw).status_code == 401, (key, method, path)
    assert server.http("GET", "/health", key=None).status_code == 200
    assert server.http("GET", "/v1/steering/vectors/v0").status_code == 200  # DELETE above was refused


@pytest.mark.parametrize("check", CHECKS, ids=CHECK_IDS)
def test_same_checks_as_plain_vllm_serve(server, model_name, check):
    check(server, model_name)
