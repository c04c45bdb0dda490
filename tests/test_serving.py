"""`cast-vllm serve` end to end: a real server process on 127.0.0.1 (tiny Llama, float32, API key
set), the `openai` client, and offline `SteeredLLM` references computed in a separate process
(prefix caching off there, so each reference is computed fresh).

Run as a script (`python tests/test_serving.py reference JOBS OUT`) this file computes the
offline references; the tests start it in a subprocess while the server boots.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_models import random_vector
from test_serving_plugin import CHECK_IDS, CHECKS

API_KEY = "test-key-4f1c"
MAX_TOKENS = 8
MAX_MODEL_LEN = 256
SERVER_ARGS = ["--dtype", "float32", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager", "--block-size", "32",
               "--api-key", API_KEY, "--uvicorn-log-level", "warning", "--disable-uvicorn-access-log"]
SERVE_ARGS = ["--max-steering-vectors", "2", "--max-steering-scale", "100", "--max-upload-bytes", "65536"]

_WORDS = ("the capital of France is Paris and I loved this movie it was wonderful and moving but this film was "
          "terrible boring and far too long question what is two plus two answer four sentiment positive negative "
          "hello world the quick brown fox jumps over the lazy dog").split()


def _prompt(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n_words))


# Steering specs exactly as sent in `vllm_xargs` (flat values) and as offline `extra_args`.
SPECS = {
    "none": None,
    "v0": {"steering": "v0", "steering_scale": 2.0},
    "v1-layers-generated": {"steering": "v1", "steering_scale": 3.0, "steering_layers": [1, 2],
                            "steering_positions": "generated"},
    "v2-json-normpres": {"steering": json.dumps({"vector": "v2", "scale": 2.0, "mode": "norm_preserving"})},
    "v0+v3-json-split": {"steering": json.dumps([{"vector": "v0", "scale": 1.5, "positions": "prompt"},
                                                 {"vector": "v3", "scale": 1.5, "positions": "generated"}])},
    "v3-last-prompt": {"steering": "v3", "steering_scale": 4.0, "steering_positions": "last_prompt"},
}
RNG = random.Random(1234)
COMPLETION_PROMPTS = [_prompt(RNG, 6 + 2 * i) for i in range(4)]
CHAT_PROMPTS = [_prompt(RNG, 5 + i) for i in range(3)]
LONG_PROMPT = _prompt(RNG, 90)                     # several 32-token KV blocks
LOAD_PROMPTS = [_prompt(RNG, 25 + i % 7) for i in range(12)]  # >= one full block: prefix hits under load
LOAD_SPECS = list(SPECS)
LOAD_REQUESTS = 320
LOAD_CONCURRENCY = 32
UPLOAD_SPEC = {"steering": "up", "steering_scale": 2.5}


def _jobs() -> list[dict]:
    jobs = []
    for p in COMPLETION_PROMPTS + LOAD_PROMPTS + [LONG_PROMPT]:
        for spec in SPECS:
            jobs.append({"kind": "completion", "prompt": p, "spec": spec})
    for p in CHAT_PROMPTS:
        for spec in ("none", "v0", "v2-json-normpres"):
            jobs.append({"kind": "chat", "prompt": p, "spec": spec})
    jobs.append({"kind": "completion", "prompt": COMPLETION_PROMPTS[0], "spec": "up"})
    return jobs


def _spec(name: str):
    return UPLOAD_SPEC if name == "up" else SPECS[name]


def _key(kind: str, prompt: str, spec: str) -> str:
    return json.dumps([kind, prompt, spec])


# ---------------------------------------------------------------------------------------------
# Offline references (runs in a child process: never two vLLM engines in the pytest process)
# ---------------------------------------------------------------------------------------------
def _reference_main(model: str, vector_dir: str, out: str) -> None:
    from vllm import SamplingParams

    from cast_vllm import SteeredLLM

    llm = SteeredLLM(model, vector_dir=vector_dir, dtype="float32", enforce_eager=True,
                     max_model_len=MAX_MODEL_LEN, max_steering_vectors=2, max_steering_scale=100,
                     enable_prefix_caching=False)
    jobs = _jobs()

    def sp(spec):
        return SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0, extra_args=_spec(spec))

    comp = [j for j in jobs if j["kind"] == "completion"]
    chat = [j for j in jobs if j["kind"] == "chat"]
    results = {}
    outs = llm.generate([j["prompt"] for j in comp], [sp(j["spec"]) for j in comp], use_tqdm=False)
    for j, o in zip(comp, outs):
        results[_key("completion", j["prompt"], j["spec"])] = o.outputs[0].text
    outs = llm.chat([[{"role": "user", "content": j["prompt"]}] for j in chat], [sp(j["spec"]) for j in chat],
                    use_tqdm=False)
    for j, o in zip(chat, outs):
        results[_key("chat", j["prompt"], j["spec"])] = o.outputs[0].text
    # the long prompt with steering mixed in long requests is what the prefix-cache test replays
    Path(out).write_text(json.dumps(results))


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    import torch
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("serving")
    served, offline = root / "vectors", root / "offline-vectors"
    served.mkdir()
    offline.mkdir()
    for i in range(4):
        random_vector(i).save(served / f"v{i}.safetensors")
        shutil.copy(served / f"v{i}.safetensors", offline / f"v{i}.safetensors")
    random_vector(10).save(served / "busy.safetensors")
    random_vector(20).save(offline / "up.safetensors")          # uploaded to the server by a test
    random_vector(30, hidden=32).save(served / "small.safetensors")
    random_vector(31, layers=[9]).save(served / "deep.safetensors")
    bad = torch.randn(64)
    bad[3] = float("nan")
    save_file({"layer.0": bad}, str(served / "nan.safetensors"), metadata={"format": "cast-vllm/1"})
    (served / "junk.safetensors").write_bytes(pickle.dumps({"layer.0": [0.0] * 64}))
    return {"root": root, "served": served, "offline": offline}


@pytest.fixture(scope="module")
def stack(tiny_model_dir, dirs):
    """(server, references): the reference process computes while the server boots."""
    from cast_vllm.serving.launcher import ServerProcess

    model = str(tiny_model_dir("llama"))
    ref_out = dirs["root"] / "references.json"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    ref = subprocess.Popen([sys.executable, __file__, "reference", model, str(dirs["offline"]), str(ref_out)],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    server = ServerProcess(model, str(dirs["served"]), SERVER_ARGS, serve_args=SERVE_ARGS,
                           log_path=dirs["root"] / "server.log")
    try:
        server.start()
        log, _ = ref.communicate(timeout=300)
        assert ref.returncode == 0, log.decode(errors="replace")[-4000:]
        yield server, json.loads(ref_out.read_text())
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        server.stop()


@pytest.fixture(scope="module")
def server(stack):
    return stack[0]


@pytest.fixture(scope="module")
def refs(stack):
    return stack[1]


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_name(client):
    return client.models.list().data[0].id


def http(server, method, path, key=API_KEY, **kw):
    import requests

    headers = kw.pop("headers", {})
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.request(method, f"{server.url}{path}", headers=headers, timeout=60, **kw)


def metrics(server) -> dict[str, float]:
    text = http(server, "GET", "/metrics").text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eEinfNa]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def complete(client, model_name, prompt, spec, **kw):
    extra = {"vllm_xargs": spec} if spec else {}
    return client.completions.create(model=model_name, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0,
                                     extra_body=extra, **kw)


def chat(client, model_name, prompt, spec, **kw):
    extra = {"vllm_xargs": spec} if spec else {}
    return client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=MAX_TOKENS, temperature=0.0, extra_body=extra, **kw)


def good_request_succeeds(client, model_name, refs):
    got = complete(client, model_name, COMPLETION_PROMPTS[0], SPECS["v0"]).choices[0].text
    assert got == refs[_key("completion", COMPLETION_PROMPTS[0], "v0")]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_binds_loopback_by_default(server):
    import psutil

    listening = set()
    for proc in [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]:
        for c in proc.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port:
                listening.add(c.laddr.ip)
    assert listening == {"127.0.0.1"}


def test_completions_equal_offline(client, model_name, refs):
    differs = {name: False for name in SPECS if name != "none"}
    for prompt in COMPLETION_PROMPTS:
        plain = refs[_key("completion", prompt, "none")]
        for name, spec in SPECS.items():
            got = complete(client, model_name, prompt, spec).choices[0].text
            assert got == refs[_key("completion", prompt, name)], (prompt, name)
            if name != "none" and got != plain:
                differs[name] = True
    assert all(differs.values()), f"every spec must change some output: {differs}"


def test_chat_equal_offline(client, model_name, refs):
    for prompt in CHAT_PROMPTS:
        for name in ("none", "v0", "v2-json-normpres"):
            got = chat(client, model_name, prompt, SPECS[name]).choices[0].message.content
            assert got == refs[_key("chat", prompt, name)], (prompt, name)
    assert any(refs[_key("chat", p, "v0")] != refs[_key("chat", p, "none")] for p in CHAT_PROMPTS)


def test_streaming_gives_the_same_text(client, model_name, refs):
    for name in ("none", "v1-layers-generated", "v0+v3-json-split"):
        prompt = COMPLETION_PROMPTS[1]
        chunks = complete(client, model_name, prompt, SPECS[name], stream=True)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == refs[_key("completion", prompt, name)]
    for name in ("none", "v0"):
        prompt = CHAT_PROMPTS[0]
        chunks = chat(client, model_name, prompt, SPECS[name], stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == refs[_key("chat", prompt, name)]


def test_prefix_cache_isolated_over_http(server, client, model_name, refs):
    before = metrics(server).get("vllm:prefix_cache_hits_total", 0.0)
    for name in ("v0", "none", "v2-json-normpres", "v0", "none", "v3-last-prompt", "v2-json-normpres"):
        got = complete(client, model_name, LONG_PROMPT, SPECS[name]).choices[0].text
        assert got == refs[_key("completion", LONG_PROMPT, name)], name
    assert metrics(server)["vllm:prefix_cache_hits_total"] > before, "repeats must have hit the prefix cache"


BAD_XARGS = [
    ({"steering": "missing"}, "unknown steering vector 'missing'"),
    ({"steering": "v0", "steering_layers": [7]}, "out of range"),
    ({"steering": "v0", "steering_scale": "nan"}, "must be finite"),
    ({"steering": "v0", "steering_scale": "inf"}, "must be finite"),
    ({"steering": json.dumps({"vector": "v0", "scale": float("nan")})}, "must be finite"),
    ({"steering": "v0", "steering_scale": 1e9}, "exceeds the server limit"),
    ({"steering": "v0", "steering_mode": "multiply"}, "mode must be one of"),
    ({"steering": "v0", "steering_positions": "middle"}, "positions must be one of"),
    ({"steering": '{"vector": "v0", "scale": '}, "not valid JSON"),
    ({"steering": "../v0"}, "invalid vector name"),
    ({"steering": "/etc/passwd"}, "invalid vector name"),
    ({"steering": "small"}, "hidden size 32"),
    ({"steering": "nan"}, "NaN or Inf"),
    ({"steering": "junk"}, "not a safetensors file"),
    ({"steering": "deep"}, "out of range"),
    ({"steering_scale": 2.0}, "without 'steering'"),
    ({"steering": {"vector": "v0"}}, "vllm_xargs"),   # nested value: vLLM's own request validation
]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("xargs,message", BAD_XARGS, ids=[m for _, m in BAD_XARGS])
def test_bad_steering_is_400_then_server_serves(server, client, model_name, refs, xargs, message, stream):
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        out = complete(client, model_name, "hello world", xargs, stream=stream)
        list(out) if stream else None
    assert err.value.status_code == 400
    assert message in err.value.message
    good_request_succeeds(client, model_name, refs)


def test_bad_steering_in_chat_is_400(client, model_name, refs):
    import openai

    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="unknown steering vector"):
            chat(client, model_name, "hi", {"steering": "missing"}, stream=stream)
    good_request_succeeds(client, model_name, refs)


class _Boom:
    """Unpickling this would create a marker file: proof that uploads are never unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_bad_uploads_are_refused(server, client, model_name, refs, dirs, tmp_path):
    import io

    import torch
    from safetensors.torch import save as st_save

    marker = tmp_path / "unpickled"
    wrong_hidden = random_vector(40, hidden=32)
    out_of_range = random_vector(41, layers=[0, 9])
    nan = torch.randn(64)
    nan[0] = float("inf")
    torch_zip = io.BytesIO()
    torch.save({"layer.0": torch.randn(64)}, torch_zip)
    good = (dirs["offline"] / "up.safetensors").read_bytes()
    cases = [
        ("p1", pickle.dumps(_Boom(str(marker))), 400, "not a safetensors file"),
        ("p2", torch_zip.getvalue(), 400, "safetensors"),
        ("p3", st_save({"layer.0": torch.randn(32)}), 400, "hidden size 32"),
        ("p4", st_save({"layer.0": nan}), 400, "NaN or Inf"),
        ("p5", st_save({"weights": torch.randn(64)}), 400, "expected only 'layer.<i>'"),
        ("p6", st_save({f"layer.{i}": t for i, t in out_of_range.directions.items()}), 400, "out of range"),
        ("p7", st_save({f"layer.{i}": t for i, t in wrong_hidden.directions.items()}), 400, "hidden size"),
        ("../evil", good, 400, "invalid vector name"),
        ("a/b", good, 400, "invalid vector name"),
        ("big", good + b"\0" * 70_000, 413, "exceeds the limit"),
        ("", good, 400, "?name="),
    ]
    for name, data, status, message in cases:
        r = http(server, "POST", "/v1/steering/vectors", params={"name": name} if name else None, data=data,
                 headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == status, (name, r.text)
        assert message in r.json()["error"]["message"], (name, r.text)
        good_request_succeeds(client, model_name, refs)
    r = http(server, "POST", "/v1/steering/vectors", params={"name": "m"}, files={"file": ("m.safetensors", good)})
    assert r.status_code == 415 and "multipart" in r.json()["error"]["message"]
    assert not marker.exists(), "an upload was unpickled"
    names = {v["name"] for v in http(server, "GET", "/v1/steering/vectors").json()["data"]}
    assert not names & {"p1", "p2", "p3", "p4", "p5", "p6", "p7", "big", "evil"}
    assert not list(dirs["root"].glob("**/evil*"))


def test_upload_list_use_delete(server, client, model_name, refs, dirs):
    import openai

    listed = {v["name"]: v for v in http(server, "GET", "/v1/steering/vectors").json()["data"]}
    assert {"v0", "v1", "v2", "v3", "busy"} <= set(listed)
    assert listed["v1"]["layers"] == [0, 1, 2, 3] and listed["v1"]["hidden_size"] == 64
    assert listed["v1"]["source"] == "vector_dir" and listed["v1"]["metadata"]["method"] == "random-test"
    assert listed["small"]["usable"] is False and "hidden size 32" in listed["small"]["error"]
    assert "up" not in listed

    data = (dirs["offline"] / "up.safetensors").read_bytes()
    r = http(server, "POST", "/v1/steering/vectors", params={"name": "up"}, data=data,
             headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201, r.text
    assert r.json()["loaded"] is True and r.json()["source"] == "upload" and r.json()["layers"] == [0, 1, 2, 3]
    assert http(server, "GET", "/v1/steering/vectors/up").json()["name"] == "up"
    r = http(server, "POST", "/v1/steering/vectors", params={"name": "up"}, data=data,
             headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 409 and "already exists" in r.json()["error"]["message"]

    got = complete(client, model_name, COMPLETION_PROMPTS[0], UPLOAD_SPEC).choices[0].text
    assert got == refs[_key("completion", COMPLETION_PROMPTS[0], "up")]
    assert got != refs[_key("completion", COMPLETION_PROMPTS[0], "none")]

    r = http(server, "DELETE", "/v1/steering/vectors/up")
    assert r.status_code == 200 and r.json()["deleted"] is True
    with pytest.raises(openai.BadRequestError, match="unknown steering vector 'up'"):
        complete(client, model_name, COMPLETION_PROMPTS[0], UPLOAD_SPEC)
    assert http(server, "GET", "/v1/steering/vectors/up").status_code == 404
    assert http(server, "DELETE", "/v1/steering/vectors/up").status_code == 404
    assert http(server, "DELETE", "/v1/steering/vectors/..").status_code in (400, 404)
    assert "up" not in {v["name"] for v in http(server, "GET", "/v1/steering/vectors").json()["data"]}
    good_request_succeeds(client, model_name, refs)


def test_delete_refused_while_in_flight_and_directory_vectors_only_hidden(server, client, model_name, dirs):
    import openai

    stream = client.completions.create(model=model_name, prompt="hello world", max_tokens=240, temperature=0.0,
                                       stream=True, extra_body={"ignore_eos": True,
                                                                "vllm_xargs": {"steering": "busy"}})
    first = next(iter(stream))
    assert first.choices
    r = http(server, "DELETE", "/v1/steering/vectors/busy")
    assert r.status_code == 409 and "in flight" in r.json()["error"]["message"], r.text
    assert http(server, "GET", "/v1/steering/vectors/busy").json()["in_flight"] == 1
    n = sum(1 for _ in stream)
    assert n > 100  # the request was still running when DELETE came

    r = http(server, "DELETE", "/v1/steering/vectors/busy")
    assert r.status_code == 200 and r.json()["source"] == "vector_dir"
    assert (dirs["served"] / "busy.safetensors").is_file(), "a --vector-dir file is never deleted"
    with pytest.raises(openai.BadRequestError, match="unknown steering vector 'busy'"):
        complete(client, model_name, "hello", {"steering": "busy"})
    r = http(server, "POST", "/v1/steering/vectors", json={"name": "busy"})
    assert r.status_code == 200 and r.json()["loaded"] is True, r.text
    assert complete(client, model_name, "hello", {"steering": "busy"}).usage.completion_tokens == MAX_TOKENS
    assert http(server, "POST", "/v1/steering/vectors", json={"name": "nothere"}).status_code == 404
    r = http(server, "POST", "/v1/steering/vectors", json={"name": "small"})
    assert r.status_code == 400 and "hidden size 32" in r.json()["error"]["message"]


def test_api_key_enforced_on_every_route(server):
    routes = [("POST", "/v1/completions", {"json": {"model": "x", "prompt": "hi", "max_tokens": 1}}),
              ("POST", "/v1/chat/completions", {"json": {"model": "x", "messages": []}}),
              ("GET", "/v1/models", {}),
              ("GET", "/v1/steering/vectors", {}),
              ("GET", "/v1/steering/vectors/v0", {}),
              ("POST", "/v1/steering/vectors", {"json": {"name": "v0"}}),
              ("DELETE", "/v1/steering/vectors/v0", {}),
              ("GET", "/metrics", {}),
              ("POST", "/tokenize", {"json": {"model": "x", "prompt": "hi"}}),
              ("GET", "/version", {})]
    for key in (None, "wrong-key"):
        for method, path, kw in routes:
            assert http(server, method, path, key=key, **kw).status_code == 401, (key, method, path)
    assert http(server, "GET", "/health", key=None).status_code == 200
    assert http(server, "GET", "/v1/steering/vectors/v0").status_code == 200  # DELETE above was refused


@pytest.mark.parametrize("check", CHECKS, ids=CHECK_IDS)
def test_same_checks_as_plain_vllm_serve(server, model_name, check):
    """What test_serving_plugin.py checks on plain `vllm serve`, on `cast-vllm serve`: one server."""
    check(server, API_KEY, model_name)


def test_mixed_load_equals_offline_and_counts(server, model_name, refs):
    from openai import AsyncOpenAI

    rng = random.Random(7)
    plan = [(rng.choice(LOAD_PROMPTS), rng.choice(LOAD_SPECS), i % 8 == 0) for i in range(LOAD_REQUESTS)]
    steered = sum(1 for _, spec, _ in plan if spec != "none")
    before = metrics(server)
    seen_in_flight = []

    async def run():
        client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        queue = asyncio.Queue()
        for item in plan:
            queue.put_nowait(item)
        failures, mismatches, done = [], [], asyncio.Event()

        async def one(prompt, spec, stream):
            extra = {"vllm_xargs": SPECS[spec]} if SPECS[spec] else {}
            kw = dict(model=model_name, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, extra_body=extra)
            if stream:
                return "".join([c.choices[0].text async for c in await client.completions.create(stream=True, **kw)
                                if c.choices])
            return (await client.completions.create(**kw)).choices[0].text

        async def worker():
            while not queue.empty():
                prompt, spec, stream = queue.get_nowait()
                try:
                    text = await one(prompt, spec, stream)
                except Exception as exc:  # counted, reported below
                    failures.append((spec, repr(exc)))
                    continue
                if text != refs[_key("completion", prompt, spec)]:
                    mismatches.append((prompt, spec, text))

        async def scrape():
            while not done.is_set():
                m = await asyncio.to_thread(metrics, server)
                seen_in_flight.append(m["cast_steering_vectors_in_flight"])
                await asyncio.sleep(0.2)

        scraper = asyncio.create_task(scrape())
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(LOAD_CONCURRENCY))), timeout=240)
        done.set()
        await scraper
        await client.close()
        return failures, mismatches

    t0 = time.monotonic()
    failures, mismatches = asyncio.run(run())
    elapsed = time.monotonic() - t0
    assert not failures, failures[:5]
    assert not mismatches, f"{len(mismatches)} responses differ from offline, e.g. {mismatches[:3]}"
    assert server.healthy()
    after = metrics(server)
    delta = {k: after[k] - before.get(k, 0.0) for k in after if k.startswith("cast_steering_")}
    assert delta["cast_steering_requests_total"] == steered
    assert delta["cast_steering_rejected_requests_total"] == 0
    assert delta["cast_steering_slot_loads_total"] > 0
    assert delta["cast_steering_slot_evictions_total"] > 0, "5 steering configs on 2 slots must evict"
    assert delta["cast_steering_slot_waits_total"] > 0, "5 steering configs on 2 slots must make requests wait"
    assert after["cast_steering_requests_in_flight"] == 0 and after["cast_steering_vectors_in_flight"] == 0
    assert after["cast_steering_slots"] == 2
    assert max(seen_in_flight) >= 2, seen_in_flight
    print(f"mixed load: {LOAD_REQUESTS} requests in {elapsed:.1f}s, {steered} steered, "
          f"evictions +{delta['cast_steering_slot_evictions_total']:.0f}, "
          f"waits +{delta['cast_steering_slot_waits_total']:.0f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "reference":
        _reference_main(*sys.argv[2:])
    else:
        sys.exit("usage: test_serving.py reference MODEL VECTOR_DIR OUT.json")
