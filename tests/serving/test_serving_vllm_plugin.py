"""Plain `vllm serve` with hf_overrides is the steered server (issue 11, item 3).

The `plain` server (servers.py) is vLLM's own server entry started with `--hf-overrides` carrying
the steering architecture and the `cast_*` settings, and `VLLM_PLUGINS=cast_vllm`; it passes
`servers.CHECKS` (vector routes, a steered request with its receipt, the `cast_steering_*` series on
`/metrics`, the API key on the steering routes and `/metrics`), as `cast-vllm serve` does in
test_serving_access.py. The in-process tests build vLLM's app with `build_app` to check how the
endpoint plugin is found, gated by `VLLM_PLUGINS`, and taken away again for a server without a
steering model.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from servers import CHECK_IDS, CHECKS, PROMPT, error_message, upload_bytes

SERVER = "plain"
STEERING_PATHS = {"/v1/steering/vectors", "/v1/steering/vectors/{name}"}


@pytest.mark.parametrize("check", CHECKS, ids=CHECK_IDS)
def test_vllm_serve(server, model_name, check):
    check(server, model_name)


def test_vllm_serve_reads_the_cast_settings(server, model_name):
    """cast_upload_dir, cast_max_uploaded_vectors (1), cast_max_upload_bytes, cast_max_scale and
    cast_max_steering_vectors reach the server."""
    assert server.upload("kept", upload_bytes()).status_code == 201
    assert (server.upload_dir / "kept.safetensors").is_file()
    r = server.upload("second", upload_bytes())
    assert r.status_code == 409 and "cast_max_uploaded_vectors" in error_message(r)
    assert server.http("DELETE", "/v1/steering/vectors/kept").status_code == 200
    assert server.upload("big", upload_bytes() + b"\0" * 70_000).status_code == 413
    r = server.http("POST", "/v1/completions", json={"model": model_name, "prompt": PROMPT, "max_tokens": 1,
                                                     "steering": {"vector": "v0", "scale": 500}})
    assert r.status_code == 400 and "server limit of 100" in error_message(r)
    text = server.http("GET", "/metrics").text
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
