"""One server per configuration (servers.py), shared by the modules that name it in ``SERVER``;
one server at a time, stopped when the tests leave this folder."""

from pathlib import Path

import pytest
from servers import OneServer

_SERVERS = OneServer()


@pytest.fixture(scope="session")
def _server_pool():
    yield _SERVERS
    _SERVERS.close()


@pytest.fixture(scope="module")
def server(request, _server_pool, tiny_model_dir, tmp_path_factory):
    """The server the module names in ``SERVER``: "keyed", "open" or "plain" (servers.py)."""
    return _server_pool.get(request.module.SERVER, tiny_model_dir("llama"), tmp_path_factory)


@pytest.fixture(scope="module")
def model_name(server):
    return server.http("GET", "/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=server.key or "unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def good_upload(server) -> bytes:
    """A valid vector file to upload: the server's own v1."""
    return (server.vector_dir / "v1.safetensors").read_bytes()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Leaving this folder (or the session ending): no test here needs the server any more."""
    here = Path(__file__).parent
    if nextitem is None or Path(nextitem.path).parent != here:
        _SERVERS.close()
