"""Plain `vllm serve` with hf_overrides is the steered server (issue 11, item 3).

`CHECKS` run here against vLLM's own server entry started with `--hf-overrides` carrying the
steering architecture and the `cast_*` settings and `VLLM_PLUGINS=cast_vllm`, and in
`test_serving.py` against `cast-vllm serve`: vector routes, a steered request with its receipt,
the `cast_steering_*` series on `/metrics`, the API key on the steering routes and `/metrics`.
The in-process tests build vLLM's app with `build_app` to check how the endpoint plugin is
found, gated by `VLLM_PLUGINS`, and taken away again for a server without a steering model.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

API_KEY = "plugin-key-7d2e"
PROMPT = "the capital of France is Paris and the capital of Spain is"
CHECK_VECTOR = "plugin-check"
SERIES = ("cast_steering_requests_total", "cast_steering_rejected_requests_total",
          "cast_steering_slot_waits_total", "cast_steering_slot_loads_total", "cast_steering_slot_evictions_total",
          "cast_steering_requests_in_flight", "cast_steering_vectors_in_flight", "cast_steering_slots",
          "cast_steering_slots_in_use", "cast_steering_vectors_available")
STEERING_PATHS = {"/v1/steering/vectors", "/v1/steering/vectors/{name}"}


# ---------------------------------------------------------------------------------------------
# The checks both commands must pass (server: a ServerProcess with API key `key` and vector v0)
# ---------------------------------------------------------------------------------------------
def http(server, method, path, key, **kw):
    import requests

    headers = kw.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)


def _upload_bytes() -> bytes:
    import torch
    from safetensors.torch import save

    g = torch.Generator().manual_seed(77)
    return save({f"layer.{i}": torch.randn(64, generator=g) for i in range(4)}, metadata={"format": "cast-vllm/1"})


def check_vector_routes(server, key, model_name):
    names = {v["name"] for v in http(server, "GET", "/v1/steering/vectors", key).json()["data"]}
    assert "v0" in names and CHECK_VECTOR not in names
    r = http(server, "POST", "/v1/steering/vectors", key, params={"name": CHECK_VECTOR}, data=_upload_bytes(),
             headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201 and r.json()["source"] == "upload", r.text
    assert http(server, "GET", f"/v1/steering/vectors/{CHECK_VECTOR}", key).json()["layers"] == [0, 1, 2, 3]
    r = http(server, "DELETE", f"/v1/steering/vectors/{CHECK_VECTOR}", key)
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert http(server, "GET", f"/v1/steering/vectors/{CHECK_VECTOR}", key).status_code == 404


def check_steered_request_has_receipt(server, key, model_name):
    def complete(**extra):
        r = http(server, "POST", "/v1/completions", key, json={"model": model_name, "prompt": PROMPT, "max_tokens": 8,
                                                                "temperature": 0.0, **extra})
        assert r.status_code == 200, r.text
        return r

    plain = complete()
    assert "x-cast-steering" not in plain.headers and "steering" not in plain.json()
    steered = complete(steering={"vector": "v0", "scale": 8.0})   # the top-level field: body rewrite
    (receipt,) = json.loads(steered.headers["x-cast-steering"])
    assert [c["vector"] for c in receipt["components"]] == ["v0"] and receipt["components"][0]["scale"] == 8.0
    assert steered.json()["steering"][0]["config_hash"] == receipt["config_hash"]
    assert steered.json()["choices"][0]["text"] != plain.json()["choices"][0]["text"]


def check_metrics_series(server, key, model_name):
    text = http(server, "GET", "/metrics", key).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("cast_steering_")}
    assert set(SERIES) <= set(values), sorted(values)
    assert values["cast_steering_vectors_available"] >= 1


def check_api_key_guards_steering_and_metrics(server, key, model_name):
    guarded = [("GET", "/v1/steering/vectors", {}), ("GET", "/v1/steering/vectors/v0", {}),
               ("POST", "/v1/steering/vectors", {"json": {"name": "v0"}}),
               ("DELETE", "/v1/steering/vectors/v0", {}), ("GET", "/metrics", {}),
               ("POST", "/v1/completions", {"json": {"model": model_name, "prompt": "hi", "max_tokens": 1}})]
    for wrong in (None, "wrong-key"):
        for method, path, kw in guarded:
            assert http(server, method, path, wrong, **kw).status_code == 401, (wrong, method, path)
    assert http(server, "GET", "/health", None).status_code == 200
    assert http(server, "GET", "/v1/steering/vectors/v0", key).status_code == 200  # the DELETE was refused


CHECKS = [check_vector_routes, check_steered_request_has_receipt, check_metrics_series,
          check_api_key_guards_steering_and_metrics]
CHECK_IDS = [c.__name__.removeprefix("check_") for c in CHECKS]


# ---------------------------------------------------------------------------------------------
# Plain vLLM serve
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vector_dir(tmp_path_factory):
    import torch

    from cast_vllm import SteeringVector

    d = tmp_path_factory.mktemp("plugin-vectors")
    g = torch.Generator().manual_seed(0)
    SteeringVector({i: torch.randn(64, generator=g) for i in range(4)}, metadata={"model": "tiny-llama"}).save(
        d / "v0.safetensors")
    return d


@pytest.fixture(scope="module")
def upload_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("plugin-uploads")


@pytest.fixture(scope="module")
def vllm_server(tiny_model_dir, vector_dir, upload_dir, tmp_path_factory):
    """What a user types: vLLM's server, the steering architecture and cast_* settings in hf_overrides."""
    from cast_vllm.serving.launcher import ServerProcess
    from cast_vllm.serving.plugin import WORKER_EXTENSION

    overrides = {"architectures": ["CastLlamaForCausalLM"], "cast_vector_dirs": [str(vector_dir)],
                 "cast_upload_dir": str(upload_dir), "cast_max_steering_vectors": 2, "cast_max_scale": 100,
                 "cast_max_upload_bytes": 65536, "cast_max_uploaded_vectors": 1}
    args = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--block-size", "32",
            "--kv-cache-memory-bytes", str(256 << 20), "--api-key", API_KEY, "--hf-overrides", json.dumps(overrides),
            "--worker-extension-cls", WORKER_EXTENSION, "--uvicorn-log-level", "warning",
            "--disable-uvicorn-access-log"]
    log = tmp_path_factory.mktemp("plugin-log") / "server.log"
    with ServerProcess(str(tiny_model_dir("llama")), str(vector_dir), args, plain_vllm=True,
                       env={"VLLM_PLUGINS": "cast_vllm"}, log_path=log) as server:
        yield server


