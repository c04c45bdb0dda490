"""`cast-vllm serve` never crashes and never answers silently unsteered (issue 10).

One real server for the module (tiny Llama, float32, no --api-key: the case browsers can reach),
driven over raw HTTP and with the `openai` client: upload content types, steering routes
closed to other origins, limits, the top-level `steering` field, steered beam search, the
steering receipt, and a property-based run of generated specs and malformed uploads.
"""

from __future__ import annotations

import json
import struct
import threading
import time

import pytest
from tiny_models import random_vector

MAX_TOKENS = 8
# --allowed-origins '["*"]': the most permissive CORS an operator can configure (vLLM's default is none)
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", "256", "--enforce-eager", "--block-size", "32",
               "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log", "--allowed-origins", '["*"]']
MAX_UPLOADED = 3
SERVE_ARGS = ["--max-steering-vectors", "4", "--max-steering-scale", "100", "--max-upload-bytes", "65536",
              "--max-uploaded-vectors", str(MAX_UPLOADED)]
PROMPT = "the quick brown fox jumps over the lazy dog and"
STEER = {"vector": "v0", "scale": 4.0}
FOREIGN = "http://evil.example"


@pytest.fixture(scope="module")
def vector_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hardening-vectors")
    for i in range(2):
        random_vector(i).save(d / f"v{i}.safetensors")
    return d


@pytest.fixture(scope="module")
def server(tiny_model_dir, vector_dir, tmp_path_factory):
    from cast_vllm.serving.launcher import ServerProcess

    log = tmp_path_factory.mktemp("hardening-log") / "server.log"
    with ServerProcess(str(tiny_model_dir("llama")), str(vector_dir), SERVER_ARGS, serve_args=SERVE_ARGS,
                       log_path=log) as proc:
        yield proc


@pytest.fixture(scope="module")
def model_name(server):
    return http(server, "GET", "/v1/models").json()["data"][0]["id"]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def good_upload(vector_dir) -> bytes:
    return (vector_dir / "v1.safetensors").read_bytes()


def http(server, method, path, **kw):
    import requests

    return requests.request(method, f"{server.url}{path}", timeout=60, **kw)


def upload(server, name, data, content_type="application/octet-stream", **params):
    return http(server, "POST", "/v1/steering/vectors", params={"name": name, **params}, data=data,
                headers={"Content-Type": content_type} if content_type else {})


def completion(server, model_name, **body):
    return http(server, "POST", "/v1/completions",
                json={"model": model_name, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0, **body})


