"""Start vLLM's OpenAI-compatible server with steering, from Python (no ``vllm`` console script).

``build_server_args`` turns our options plus any vLLM server options into vLLM's own parsed
arguments: the checkpoint's steering wrapper architecture and the steering settings go into
``hf_overrides`` (so every vLLM process sees them), the worker extension gives the slot
counters, loopback is the default bind address, and a CPU KV cache gets an explicit size.
``serve`` then follows vLLM's single-process ``run_server`` step by step, adding our vector
routes, middleware and metrics to the app before it starts.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 16 << 20
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
DEFAULT_MAX_UPLOADED_VECTORS = 256
DEFAULT_MAX_CONCURRENT_UPLOADS = 4
WORKER_EXTENSION = "cast_vllm.engine.worker_extension.SteeringWorkerExtension"


class ServeError(ValueError):
    """Options the steered server cannot start with; the message says which and why."""


@dataclass
class ServeOptions:
    model: str
    vector_dir: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_steering_vectors: int = 16
    max_steering_scale: float = 1000.0
    upload_dir: str | None = None          # None: a private directory removed at exit
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_uploaded_vectors: int = DEFAULT_MAX_UPLOADED_VECTORS    # files kept in the upload directory
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS  # upload bodies in memory at once


def build_server_args(options: ServeOptions, vllm_argv: list[str]) -> Namespace:
    """vLLM's parsed server arguments for ``options`` plus pass-through ``vllm_argv``."""
    from transformers import AutoConfig
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.platforms import current_platform
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from cast_vllm.engine.architectures import wrapper_for
    from cast_vllm.engine.plugin import register
    from cast_vllm.engine.settings import SteeringSettings

    register()
    if options.max_steering_vectors < 1:
        raise ServeError(f"--max-steering-vectors must be >= 1, got {options.max_steering_vectors}")
    for flag, value in (("--max-upload-bytes", options.max_upload_bytes),
                        ("--max-uploaded-vectors", options.max_uploaded_vectors),
                        ("--max-concurrent-uploads", options.max_concurrent_uploads)):
        if value < 1:
            raise ServeError(f"{flag} must be >= 1, got {value}")
    parser = make_arg_parser(FlexibleArgumentParser(prog="cast-vllm serve"))
    args = parser.parse_args(["--model", options.model, "--host", options.host, "--port", str(options.port),
                              *vllm_argv])
    if (args.api_server_count or 1) > 1 or args.headless or args.grpc:
        raise ServeError("cast-vllm serve runs one HTTP API server process: --api-server-count > 1, "
                         "--headless and --grpc are not supported")
    user_overrides = args.hf_overrides if isinstance(args.hf_overrides, dict) else {}
    if args.hf_overrides and not isinstance(args.hf_overrides, dict):
        raise ServeError("--hf-overrides must be a JSON object here (steering adds keys to it)")
    architectures = user_overrides.get("architectures")
    if not architectures:
        hf_config = AutoConfig.from_pretrained(args.model, trust_remote_code=args.trust_remote_code,
                                               revision=args.revision)
        architectures = getattr(hf_config, "architectures", None) or []
    try:
        wrapper = wrapper_for(architectures)
    except ValueError as exc:
        raise ServeError(str(exc)) from None
    settings = SteeringSettings((str(options.upload_dir), str(options.vector_dir)),
                                options.max_steering_vectors, float(options.max_steering_scale))
    args.hf_overrides = {**user_overrides, "architectures": [wrapper], **settings.to_overrides()}
    if not args.worker_extension_cls:
        args.worker_extension_cls = WORKER_EXTENSION
    elif args.worker_extension_cls != WORKER_EXTENSION:
        logger.warning("--worker-extension-cls %s replaces %s: /metrics will show no slot loads or evictions",
                       args.worker_extension_cls, WORKER_EXTENSION)
    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        if args.kv_cache_memory_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            args.kv_cache_memory_bytes = DEFAULT_CPU_KV_CACHE_BYTES
    logger.info("serving %s as %s on %s:%s, vectors from %s (uploads into %s)", args.model, wrapper,
                args.host, args.port, options.vector_dir, options.upload_dir)
    warn_if_exposed(args)
    return args


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine can reach (no host: every interface, so False)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def warn_if_exposed(args: Namespace) -> None:
    """A loud warning when other machines can reach a server that has no API key."""
    if api_keys(args) or is_loopback(args.host):
        return
    logger.warning(
        "!!! cast-vllm serve binds %s WITHOUT an API key: anyone who can reach this address can generate, "
        "list, upload, replace and delete steering vectors. Pass --api-key KEY (or set VLLM_API_KEY), or bind "
        "127.0.0.1. !!!", args.host or "every interface")


