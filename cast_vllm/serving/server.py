"""``cast-vllm serve``: fill vLLM's server arguments for steering, then run vLLM's own ``serve``.

The server is vLLM's: the same code path as ``vllm serve`` (``ServeSubcommand.cmd``, which runs
``run_server``), with the steering routes, middleware and metrics added by our endpoint plugin
(``plugin``). All this module adds is what a user would otherwise type: the checkpoint's
steering wrapper architecture and the ``cast_*`` settings in ``hf_overrides`` (so every vLLM
process sees them), ``VLLM_PLUGINS`` naming the plugin, the worker extension behind the slot
counters, loopback as the default bind address, and an explicit KV-cache size on CPU.
"""

from __future__ import annotations

import logging
from argparse import Namespace
from dataclasses import dataclass
from pathlib import Path

from cast_vllm import envs
from cast_vllm.engine.settings import (DEFAULT_MAX_CONCURRENT_UPLOADS, DEFAULT_MAX_UPLOAD_BYTES,
                                       DEFAULT_MAX_UPLOADED_VECTORS)
from cast_vllm.errors import CastVllmError
from cast_vllm.serving.plugin import PLUGIN_NAME

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
ENDPOINT_PLUGINS_GROUP = "vllm.endpoint_plugins"


class ServeError(CastVllmError, ValueError):
    """Options the steered server cannot start with; the message says which and why."""


@dataclass
class ServeOptions:
    model: str
    vector_dir: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    max_steering_vectors: int | None = None   # None: one per max_num_seqs (engine.settings.auto_slots)
    max_steering_scale: float = 1000.0
    upload_dir: str | None = None          # None: a private directory removed at exit
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_uploaded_vectors: int = DEFAULT_MAX_UPLOADED_VECTORS    # files kept in the upload directory
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS  # upload bodies in memory at once


def steering_overrides(options: ServeOptions, wrapper: str) -> dict:
    """The ``hf_overrides`` keys a plain ``vllm serve`` user would write for these options."""
    from cast_vllm.engine.settings import ServingSettings, SteeringSettings

    steering = SteeringSettings((str(options.vector_dir),), options.max_steering_vectors,
                                float(options.max_steering_scale))
    serving = ServingSettings(str(options.upload_dir) if options.upload_dir else None, options.max_upload_bytes,
                              options.max_uploaded_vectors, options.max_concurrent_uploads)
    return {"architectures": [wrapper], **steering.to_overrides(), **serving.to_overrides()}


def build_server_args(options: ServeOptions, vllm_argv: list[str]) -> Namespace:
    """vLLM's parsed server arguments for ``options`` plus pass-through ``vllm_argv``."""
    from transformers import AutoConfig
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.platforms import current_platform
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from cast_vllm.engine.architectures import wrapper_for

    for flag, value in (("--max-steering-vectors", options.max_steering_vectors),
                        ("--max-upload-bytes", options.max_upload_bytes),
                        ("--max-uploaded-vectors", options.max_uploaded_vectors),
                        ("--max-concurrent-uploads", options.max_concurrent_uploads)):
        if value is not None and value < 1:
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
    args.hf_overrides = {**user_overrides, **steering_overrides(options, wrapper)}
    if current_platform.is_cpu():
        envs.use_cpu_engine_defaults()
        if args.kv_cache_memory_bytes is None and not envs.cpu_kv_cache_space_set():
            args.kv_cache_memory_bytes = DEFAULT_CPU_KV_CACHE_BYTES
    logger.info("serving %s as %s on %s:%s, vectors from %s (uploads into %s)", args.model, wrapper,
                args.host, args.port, options.vector_dir, options.upload_dir or "a private directory")
    return args


def plugin_allowlist(current: str | None) -> str:
    """``VLLM_PLUGINS`` that adds our endpoint plugin and keeps every other plugin vLLM would load.

    vLLM loads endpoint plugins only when ``VLLM_PLUGINS`` names them, and once it is set, only
    the plugins it names in every group: so when it is unset, name all the others too.
    """
    if current is None:
        from importlib.metadata import distributions

        names = [ep.name for dist in distributions() for ep in dist.entry_points
                 if ep.group.startswith("vllm.") and ep.group != ENDPOINT_PLUGINS_GROUP]
    else:
        names = [n.strip() for n in current.split(",") if n.strip()]
    return ",".join(dict.fromkeys([*names, PLUGIN_NAME]))


def run(options: ServeOptions, vllm_argv: list[str]) -> int:
    """Blocking entry point of ``cast-vllm serve``: vLLM's ``serve`` subcommand with the arguments filled."""
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args

    from cast_vllm.engine.plugin import register

    register(strict=True)  # an unsupported vLLM: a clear error now, not a failed start-up later
    if not Path(options.vector_dir).is_dir():
        raise ServeError(f"--vector-dir {options.vector_dir} is not a directory")
    envs.put(envs.VLLM_PLUGINS, plugin_allowlist(envs.get(envs.VLLM_PLUGINS)))
    cli_env_setup()
    args = build_server_args(options, vllm_argv)
    configure_logging_from_args(args)
    command = ServeSubcommand()
    command.validate(args)
    command.cmd(args)
    return 0
