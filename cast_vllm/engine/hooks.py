"""The engine hooks, installed by the plugin in every vLLM process (each is inert for
models that are not steering wrappers):

- front end: ``InputProcessor.process_inputs`` validates every request's keys and resolves steering;
- engine core: ``generate_block_hash_extra_keys`` adds steering to prefix-cache block keys;
- engine core: ``Scheduler._handle_blocked_waiting_request`` keeps steered requests within the slot budget;
- engine core: ``EngineCore.add_request`` gives the scheduler's slot budget a way to ship vectors to
  the workers (``collective_rpc("cast_put_vector")``, ``worker_vectors.py``);
- worker: ``GPUModelRunner._model_forward`` (V1 runner, CPU and GPU) indexes tokens to slots;
- worker: ``WorkerBase`` gets our RPC methods (``worker_extension.py``), whatever the launch command.

Plus one read-only engine-core utility, ``EngineCore.cast_steering_stats``, so a front end
(the server's ``/metrics``) can read the scheduler's slot waits and the workers' slot counters.

The V2 GPU runner has no such hook here yet, so the plugin keeps vLLM on the V1 runner.
"""

from __future__ import annotations

import functools
import logging

from cast_vllm import envs

logger = logging.getLogger(__name__)
_MISSING = object()


def install() -> None:
    # The V2 model-state path cannot be tested on CPU machines; keep the tested V1 runner by default.
    envs.use_v1_model_runner()
    _patch_admission()
    _patch_block_hasher()
    _patch_scheduler()
    _patch_runner()
    _patch_engine_core()
    _patch_worker()


def _admission_of(processor):
    """The front end's Admission (None for models that are not steering wrappers), made once."""
    admission = getattr(processor, "_cast_admission", _MISSING)
    if admission is _MISSING:
        from cast_vllm.engine.admission import Admission
        from cast_vllm.engine.settings import SteeringSettings, is_steering_model

        hf_config = processor.model_config.hf_config
        admission = None
        if is_steering_model(hf_config):
            admission = Admission(SteeringSettings.of_engine(processor.vllm_config),
                                  processor.model_config.get_hidden_size(),
                                  processor.model_config.get_total_num_hidden_layers())
        processor._cast_admission = admission
    return admission


def _patch_admission() -> None:
    from vllm.sampling_params import SamplingParams
    from vllm.v1.engine.input_processor import InputProcessor

    from cast_vllm.engine.resolved import RESOLVED_KEY
    from cast_vllm.spec import SteeringSpecError

    original = InputProcessor.process_inputs
    if getattr(original, "_cast_patched", False):
        return

    @functools.wraps(original)
    def process_inputs(self, request_id, prompt, params, *args, **kwargs):
        admission = _admission_of(self)
        extra = params.extra_args if isinstance(params, SamplingParams) else None
        if admission is None:
            if (extra or {}).get("steering") is not None:
                raise SteeringSpecError(
                    "invalid steering: this model is not served with a steering architecture "
                    "(use SteeredLLM or hf_overrides={'architectures': ['Cast<Arch>ForCausalLM']})")
            return original(self, request_id, prompt, params, *args, **kwargs)
        resolved = admission.resolve(extra) if extra else None  # checks every request's keys
        request = original(self, request_id, prompt, params, *args, **kwargs)
        if resolved is not None:
            sp = request.sampling_params
            sp.extra_args = {**(sp.extra_args or {}), RESOLVED_KEY: resolved}
            receipts = getattr(self, "_cast_receipts", None)  # set by SteeredLLM, which reads them back
            if receipts is not None:
                receipts[request.request_id] = resolved
        return request

    process_inputs._cast_patched = True
    InputProcessor.process_inputs = process_inputs


def _patch_block_hasher() -> None:
    """Prefix-cache keys that cover steering (engine core; see ``steering_block_keys``)."""
    from vllm.v1.core import kv_cache_utils

    from cast_vllm.engine.resolved import steering_block_keys

    original = kv_cache_utils.generate_block_hash_extra_keys
    if getattr(original, "_cast_patched", False):
        return

    @functools.wraps(original)
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        extra_keys, next_mm_idx = original(request, start_token_idx, end_token_idx, start_mm_idx)
        ours = steering_block_keys(request.sampling_params, request.num_prompt_tokens, start_token_idx,
                                   end_token_idx)
        if ours:
            extra_keys = (*(extra_keys or ()), *ours)
        return extra_keys, next_mm_idx

    generate_block_hash_extra_keys._cast_patched = True
    kv_cache_utils.generate_block_hash_extra_keys = generate_block_hash_extra_keys