def api_keys(args: Namespace) -> list[str]:
    """The keys vLLM itself enforces (``--api-key`` first, else ``VLLM_API_KEY``)."""
    import vllm.envs as envs

    return [k for k in (args.api_key or [envs.VLLM_API_KEY]) if k]


async def serve(args: Namespace, options: ServeOptions) -> None:
    """vLLM's ``run_server`` / ``run_server_worker`` / ``build_and_serve``, plus steering."""
    import prometheus_client
    import vllm.envs as envs
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.launcher import serve_http, setup_server
    from vllm.entrypoints.launchers.utils.server_utils import get_uvicorn_log_config

    from cast_vllm.serving.metrics import SteeringCollector
    from cast_vllm.serving.routes import attach
    from cast_vllm.serving.service import SteeringService, UploadLimits
    from cast_vllm.serving.store import ServingVectorStore

    store = ServingVectorStore(options.upload_dir, options.vector_dir)
    listen_address, sock = setup_server(args, reuse_port=False)
    collector = None
    try:
        async with build_async_engine_client(args) as engine_client:
            service = SteeringService(engine_client, store, UploadLimits(
                options.max_upload_bytes, options.max_uploaded_vectors, options.max_concurrent_uploads))
            service.install()
            collector = SteeringCollector(service)
            prometheus_client.REGISTRY.register(collector)
            supported_tasks = await engine_client.get_supported_tasks()
            app = build_app(args, supported_tasks, engine_client.model_config)
            attach(app, service, api_keys(args))
            await init_app_state(engine_client, app.state, args, supported_tasks)
            uvicorn_kwargs = {}
            log_config = get_uvicorn_log_config(args)
            if log_config is not None:
                uvicorn_kwargs["log_config"] = log_config
            logger.info("steered vLLM server on %s (vectors: %s)", listen_address, ", ".join(store.names()) or "none")
            shutdown_task = await serve_http(
                app, sock=sock, enable_ssl_refresh=args.enable_ssl_refresh, host=args.host, port=args.port,
                log_level=args.uvicorn_log_level, access_log=not args.disable_uvicorn_access_log,
                timeout_keep_alive=envs.VLLM_HTTP_TIMEOUT_KEEP_ALIVE, ssl_keyfile=args.ssl_keyfile,
                ssl_certfile=args.ssl_certfile, ssl_ca_certs=args.ssl_ca_certs, ssl_cert_reqs=args.ssl_cert_reqs,
                ssl_ciphers=args.ssl_ciphers, h11_max_incomplete_event_size=args.h11_max_incomplete_event_size,
                h11_max_header_count=args.h11_max_header_count, **uvicorn_kwargs)
        await shutdown_task
    finally:
        sock.close()
        if collector is not None:
            prometheus_client.REGISTRY.unregister(collector)


def run(options: ServeOptions, vllm_argv: list[str]) -> int:
    """Blocking entry point of ``cast-vllm serve``."""
    import uvloop
    from vllm.entrypoints.launchers.cli_args import validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    private_upload_dir = None
    if options.upload_dir is None:
        private_upload_dir = options.upload_dir = tempfile.mkdtemp(prefix="cast-vllm-uploads-")
    Path(options.upload_dir).mkdir(parents=True, exist_ok=True)
    try:
        if not Path(options.vector_dir).is_dir():
            raise ServeError(f"--vector-dir {options.vector_dir} is not a directory")
        cli_env_setup()
        args = build_server_args(options, vllm_argv)
        configure_logging_from_args(args)
        validate_parsed_serve_args(args)
        uvloop.run(serve(args, options))
    finally:
        if private_upload_dir:
            shutil.rmtree(private_upload_dir, ignore_errors=True)
    return 0
