"""`cast-vllm serve` option handling, without starting a server: what reaches vLLM."""

import json

import pytest

from cast_vllm.cli import build_parser


def _options(model, tmp_path, **kw):
    from cast_vllm.serving.server import ServeOptions

    (tmp_path / "vec").mkdir(exist_ok=True)
    (tmp_path / "up").mkdir(exist_ok=True)
    return ServeOptions(model=str(model), vector_dir=str(tmp_path / "vec"), upload_dir=str(tmp_path / "up"), **kw)


def test_cli_keeps_vllm_options_for_vllm():
    argv = ["serve", "--model", "m", "--vector-dir", "d", "--api-key", "k", "--dtype", "float32", "--port", "9001"]
    args, extra = build_parser(argv).parse_known_args(argv)
    assert (args.model, args.vector_dir, args.host, args.port) == ("m", "d", "127.0.0.1", 9001)
    assert extra == ["--api-key", "k", "--dtype", "float32"]
    assert (args.max_uploaded_vectors, args.max_concurrent_uploads) == (256, 4)


def test_cli_upload_limits():
    argv = ["serve", "--max-uploaded-vectors", "9", "--max-concurrent-uploads", "2", "--max-upload-bytes", "100"]
    args, extra = build_parser(argv).parse_known_args(argv)
    assert (args.max_uploaded_vectors, args.max_concurrent_uploads, args.max_upload_bytes, extra) == (9, 2, 100, [])


def test_defaults_loopback_wrapper_settings_and_cpu_kv_cache(tiny_model_dir, tmp_path, monkeypatch):
    from cast_vllm.serving.server import DEFAULT_CPU_KV_CACHE_BYTES, build_server_args

    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    opts = _options(tiny_model_dir("llama"), tmp_path, max_steering_vectors=3, max_steering_scale=50.0)
    args = build_server_args(opts, [])
    assert args.host == "127.0.0.1" and args.port == 8000
    assert args.hf_overrides == {"architectures": ["CastLlamaForCausalLM"], "cast_vector_dirs": [opts.vector_dir],
                                 "cast_max_steering_vectors": 3, "cast_max_scale": 50.0,
                                 "cast_upload_dir": opts.upload_dir, "cast_max_upload_bytes": 16 << 20,
                                 "cast_max_uploaded_vectors": 256, "cast_max_concurrent_uploads": 4}
    assert args.worker_extension_cls == ""     # workers get our RPC methods from the plugin
    assert args.kv_cache_memory_bytes == DEFAULT_CPU_KV_CACHE_BYTES


def test_vllm_options_pass_through_and_merge(tiny_model_dir, tmp_path):
    from cast_vllm.serving.server import build_server_args

    opts = _options(tiny_model_dir("qwen2"), tmp_path, host="0.0.0.0")
    args = build_server_args(opts, ["--api-key", "secret", "--dtype", "float32", "--kv-cache-memory-bytes", "12345",
                                    "--hf-overrides", json.dumps({"rope_theta": 5000.0})])
    assert args.host == "0.0.0.0"
    assert "secret" in (args.api_key if isinstance(args.api_key, list) else [args.api_key])
    assert args.dtype == "float32" and args.kv_cache_memory_bytes == 12345
    assert args.hf_overrides["rope_theta"] == 5000.0
    assert args.hf_overrides["architectures"] == ["CastQwen2ForCausalLM"]


@pytest.mark.parametrize("extra,kw,message", [
    (["--api-server-count", "2"], {}, "one HTTP API server process"),
    (["--headless"], {}, "one HTTP API server process"),
    ([], {"max_steering_vectors": 0}, "--max-steering-vectors must be >= 1"),
    ([], {"max_upload_bytes": 0}, "--max-upload-bytes must be >= 1"),
    ([], {"max_uploaded_vectors": 0}, "--max-uploaded-vectors must be >= 1"),
    ([], {"max_concurrent_uploads": -1}, "--max-concurrent-uploads must be >= 1"),
])
def test_refused_options(tiny_model_dir, tmp_path, extra, kw, message):
    from cast_vllm.serving.server import ServeError, build_server_args

    with pytest.raises(ServeError, match=message):
        build_server_args(_options(tiny_model_dir("llama"), tmp_path, **kw), extra)


EXPOSED = "WITHOUT an API key"


