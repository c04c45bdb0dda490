"""Steering on vLLM's V2 GPU model runner, through its model-state hook (no runner patch).

The V2 runner asks the model for ``get_model_state_cls()``; this state records each request's
steering when it is added and indexes tokens to slots in ``preprocess_state``, which runs on
every real batch before the forward pass. The V2 runner needs CUDA (Triton without a CPU
backend), so this path is not exercised on the project's CPU machines; the plugin keeps
``VLLM_USE_V2_MODEL_RUNNER=0`` unless the user sets it.
"""

from __future__ import annotations

from vllm.v1.worker.gpu.model_states.default import DefaultModelState

from cast_vllm.engine.runner_hook import request_steering


class SteeringModelState(DefaultModelState):
    def __init__(self, vllm_config, model, encoder_cache, device):
        super().__init__(vllm_config, model, encoder_cache, device)
        self._indexer = model.cast_steering.indexer
        self._requests: dict[str, tuple | None] = {}

    def add_request(self, req_index, new_req_data) -> None:
        super().add_request(req_index, new_req_data)
        prompt_len = len(new_req_data.prompt_token_ids or new_req_data.prefill_token_ids or [])
        self._requests[new_req_data.req_id] = request_steering(new_req_data.sampling_params, prompt_len)

    def remove_request(self, req_id: str) -> None:
        super().remove_request(req_id)
        self._requests.pop(req_id, None)

    def preprocess_state(self, input_batch, block_tables, kv_cache_config, num_computed_tokens) -> None:
        super().preprocess_state(input_batch, block_tables, kv_cache_config, num_computed_tokens)
        self._indexer.index(input_batch.req_ids[: input_batch.num_reqs], input_batch.query_start_loc_np,
                            input_batch.num_computed_tokens_np, self._requests.get)
