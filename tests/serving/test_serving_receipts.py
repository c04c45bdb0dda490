"""The steering receipt from the open server (issue 10: 5): in the JSON body and the
`x-cast-steering` header, per prompt, kept small for a large batch, at the end of a stream, through
the openai client, and absent from unsteered responses."""

import json

from servers import MAX_TOKENS, OPEN_PROMPT, completion, expected_steered

SERVER = "open"


def test_receipt_in_json_body_and_header(server, model_name):
    from cast_vllm import SteeringVector

    spec = {"steering": "v0", "steering_scale": 2.5, "steering_layers": [1, 2], "steering_positions": "generated"}
    r = completion(server, model_name, vllm_xargs=spec)
    assert r.status_code == 200
    body = r.json()
    (receipt,) = body["steering"]
    assert receipt["components"] == [{"vector": "v0", "layers": [1, 2], "scale": 2.5, "mode": "add",
                                      "positions": "generated", "vector_hash":
                                          SteeringVector.load(server.vector_dir / "v0.safetensors").content_hash()}]
    usage = body["usage"]
    assert receipt["prompt_tokens"] == usage["prompt_tokens"]
    assert receipt["tokens_steered"] == [expected_steered(usage["prompt_tokens"], usage["completion_tokens"],
                                                          "generated")]
    header = json.loads(r.headers["x-cast-steering"])
    assert header == [{k: v for k, v in receipt.items() if k != "tokens_steered"}]
    assert "x-cast-steering-omitted" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    again = completion(server, model_name, vllm_xargs=spec).json()["steering"][0]
    assert again["config_hash"] == receipt["config_hash"]
    other = completion(server, model_name, vllm_xargs={**spec, "steering_scale": 3.0}).json()["steering"][0]
    assert other["config_hash"] != receipt["config_hash"]


def test_receipt_per_prompt_in_prompt_order(server, model_name):
    prompts = ["hello world", "the capital of France is Paris and the capital of Spain is"]
    r = server.http("POST", "/v1/completions",
             json={"model": model_name, "prompt": prompts, "max_tokens": 3, "temperature": 0.0,
                   "return_token_ids": True, "steering": {"vector": "v1", "positions": "prompt"}})
    body = r.json()
    prompt_lens = [len(c["prompt_token_ids"]) for c in sorted(body["choices"], key=lambda c: c["index"])]
    assert prompt_lens[0] != prompt_lens[1]
    assert [rc["prompt_tokens"] for rc in body["steering"]] == prompt_lens
    assert [rc["tokens_steered"] for rc in body["steering"]] == [[n] for n in prompt_lens]
    assert [h["prompt_tokens"] for h in json.loads(r.headers["x-cast-steering"])] == prompt_lens


def test_receipt_header_of_a_large_batch_stays_small(client, model_name):
    """Forty steered prompts: the header keeps what fits in 8 KiB, the body has every receipt."""
    raw = client.completions.with_raw_response.create(model=model_name, prompt=[f"hello {i}" for i in range(40)],
                                                      max_tokens=1, temperature=0.0, extra_body={"steering": "v0"})
    body = raw.parse()
    header = json.loads(raw.headers["x-cast-steering"])
    assert len(raw.headers["x-cast-steering"]) <= 8192 and 0 < len(header) < 40
    assert int(raw.headers["x-cast-steering-omitted"]) == 40 - len(header)
    assert len(body.model_extra["steering"]) == 40 and len(body.choices) == 40
    assert header == [{k: v for k, v in r.items() if k != "tokens_steered"}
                      for r in body.model_extra["steering"][:len(header)]]


def test_receipt_in_stream_before_done(server, model_name):
    import requests

    with requests.post(f"{server.url}/v1/completions", stream=True, timeout=60,
                       json={"model": model_name, "prompt": OPEN_PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0,
                             "stream": True, "stream_options": {"include_usage": True},
                             "vllm_xargs": {"steering": "v0"}}) as r:
        assert r.status_code == 200
        header = json.loads(r.headers["x-cast-steering"])
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    last, usage_chunk, first = chunks[-1], chunks[-2], chunks[0]
    assert last["choices"] == [] and {k: last[k] for k in ("id", "object", "created", "model")} == \
        {k: first[k] for k in ("id", "object", "created", "model")}
    (receipt,) = last["steering"]
    usage = usage_chunk["usage"]
    assert receipt["tokens_steered"] == [expected_steered(usage["prompt_tokens"], usage["completion_tokens"])]
    assert header == [{k: v for k, v in receipt.items() if k != "tokens_steered"}]
    assert all("steering" not in c for c in chunks[:-1])


def test_receipt_with_the_openai_client(client, model_name):
    raw = client.completions.with_raw_response.create(model=model_name, prompt=OPEN_PROMPT, max_tokens=4,
                                                      temperature=0.0, extra_body={"steering": "v0"})
    completion_ = raw.parse()
    assert json.loads(raw.headers["x-cast-steering"])[0]["components"][0]["vector"] == "v0"
    assert completion_.model_extra["steering"][0]["tokens_steered"] == [
        expected_steered(completion_.usage.prompt_tokens, completion_.usage.completion_tokens)]
    stream = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": OPEN_PROMPT}],
                                            max_tokens=4, temperature=0.0, stream=True,
                                            extra_body={"vllm_xargs": {"steering": "v1"}})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices == [] and chunks[-1].object == "chat.completion.chunk"
    assert chunks[-1].model_extra["steering"][0]["components"][0]["vector"] == "v1"


def test_unsteered_responses_carry_no_receipt(server, model_name):
    import requests

    r = completion(server, model_name)
    assert r.status_code == 200 and not {h for h in r.headers if h.lower().startswith("x-cast")}
    assert b"steering" not in r.content and int(r.headers["content-length"]) == len(r.content)
    with requests.post(f"{server.url}/v1/completions", stream=True, timeout=60,
                       json={"model": model_name, "prompt": OPEN_PROMPT, "max_tokens": 4, "temperature": 0.0,
                             "stream": True}) as r:
        assert "x-cast-steering" not in r.headers
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]" and all(b"steering" not in e for e in events)
    assert json.loads(events[-2][len(b"data: "):])["choices"], "no extra chunk in an unsteered stream"
    r = completion(server, model_name, vllm_xargs={"steering": "missing"})
    assert r.status_code == 400 and "x-cast-steering" not in r.headers