def _patch_scheduler() -> None:
    from vllm.v1.core.sched.scheduler import Scheduler

    from cast_vllm.engine.scheduler_hook import SlotBudget
    from cast_vllm.engine.settings import SteeringSettings, is_steering_model

    original_schedule = Scheduler.schedule
    original_ready = Scheduler._handle_blocked_waiting_request
    if getattr(original_schedule, "_cast_patched", False):
        return

    def budget_of(scheduler):
        budget = getattr(scheduler, "_cast_budget", _MISSING)
        if budget is _MISSING:
            hf_config = scheduler.vllm_config.model_config.hf_config
            budget = (SlotBudget(SteeringSettings.of_engine(scheduler.vllm_config).max_steering_vectors)
                      if is_steering_model(hf_config) else None)
            scheduler._cast_budget = budget
        return budget

    @functools.wraps(original_schedule)
    def schedule(self, *args, **kwargs):
        budget = budget_of(self)
        if budget is not None:
            budget.begin_step()
        return original_schedule(self, *args, **kwargs)

    @functools.wraps(original_ready)
    def _handle_blocked_waiting_request(self, request):
        if not original_ready(self, request):
            return False
        budget = budget_of(self)
        return budget is None or budget.admit(self, request)

    schedule._cast_patched = True
    Scheduler.schedule = schedule
    Scheduler._handle_blocked_waiting_request = _handle_blocked_waiting_request


def _patch_runner() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    original = GPUModelRunner._model_forward
    if getattr(original, "_cast_patched", False):
        return

    @functools.wraps(original)
    def _model_forward(self, *args, **kwargs):
        indexer = getattr(self, "_cast_indexer", _MISSING)
        if indexer is _MISSING:
            state = getattr(self.get_model(), "cast_steering", None)
            indexer = self._cast_indexer = state.indexer if state is not None else None
        if indexer is not None:
            indexer.prepare_v1(self)
        return original(self, *args, **kwargs)

    _model_forward._cast_patched = True
    GPUModelRunner._model_forward = _model_forward


def _patch_engine_core() -> None:
    """Add the ``cast_steering_stats`` utility (``call_utility_async``) to the engine core.

    Slot waits live on the scheduler and slot evictions in the workers; the front end can
    reach neither directly, so it asks the engine core, which answers between steps.
    """
    from vllm.v1.engine.core import EngineCore

    if hasattr(EngineCore, "cast_steering_stats"):
        return
    original_add = EngineCore.add_request

    @functools.wraps(original_add)
    def add_request(self, request, *args, **kwargs):
        # vLLM loads this plugin inside EngineCore.__init__, so the scheduler learns here how to
        # reach every rank of every node (the executor), before a step uses the vector
        if not hasattr(self.scheduler, "_cast_ship"):
            self.scheduler._cast_ship = lambda content_hash, data: self.collective_rpc(
                "cast_put_vector", args=(content_hash, data))
        return original_add(self, request, *args, **kwargs)

    def cast_steering_stats(self) -> dict:
        budget = getattr(self.scheduler, "_cast_budget", None)
        try:
            workers = self.collective_rpc("cast_steering_stats")
        except Exception as exc:  # a worker without our methods (plugin not loaded there): no counters
            logger.debug("cast_steering_stats: workers did not answer: %s", exc)
            workers = []
        return {"waits": budget.waits if budget is not None else 0,
                "failed": budget.failed if budget is not None else 0, "workers": list(workers)}

    EngineCore.add_request = add_request
    EngineCore.cast_steering_stats = cast_steering_stats


def _patch_worker() -> None:
    """The worker-extension methods on every worker (see the module doc)."""
    from vllm.v1.worker.worker_base import WorkerBase

    from cast_vllm.engine.worker_extension import SteeringWorkerMethods

    if not hasattr(WorkerBase, "cast_put_vector"):
        WorkerBase.cast_steering_stats = SteeringWorkerMethods.cast_steering_stats
        WorkerBase.cast_put_vector = SteeringWorkerMethods.cast_put_vector
