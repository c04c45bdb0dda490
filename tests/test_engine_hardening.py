"""Issue 10 regressions on the offline engine: other extra_args pass, prefix caching under every
position policy (the multi-turn pattern), arrival order under slot pressure, structured outputs
under slot pressure, lost or corrupt blobs, n > 1 and the steering receipt. (Forged internal keys,
typos and limits are cases of tests/bad_inputs.py, refused in tests/test_engine_admission.py.)
One engine for the module (2 slots, prefix caching on, 32-token blocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_models import random_vector, save_vectors
from vllm import SamplingParams
from vllm.sampling_params import StructuredOutputsParams

from cast_vllm import SteeringVector
from cast_vllm.receipt import steered_tokens

BLOCK = 32
POLICIES = ["all", "prompt", "generated", "last_prompt", ["prompt", "generated"]]


@pytest.fixture(scope="module")
def engine(steered_llm, tmp_path_factory):
    vector_dir = save_vectors(tmp_path_factory.mktemp("vectors"), {f"v{i}": random_vector(i, scale=2.0)
                                                                    for i in range(4)})
    return steered_llm(vector_dir=str(vector_dir), max_model_len=512, max_num_seqs=16, max_steering_vectors=2,
                       enable_prefix_caching=True, block_size=BLOCK)


def sp(extra=None, tokens=4, **kw):
    kw.setdefault("temperature", 0.0)
    return SamplingParams(max_tokens=tokens, ignore_eos=True, extra_args=extra, **kw)


def alive(engine):
    out = engine.generate(["hello world"], sp({"steering": "v0"}), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4 and out.steering is not None


# ---- other extra_args are not steering -----------------------------------------------------
def test_other_extra_args_still_pass(engine):
    out = engine.generate(["hello"], sp({"my_logits_processor_arg": 1}), use_tqdm=False)[0]
    assert len(out.outputs[0].token_ids) == 4 and out.steering is None


def test_n_greater_than_one_steers_every_sequence(engine):
    spec = {"steering": "v1", "steering_scale": 3.0}
    both = engine.generate(["the quick brown"], sp(spec, 6, n=2, temperature=1.0, seed=11), use_tqdm=False)[0]
    for i, choice in enumerate(both.outputs):
        alone = engine.generate(["the quick brown"], sp(spec, 6, temperature=1.0, seed=11 + i), use_tqdm=False)[0]
        assert list(choice.token_ids) == list(alone.outputs[0].token_ids), f"choice {i}"
    plain = engine.generate(["the quick brown"], sp(None, 6, n=2, temperature=1.0, seed=11), use_tqdm=False)[0]
    assert [list(c.token_ids) for c in plain.outputs] != [list(c.token_ids) for c in both.outputs]
    assert both.steering.tokens_steered == (len(both.prompt_token_ids) + 5,) * 2


# ---- prefix caching under every position policy --------------------------------------------
def _spec(policy):
    if isinstance(policy, list):
        return {"steering": [{"vector": "v2", "scale": 2.0, "positions": policy[0]},
                             {"vector": "v3", "scale": 2.0, "positions": policy[1]}]}
    return {"steering": {"vector": "v2", "scale": 3.0, "positions": policy}}


def _logprobs(out):
    return [next(iter(lp.values())).logprob for lp in out.outputs[0].logprobs]


@pytest.mark.parametrize("policy", POLICIES, ids=[str(p) for p in POLICIES])
def test_multi_turn_prefix_reuse_equals_fresh_computation(engine, policy):
    """Turn 2 = turn-1 prompt + turn-1 answer + a new turn: cached blocks must give fresh KV."""
    first = list(range(10, 10 + 40))                      # ends inside block 1
    spec = _spec(policy)
    turn1 = engine.generate([{"prompt_token_ids": first}], sp(spec, 30), use_tqdm=False)[0]
    second = first + list(turn1.outputs[0].token_ids) + list(range(100, 112))
    params = sp(spec, 6, logprobs=0)
    reused = engine.generate([{"prompt_token_ids": second}], params, use_tqdm=False)[0]
    fresh = engine.generate([{"prompt_token_ids": second, "cache_salt": f"fresh-{policy}"}], params,
                            use_tqdm=False)[0]
    assert fresh.num_cached_tokens == 0
    assert list(reused.outputs[0].token_ids) == list(fresh.outputs[0].token_ids)
    assert _logprobs(reused) == pytest.approx(_logprobs(fresh), abs=1e-4)
    if policy == "all":
        assert reused.num_cached_tokens >= 2 * BLOCK, "position-independent steering keeps sharing"
    else:
        assert reused.num_cached_tokens == BLOCK, "the block before the first phase change is shared"


def test_client_salt_cannot_reach_steered_blocks(engine):
    prompt = {"prompt_token_ids": list(range(200, 200 + 3 * BLOCK))}
    steered = engine.generate([prompt], sp({"steering": "v1", "steering_scale": 4.0}), use_tqdm=False)[0]
    key = steered.steering.config_hash
    fresh = engine.generate([{**prompt, "cache_salt": "unique-salt-1"}], sp(logprobs=0), use_tqdm=False)[0]
    for salt in (f"cast-{key[:40]}", key, f"cast_steering-{key}"):
        forged = engine.generate([{**prompt, "cache_salt": salt}], sp(logprobs=0), use_tqdm=False)[0]
        assert forged.num_cached_tokens == 0, salt
        assert _logprobs(forged) == pytest.approx(_logprobs(fresh), abs=1e-5)


# ---- slot admission ----------------------------------------------------------------------
def _run_until_done(engine, requests: dict, feed: dict | None = None) -> dict:
    """Step the engine by hand; ``feed`` adds requests at given steps. Returns request id -> finish step."""
    core = engine.llm_engine
    for rid, (prompt, params) in requests.items():
        core.add_request(rid, prompt, params)
    finished, step = {}, 0
    while core.has_unfinished_requests() or (feed and any(s >= step for s in feed)):
        for rid, (prompt, params) in (feed or {}).get(step, {}).items():
            core.add_request(rid, prompt, params)
        for out in core.step():
            if out.finished:
                finished[out.request_id] = step
        step += 1
        assert step < 2000
    return finished


def test_held_request_is_not_overtaken_by_traffic_on_loaded_vectors(engine):
    """2 slots busy with v0 and v1; a v2 request arrives, then a stream of v0/v1 requests."""
    long = lambda v: ("hello world", sp({"steering": v}, 24))  # noqa: E731
    first = {"a0": long("v0"), "a1": long("v1")}
    feed = {1: {"new-v2": ("the quick brown", sp({"steering": "v2"}, 4))}}
    for step in range(2, 60, 4):
        feed[step] = {f"later-{step}-v0": long("v0"), f"later-{step}-v1": long("v1")}
    done = _run_until_done(engine, first, feed)
    later = [s for rid, s in done.items() if rid.startswith("later-")]
    assert done["new-v2"] < min(later), "the v2 request must run before requests that arrived after it"
    assert len(done) == 3 + len(later)


def test_structured_outputs_under_slot_pressure(engine):
    """Both slots busy; requests whose grammar is still compiling fill the free seats (vLLM skips
    them), and a request for a third vector stands behind them: it must wait, not crash a worker."""
    first = {"busy-v0": ("hello world", sp({"steering": "v0"}, 16)), "busy-v1": ("hello", sp({"steering": "v1"}, 16))}
    grammar = StructuredOutputsParams(regex="[a-z ]{3,8}")
    feed = {2: {f"so-{i}": (f"hello world {i}", sp(None, 8, structured_outputs=grammar)) for i in range(14)}}
    feed[2]["third-vector"] = ("the quick brown", sp({"steering": "v2"}, 4))
    feed[3] = {"so-steered": ("hello", sp({"steering": "v3"}, 8, structured_outputs=grammar))}
    done = _run_until_done(engine, first, feed)
    assert sorted(done) == sorted([*first, *feed[2], *feed[3]])
    assert done["third-vector"] > min(done["busy-v0"], done["busy-v1"]), "it needed a free slot"
    alive(engine)


# ---- blobs -------------------------------------------------------------------------------
def test_lost_or_corrupt_blob_is_rebuilt(engine):
    expected = engine.generate(["hello world"], sp({"steering": "v3"}), use_tqdm=False)[0]
    store = engine.llm_engine.input_processor._cast_admission.store
    blob = store.get("v3").blob
    blob.unlink()
    again = engine.generate(["hello world"], sp({"steering": "v3"}), use_tqdm=False)[0]
    assert blob.is_file() and again.outputs[0].token_ids == expected.outputs[0].token_ids
    blob.write_bytes(b"garbage, not a safetensors file")
    again = engine.generate(["hello world"], sp({"steering": "v3"}), use_tqdm=False)[0]
    assert again.outputs[0].token_ids == expected.outputs[0].token_ids
    assert SteeringVector.load(blob).content_hash() == store.get("v3").content_hash


def test_workers_hold_vectors_shipped_in_band(engine):
    engine.generate(["hello world"], sp({"steering": "v1"}), use_tqdm=False)
    (stats,) = engine.steering_stats()
    assert stats["vectors_received"] >= 1 and stats["vectors_from_paths"] == 0


def test_a_vector_the_worker_refuses_fails_only_its_request(engine, monkeypatch):
    """Bytes that do not hold the vector (a corrupted transfer) are refused by the worker; the
    request fails on its own, the engine serves others, and the next request ships again."""
    store = engine.llm_engine.input_processor._cast_admission.store
    fresh = random_vector(77, scale=2.0)
    (Path(store.dirs[-1]) / "v77.safetensors").write_bytes(fresh.to_safetensors_bytes())
    good = SteeringVector.to_safetensors_bytes
    monkeypatch.setattr(SteeringVector, "to_safetensors_bytes",
                        lambda self, where="vector": good(random_vector(78, scale=2.0)))
    bad, plain = engine.generate(["hello world", "hello world"], [sp({"steering": "v77"}), sp()], use_tqdm=False)
    assert bad.finished and len(bad.outputs[0].token_ids) == 0
    assert len(plain.outputs[0].token_ids) == 4
    monkeypatch.setattr(SteeringVector, "to_safetensors_bytes", good)
    again = engine.generate(["hello world"], sp({"steering": "v77"}), use_tqdm=False)[0]
    assert len(again.outputs[0].token_ids) == 4 and again.steering is not None
    alive(engine)


# ---- the receipt -------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES, ids=[str(p) for p in POLICIES])
def test_receipt_says_what_was_applied(engine, policy):
    out = engine.generate(["hello world the quick brown fox"], sp(_spec(policy), 5), use_tqdm=False)[0]
    receipt = out.steering
    prompt = len(out.prompt_token_ids)
    expected = {"all": prompt + 4, "prompt": prompt, "generated": 4, "last_prompt": 1}.get(
        policy if isinstance(policy, str) else "all")
    assert receipt.tokens_steered == (expected,)
    assert receipt.prompt_tokens == prompt and len(receipt.config_hash) == 64
    names = [c.vector for c in receipt.components]
    assert names == (["v2"] if isinstance(policy, str) else ["v2", "v3"])
    assert all(len(c.vector_hash) == 64 and c.layers == (0, 1, 2, 3) for c in receipt.components)
    body = receipt.to_dict()
    assert json.loads(json.dumps(body)) == body


def test_steered_tokens_rule():
    from cast_vllm.engine.resolved import ResolvedComponent, ResolvedSteering

    def resolved(*positions):
        return ResolvedSteering("k", tuple(ResolvedComponent("v", "h", "b", "s", 1.0, (0,), p, "add")
                                           for p in positions), 1)
    assert steered_tokens(resolved("all"), 10, 1) == 10       # the only generated token is never fed back
    assert steered_tokens(resolved("generated"), 10, 0) == 0
    assert steered_tokens(resolved("prompt", "generated"), 10, 5) == 14
    assert steered_tokens(resolved("last_prompt"), 1, 5) == 1


# ---- generated specs ---------------------------------------------------------------------
_names = st.sampled_from(["v0", "v1", "missing", "", "../v0", "v0\n", "ü" * 3, "x" * 300])
_values = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=20), st.lists(st.integers(-3, 40), max_size=6))
_component = st.fixed_dictionaries({"vector": _names}, optional={
    "scale": _values, "layers": _values, "positions": st.one_of(_values, st.sampled_from(["all", "prompt"])),
    "mode": st.one_of(_values, st.sampled_from(["add", "norm_preserving"])), "colour": _values})
_steering = st.one_of(_names, _component, st.lists(_component, max_size=4),
                      _component.map(json.dumps), st.text(max_size=40))
_extra = st.one_of(
    st.dictionaries(st.sampled_from(["steering", "steering_scale", "steering_layers", "steering_positions",
                                     "steering_mode", "steering_scal", "cast_resolved", "other"]),
                    st.one_of(_values, _steering), max_size=4),
    st.fixed_dictionaries({"steering": _steering}))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(extra=_extra)
def test_generated_specs_resolve_or_refuse_cleanly(engine, extra):
    admission = engine.llm_engine.input_processor._cast_admission
    try:
        resolved = admission.resolve(extra)
    except ValueError as exc:
        assert str(exc).startswith("invalid steering") and len(str(exc)) < 1000
        return
    if resolved is not None:
        assert 1 <= resolved.slots <= 2 and all(0 <= layer < 4 for c in resolved.components for layer in c.layers)


def test_engine_alive_after_generated_specs(engine):
    alive(engine)