@pytest.mark.parametrize("host,argv,warns", [
    ("0.0.0.0", [], True),
    ("192.0.2.7", [], True),
    ("::", [], True),
    ("myhost.example", [], True),
    ("0.0.0.0", ["--api-key", "k"], False),
    ("127.0.0.1", [], False),
    ("::1", [], False),
    ("localhost", [], False),
])
def test_exposed_bind_without_api_key_warns(tiny_model_dir, tmp_path, monkeypatch, caplog, host, argv, warns):
    """Anyone who can reach the address may replace vectors: the endpoint plugin says so at start-up."""
    import logging

    from cast_vllm.serving.access import warn_if_exposed
    from cast_vllm.serving.server import build_server_args

    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    args = build_server_args(_options(tiny_model_dir("llama"), tmp_path, host=host), argv)
    with caplog.at_level(logging.WARNING, logger="cast_vllm.serving.access"):
        assert warn_if_exposed(args) == warns
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and EXPOSED in r.getMessage()]
    assert bool(warnings) == warns, [r.getMessage() for r in caplog.records]
    if warns:
        assert host in warnings[0].getMessage()


def test_plain_vllm_serve_default_bind_warns(monkeypatch, caplog):
    """vLLM's own default host (None: every interface) without a key."""
    import logging
    from argparse import Namespace

    from cast_vllm.serving.access import warn_if_exposed

    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="cast_vllm.serving.access"):
        assert warn_if_exposed(Namespace(host=None, api_key=None, uds=None))
    assert "every interface" in caplog.text


def test_vllm_api_key_env_counts_as_a_key(tiny_model_dir, tmp_path, monkeypatch):
    from cast_vllm.serving.access import warn_if_exposed
    from cast_vllm.serving.server import build_server_args

    monkeypatch.setenv("VLLM_API_KEY", "from-env")
    assert not warn_if_exposed(build_server_args(_options(tiny_model_dir("llama"), tmp_path, host="0.0.0.0"), []))


def test_vllm_plugins_names_the_endpoint_plugin_and_keeps_the_rest():
    """vLLM loads endpoint plugins only when VLLM_PLUGINS names them, and then only what it names."""
    from cast_vllm.serving.server import plugin_allowlist

    unset = plugin_allowlist(None).split(",")
    assert "cast_vllm" in unset
    assert "lora_filesystem_resolver" in unset, "general plugins vLLM loads by default stay loaded"
    assert plugin_allowlist("") == "cast_vllm"
    assert plugin_allowlist("a, cast_vllm") == "a,cast_vllm"
    assert plugin_allowlist("a") == "a,cast_vllm"


@pytest.mark.parametrize("key,value", [("cast_max_upload_bytes", 0), ("cast_max_uploaded_vectors", -1),
                                       ("cast_max_concurrent_uploads", "4"), ("cast_max_upload_bytes", True)])
def test_plain_vllm_serve_settings_are_checked(key, value):
    """Under plain `vllm serve` the limits come from hf_overrides; a bad one stops the start-up, named."""
    from types import SimpleNamespace

    from cast_vllm.engine.settings import ServingSettings

    with pytest.raises(ValueError, match=f"{key} must be an integer >= 1"):
        ServingSettings.from_hf_config(SimpleNamespace(**{key: value}))


def test_serving_settings_round_trip_through_overrides():
    from types import SimpleNamespace

    from cast_vllm.engine.settings import ServingSettings

    s = ServingSettings("/up", 10, 2, 1)
    assert ServingSettings.from_hf_config(SimpleNamespace(**s.to_overrides())) == s
    assert ServingSettings.from_hf_config(SimpleNamespace()) == ServingSettings()


def test_unsupported_architecture_is_named(tmp_path):
    from cast_vllm.serving.server import ServeError, build_server_args

    model = tmp_path / "gpt2"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ServeError, match="GPT2LMHeadModel.*not supported for steering"):
        build_server_args(_options(model, tmp_path), [])


def test_serve_command_refuses_a_missing_vector_dir(tiny_model_dir, tmp_path, capsys):
    from cast_vllm.cli import main

    rc = main(["serve", "--model", str(tiny_model_dir("llama")), "--vector-dir", str(tmp_path / "nope"),
               "--upload-dir", str(tmp_path / "up")])
    assert rc == 2
    assert "is not a directory" in capsys.readouterr().err



def test_embedded_model_name_resolves_to_its_folder(default_model_dir, tiny_model_dir):
    from cast_vllm.model_zoo import resolve

    assert resolve("smollm2-135m") == str(default_model_dir)
    assert resolve(None) == str(default_model_dir)
    assert resolve(str(tiny_model_dir("llama"))) == str(tiny_model_dir("llama"))
