"""Never silently unsteered on the open server (issue 10: 4): the top-level `steering` field means
`vllm_xargs` steering, steered beam search is refused, and n = 2 steers both choices. (Misspelt
and reserved `vllm_xargs` keys are cases of tests/bad_inputs.py: test_serving_bad_inputs.py.)"""

import json

from servers import MAX_TOKENS, OPEN_PROMPT, STEER, completion, error_message, expected_steered, text_of

SERVER = "open"


def test_top_level_steering_means_vllm_xargs_steering(server, model_name):
    plain = text_of(completion(server, model_name))
    via_xargs = text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)}))
    assert via_xargs != plain, "the test vector must change the greedy answer"
    assert text_of(completion(server, model_name, steering=STEER)) == via_xargs
    assert text_of(completion(server, model_name, steering=[STEER])) == via_xargs
    assert text_of(completion(server, model_name, steering="v0", vllm_xargs={"steering_scale": 4.0})) == via_xargs
    assert text_of(completion(server, model_name, steering=None)) == plain
    chat = {"model": model_name, "messages": [{"role": "user", "content": OPEN_PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0}
    top = server.http("POST", "/v1/chat/completions", json={**chat, "steering": STEER}).json()
    xargs = server.http("POST", "/v1/chat/completions",
                 json={**chat, "vllm_xargs": {"steering": json.dumps(STEER)}}).json()
    assert top["choices"][0]["message"] == xargs["choices"][0]["message"]
    assert top["steering"] == xargs["steering"]


def test_top_level_steering_errors_are_400(server, model_name):
    r = completion(server, model_name, steering=STEER, vllm_xargs={"steering": "v1"})
    assert r.status_code == 400 and "not both" in error_message(r)
    r = completion(server, model_name, steering={"vector": "missing"})
    assert r.status_code == 400 and "unknown steering vector 'missing'" in error_message(r)
    r = completion(server, model_name, steering=STEER, vllm_xargs="steering")
    assert r.status_code == 400


def test_steered_beam_search_is_refused(server, model_name):
    cases = ['"use_beam_search": true, "steering": %s' % json.dumps(STEER),
             '"use_beam_search": true, "vllm_xargs": {"steering": "v0"}',
             '"use_beam_search": "yes", "vllm_xargs": {"steering": "v0", "steering_scale": 2}',
             r'"use_be\u0061m_search": true, "\u0073teering": "v0"']  # escaped keys hide both words
    for fields in cases:
        body = '{"model": %s, "prompt": "hi", "max_tokens": 2, "n": 2, %s}' % (json.dumps(model_name), fields)
        r = server.http("POST", "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "beam search cannot be steered" in error_message(r), (fields, r.text)
    r = server.http("POST", "/v1/chat/completions",
             json={"model": model_name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                   "use_beam_search": True, "n": 2, "steering": "v0"})
    assert r.status_code == 400 and "beam search" in error_message(r)
    r = completion(server, model_name, use_beam_search=True, n=2, max_tokens=2)  # unsteered beam search still works
    assert r.status_code == 200 and len(r.json()["choices"]) == 2 and "steering" not in r.json()


def test_n2_steers_both_choices(server, model_name):
    """Child requests keep the steering: each choice equals the steered n=1 run with its seed."""
    common = dict(temperature=1.0, seed=1234, ignore_eos=True)
    steered = completion(server, model_name, n=2, steering=STEER, **common).json()
    plain = completion(server, model_name, n=2, **common).json()
    singles = [text_of(completion(server, model_name, steering=STEER, **{**common, "seed": 1234 + i}))
               for i in range(2)]
    texts = [c["text"] for c in sorted(steered["choices"], key=lambda c: c["index"])]
    plain_texts = [c["text"] for c in sorted(plain["choices"], key=lambda c: c["index"])]
    assert texts == singles
    assert all(s != p for s, p in zip(texts, plain_texts)), (texts, plain_texts)
    (receipt,) = steered["steering"]
    prompt_tokens = steered["usage"]["prompt_tokens"]
    assert receipt["prompt_tokens"] == prompt_tokens
    assert receipt["tokens_steered"] == [expected_steered(prompt_tokens, MAX_TOKENS)] * 2