def text_of(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def expected_steered(prompt_tokens: int, output_tokens: int, positions: str = "all") -> int:
    """Forwarded tokens a policy steers: every prompt token, and each generated token but the last."""
    generated = max(output_tokens - 1, 0)
    return {"all": prompt_tokens + generated, "prompt": prompt_tokens, "generated": generated,
            "last_prompt": 1}[positions]


def error_message(response) -> str:
    return response.json()["error"]["message"]


# ---------------------------------------------------------------------------------------------
# Uploads: content type (1) and steering routes closed to other origins (2)
# ---------------------------------------------------------------------------------------------
def test_upload_needs_octet_stream(server, good_upload):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        r = upload(server, "typed", good_upload, content_type)
        assert r.status_code == 415, (content_type, r.text)
        assert "application/octet-stream" in error_message(r)
    r = http(server, "POST", "/v1/steering/vectors", params={"name": "typed"},
             files={"file": ("typed.safetensors", good_upload)})
    assert r.status_code == 415 and "multipart" in error_message(r)
    assert http(server, "GET", "/v1/steering/vectors/typed").status_code == 404


def test_foreign_page_cannot_replace_a_vector(server, good_upload):
    """What a web page can send without a preflight: text/plain, its own Origin, overwrite=true."""
    before = http(server, "GET", "/v1/steering/vectors/v0").json()
    for content_type in ("text/plain", "application/octet-stream"):
        r = http(server, "POST", "/v1/steering/vectors", params={"name": "v0", "overwrite": "true"},
                 data=good_upload, headers={"Content-Type": content_type, "Origin": FOREIGN})
        assert r.status_code == 403, r.text
        assert "cross-origin requests to steering routes are refused" in error_message(r)
    r = http(server, "POST", "/v1/steering/vectors", json={"name": "v0"}, headers={"Origin": FOREIGN})
    assert r.status_code == 403
    r = http(server, "DELETE", "/v1/steering/vectors/v0", headers={"Origin": "null"})
    assert r.status_code == 403
    after = http(server, "GET", "/v1/steering/vectors/v0").json()
    assert after["source"] == before["source"] == "vector_dir" and after["metadata"] == before["metadata"]


def test_same_origin_and_originless_uploads_work(server, good_upload):
    r = upload(server, "same-origin", good_upload)
    assert r.status_code == 201, r.text
    r = http(server, "POST", "/v1/steering/vectors", params={"name": "same-origin", "overwrite": "true"},
             data=good_upload, headers={"Content-Type": "application/octet-stream",
                                        "Origin": f"http://127.0.0.1:{server.port}"})
    assert r.status_code == 201, r.text
    assert http(server, "DELETE", "/v1/steering/vectors/same-origin",
                headers={"Origin": f"http://127.0.0.1:{server.port}"}).status_code == 200


def test_no_cors_on_steering_routes(server):
    preflight = {"Origin": FOREIGN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for path in ("/v1/steering/vectors", "/v1/steering/vectors/v0"):
        r = http(server, "OPTIONS", path, headers=preflight)
        assert r.status_code == 403, (path, r.status_code)
        assert not [h for h in r.headers if h.lower().startswith("access-control-allow")], r.headers
    r = http(server, "GET", "/v1/steering/vectors", headers={"Origin": FOREIGN})
    assert r.status_code == 200 and "access-control-allow-origin" not in {h.lower() for h in r.headers}
    assert http(server, "DELETE", "/v1/steering/vectors/v0", headers={"Origin": FOREIGN}).status_code == 403
    # the OpenAI routes keep vLLM's own CORS (--allowed-origins)
    r = http(server, "OPTIONS", "/v1/completions", headers=preflight)
    assert r.status_code == 200 and r.headers.get("access-control-allow-origin") == "*"
    r = http(server, "GET", "/v1/models", headers={"Origin": FOREIGN})
    assert r.headers.get("access-control-allow-origin") == "*"


# ---------------------------------------------------------------------------------------------
# Limits (3)
# ---------------------------------------------------------------------------------------------
def test_long_vector_names_are_400(server, model_name, good_upload):
    name = "n" * 300
    r = upload(server, name, good_upload)
    assert r.status_code == 400 and "exceeds the limit of 128" in error_message(r), r.text
    r = http(server, "GET", f"/v1/steering/vectors/{name}")
    assert r.status_code == 400 and "128" in error_message(r)
    assert http(server, "DELETE", f"/v1/steering/vectors/{name}").status_code == 400
    assert http(server, "POST", "/v1/steering/vectors", json={"name": name}).status_code == 400
    r = completion(server, model_name, vllm_xargs={"steering": name})
    assert r.status_code == 400, r.text
    assert upload(server, "n" * 128, good_upload).status_code == 201
    assert http(server, "DELETE", f"/v1/steering/vectors/{'n' * 128}").status_code == 200


def test_uploaded_vector_count_is_limited(server, good_upload):
    names = [f"count{i}" for i in range(MAX_UPLOADED)]
    try:
        for name in names:
            assert upload(server, name, good_upload).status_code == 201
        r = upload(server, "count-extra", good_upload)
        assert r.status_code == 409 and "--max-uploaded-vectors" in error_message(r), r.text
        assert upload(server, names[0], good_upload, overwrite="true").status_code == 201  # a replacement
        assert http(server, "DELETE", f"/v1/steering/vectors/{names[0]}").status_code == 200
        assert upload(server, "count-extra", good_upload).status_code == 201
        names.append("count-extra")
    finally:
        for name in names:
            http(server, "DELETE", f"/v1/steering/vectors/{name}")
    assert not {v["name"] for v in http(server, "GET", "/v1/steering/vectors").json()["data"]} & set(names)


def test_concurrent_uploads_are_limited(server):
    """Four bodies held open fill the upload buffers; a fifth upload is 429 until one ends."""
    import requests

    release = threading.Event()
    results: list[int] = []

    def slow_body():
        yield b"\x08\x00\x00\x00\x00\x00\x00\x00"
        release.wait(30)
        yield b"{}"

    def slow_upload(i):
        r = requests.post(f"{server.url}/v1/steering/vectors", params={"name": f"slow{i}"}, data=slow_body(),
                          headers={"Content-Type": "application/octet-stream"}, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=slow_upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline, status = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            r = upload(server, "fifth", b"not a safetensors file")
            status = r.status_code
            if status == 429:
                assert "--max-concurrent-uploads 4" in error_message(r)
                break
            assert status == 400, r.text  # buffers free: refused for its bytes
            time.sleep(0.1)
        assert status == 429
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert results == [400] * 4
    assert upload(server, "fifth", b"not a safetensors file").status_code == 400


def test_load_by_name_body_is_limited(server):
    r = http(server, "POST", "/v1/steering/vectors", data=json.dumps({"name": "v0", "pad": "x" * 70_000}),
             headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "JSON body" in error_message(r)


# ---------------------------------------------------------------------------------------------
# Never silently unsteered (4)
# ---------------------------------------------------------------------------------------------
def test_top_level_steering_means_vllm_xargs_steering(server, model_name):
    plain = text_of(completion(server, model_name))
    via_xargs = text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)}))
    assert via_xargs != plain, "the test vector must change the greedy answer"
    assert text_of(completion(server, model_name, steering=STEER)) == via_xargs
    assert text_of(completion(server, model_name, steering=[STEER])) == via_xargs
    assert text_of(completion(server, model_name, steering="v0", vllm_xargs={"steering_scale": 4.0})) == via_xargs
    assert text_of(completion(server, model_name, steering=None)) == plain
    chat = {"model": model_name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS,
            "temperature": 0.0}
    top = http(server, "POST", "/v1/chat/completions", json={**chat, "steering": STEER}).json()
    xargs = http(server, "POST", "/v1/chat/completions",
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


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_misspelt_and_reserved_keys_are_400_before_streaming(server, model_name, stream):
    """No steering key at all still goes through admission: a typo is not an unsteered answer."""
    r = completion(server, model_name, stream=stream, vllm_xargs={"steerng": "v0"})
    assert r.status_code == 400 and "did you mean 'steering'" in error_message(r), r.text
    r = completion(server, model_name, stream=stream, vllm_xargs={"cast_resolved": "forged"})
    assert r.status_code == 400 and "reserved" in error_message(r), r.text


def test_steered_beam_search_is_refused(server, model_name):
    cases = ['"use_beam_search": true, "steering": %s' % json.dumps(STEER),
             '"use_beam_search": true, "vllm_xargs": {"steering": "v0"}',
             '"use_beam_search": "yes", "vllm_xargs": {"steering": "v0", "steering_scale": 2}',
             r'"use_be\u0061m_search": true, "\u0073teering": "v0"']  # escaped keys hide both words
    for fields in cases:
        body = '{"model": %s, "prompt": "hi", "max_tokens": 2, "n": 2, %s}' % (json.dumps(model_name), fields)
        r = http(server, "POST", "/v1/completions", data=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "beam search cannot be steered" in error_message(r), (fields, r.text)
    r = http(server, "POST", "/v1/chat/completions",
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


# ---------------------------------------------------------------------------------------------
# The steering receipt (5)
# ---------------------------------------------------------------------------------------------
def test_receipt_in_json_body_and_header(server, model_name, vector_dir):
    from cast_vllm import SteeringVector

    spec = {"steering": "v0", "steering_scale": 2.5, "steering_layers": [1, 2], "steering_positions": "generated"}
    r = completion(server, model_name, vllm_xargs=spec)
    assert r.status_code == 200
    body = r.json()
    (receipt,) = body["steering"]
    assert receipt["components"] == [{"vector": "v0", "layers": [1, 2], "scale": 2.5, "mode": "add",
                                      "positions": "generated", "vector_hash":
                                          SteeringVector.load(vector_dir / "v0.safetensors").content_hash()}]
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
    r = http(server, "POST", "/v1/completions",
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
                       json={"model": model_name, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0.0,
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
    raw = client.completions.with_raw_response.create(model=model_name, prompt=PROMPT, max_tokens=4,
                                                      temperature=0.0, extra_body={"steering": "v0"})
    completion_ = raw.parse()
    assert json.loads(raw.headers["x-cast-steering"])[0]["components"][0]["vector"] == "v0"
    assert completion_.model_extra["steering"][0]["tokens_steered"] == [
        expected_steered(completion_.usage.prompt_tokens, completion_.usage.completion_tokens)]
    stream = client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": PROMPT}],
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
                       json={"model": model_name, "prompt": PROMPT, "max_tokens": 4, "temperature": 0.0,
                             "stream": True}) as r:
        assert "x-cast-steering" not in r.headers
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == b"data: [DONE]" and all(b"steering" not in e for e in events)
    assert json.loads(events[-2][len(b"data: "):])["choices"], "no extra chunk in an unsteered stream"
    r = completion(server, model_name, vllm_xargs={"steering": "missing"})
    assert r.status_code == 400 and "x-cast-steering" not in r.headers


# ---------------------------------------------------------------------------------------------
# Property-based: generated specs and malformed uploads (7). Last: it uploads "fuzz".
# ---------------------------------------------------------------------------------------------
def _json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=12)


def _steering_specs():
    from hypothesis import strategies as st

    names = st.one_of(st.sampled_from(["v0", "v1", "missing", "../v0", "", "n" * 300]),
                      st.text(min_size=1, max_size=200))
    component = st.fixed_dictionaries(
        {"vector": names},
        optional={"scale": st.one_of(st.floats(), st.integers(), st.text(max_size=8), st.sampled_from(["1e400"])),
                  "layers": st.one_of(st.lists(st.integers(min_value=-5, max_value=10 ** 12), max_size=6),
                                      st.text(max_size=10)),
                  "positions": st.sampled_from(["all", "prompt", "generated", "last_prompt", "middle"]),
                  "mode": st.sampled_from(["add", "norm_preserving", "multiply"])})
    spec = st.one_of(names, component, st.lists(component, max_size=20), _json_values())
    flat_value = st.one_of(st.integers(min_value=-(10 ** 400), max_value=10 ** 400), st.floats(), st.text(max_size=30),
                           st.lists(st.integers(min_value=-5, max_value=40), max_size=5))
    keys = st.one_of(st.sampled_from(["steering", "steering_scale", "steering_layers", "steering_positions",
                                      "steering_mode", "steerng", "cast_resolved", "cast_x", "seed"]),
                     st.text(max_size=12))
    xargs = st.dictionaries(keys, st.one_of(flat_value, spec.map(json.dumps), _json_values()), max_size=5)
    return st.fixed_dictionaries({}, optional={"vllm_xargs": st.one_of(xargs, _json_values()), "steering": spec,
                                               "use_beam_search": st.booleans()})


def _safetensors_bodies():
    from hypothesis import strategies as st

    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F64", "X"]),
        "shape": st.lists(st.integers(min_value=-2, max_value=2 ** 40), max_size=3),
        "data_offsets": st.lists(st.integers(min_value=-1, max_value=2 ** 40), min_size=0, max_size=3)})
    header = st.dictionaries(st.sampled_from(["layer.0", "layer.3", "layer.99", "layer.-1", "direction.1", "x",
                                              "__metadata__"]),
                             st.one_of(entry, _json_values()), max_size=4)

    def assemble(h, data, length_delta):
        raw = json.dumps(h).encode()
        return struct.pack("<Q", max(len(raw) + length_delta, 0)) + raw + data

    structured = st.builds(assemble, header, st.binary(max_size=600),
                           st.sampled_from([0, 0, 0, -1, 1, 2 ** 40]))
    return st.one_of(structured, st.binary(max_size=400))


def _stream_errors(content: bytes) -> list:
    events = [line[len(b"data: "):] for line in content.split(b"\n\n") if line.startswith(b"data: {")]
    return [e for e in map(json.loads, events) if "error" in e]


def test_property_no_input_breaks_the_server(server, model_name, good_upload):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    steered_before = text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)}))
    seen: dict[int, int] = {}

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_steering_specs(), st.booleans())
    def specs(extra, stream):
        body = {"model": model_name, "prompt": "hello", "max_tokens": 1, "temperature": 0.0, "stream": stream,
                **extra}
        r = http(server, "POST", "/v1/completions", data=json.dumps(body), headers={"Content-Type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text)
        if r.status_code == 200 and not stream:
            assert r.json()["choices"]
        if r.status_code == 200 and stream:
            assert r.content.endswith(b"data: [DONE]\n\n") and not _stream_errors(r.content), (body, r.content)

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_safetensors_bodies())
    def uploads(data):
        r = upload(server, "fuzz", data, overwrite="true")
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (201, 400, 413), (data[:200], r.text)

    specs()
    uploads()
    assert seen.get(400, 0) > 0 and seen.get(200, 0) > 0, seen
    http(server, "DELETE", "/v1/steering/vectors/fuzz")
    assert server.healthy()
    assert text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)})) == steered_before
    assert upload(server, "after-fuzz", good_upload).status_code == 201
    assert http(server, "DELETE", "/v1/steering/vectors/after-fuzz").status_code == 200