@pytest.fixture(scope="module")
def model_name(vllm_server):
    return http(vllm_server, "GET", "/v1/models", API_KEY).json()["data"][0]["id"]


@pytest.mark.parametrize("check", CHECKS, ids=CHECK_IDS)
def test_vllm_serve(vllm_server, model_name, check):
    check(vllm_server, API_KEY, model_name)


def test_vllm_serve_reads_the_cast_settings(vllm_server, model_name, upload_dir):
    """cast_upload_dir, cast_max_uploaded_vectors, cast_max_upload_bytes, cast_max_scale, cast_max_steering_vectors."""
    def upload(name, data):
        return http(vllm_server, "POST", "/v1/steering/vectors", API_KEY, params={"name": name}, data=data,
                    headers={"Content-Type": "application/octet-stream"})

    assert upload("kept", _upload_bytes()).status_code == 201
    assert (upload_dir / "kept.safetensors").is_file()
    r = upload("second", _upload_bytes())
    assert r.status_code == 409 and "cast_max_uploaded_vectors" in r.json()["error"]["message"]
    assert http(vllm_server, "DELETE", "/v1/steering/vectors/kept", API_KEY).status_code == 200
    assert upload("big", _upload_bytes() + b"\0" * 70_000).status_code == 413
    r = http(vllm_server, "POST", "/v1/completions", API_KEY,
             json={"model": model_name, "prompt": PROMPT, "max_tokens": 1, "steering": {"vector": "v0", "scale": 500}})
    assert r.status_code == 400 and "server limit of 100" in r.json()["error"]["message"]
    text = http(vllm_server, "GET", "/metrics", API_KEY).text
    assert "cast_steering_slots 2.0" in text


# ---------------------------------------------------------------------------------------------
# The plugin inside vLLM's build_app (no engine)
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def vllm_env(monkeypatch):
    """vLLM reads VLLM_PLUGINS afresh; the root logger's levels are put back (build_app changes them)."""
    import vllm.envs as envs

    envs.disable_envs_cache()
    root = logging.getLogger()
    levels = (root.level, [h.level for h in root.handlers])
    yield monkeypatch
    root.setLevel(levels[0])
    for handler, level in zip(root.handlers, levels[1]):
        handler.setLevel(level)


def _app(model: str):
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", model])
    return build_app(args, ("generate",)), args


def _steering_paths(app) -> set[str]:
    return {getattr(r, "path", "") for r in app.router.routes} & STEERING_PATHS


def test_plugin_is_found_by_its_entry_point_only_when_allowed(tiny_model_dir, vllm_env):
    from cast_vllm.serving.plugin import SteeringEndpoints

    vllm_env.delenv("VLLM_PLUGINS", raising=False)
    assert _steering_paths(_app(str(tiny_model_dir("llama")))[0]) == set()
    vllm_env.setenv("VLLM_PLUGINS", "cast_vllm")
    app, _ = _app(str(tiny_model_dir("llama")))
    assert _steering_paths(app) == STEERING_PATHS
    assert [type(p) for p in app.state.endpoint_plugins] == [SteeringEndpoints]


def test_plugin_without_a_steering_engine_leaves_vllm_app_as_it_was(tiny_model_dir, vllm_env):
    """No engine (vLLM's render server) or no steering model: routes taken away, no middleware, no state."""
    vllm_env.setenv("VLLM_PLUGINS", "cast_vllm")
    app, args = _app(str(tiny_model_dir("llama")))
    middleware = list(app.user_middleware)
    (plugin,) = app.state.endpoint_plugins
    asyncio.run(plugin.init_state(None, app.state, args))
    assert _steering_paths(app) == set()
    assert app.user_middleware == middleware
    assert not hasattr(app.state, "cast_steering")
    assert "/v1/steering/vectors" not in json.dumps(app.openapi()["paths"])
