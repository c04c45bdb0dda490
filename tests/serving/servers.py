"""The servers the tests in this folder talk to, and how they talk to them.

A test module names its server in ``SERVER``; the ``server`` fixture (conftest.py) starts it once
for all the modules that name it (they sort next to each other) and keeps one server at a time:

- ``keyed``: `cast-vllm serve` with an API key, 2 steering slots, scale limit 100, 64 KiB uploads,
  the vectors of tests/bad_inputs.py and v1-v3, busy; checked against offline references
  (offline_references.py), computed while it boots;
- ``open``: `cast-vllm serve` without an API key (what a browser can reach) and the most permissive
  CORS (``--allowed-origins '["*"]'``), 4 slots, at most 3 uploaded vectors; vectors v0 and v1;
- ``plain``: vLLM's own server, the steering architecture and the ``cast_*`` settings in
  ``--hf-overrides``, ``VLLM_PLUGINS=cast_vllm``; vector v0.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import offline_references as offline
from tiny_models import SERVER_ARGS, random_vector, save_vectors

API_KEY = "test-key-4f1c"
MAX_TOKENS = offline.MAX_TOKENS     # what the tests' completions ask for
MAX_UPLOADED = 3                    # the open server's --max-uploaded-vectors
_OWN = object()


@dataclass
class Served:
    """A running test server: its process, API key, folders and (keyed) offline references."""

    process: object                 # cast_vllm.serving.launcher.ServerProcess
    key: str | None
    vector_dir: Path
    upload_dir: Path | None = None
    refs: dict = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The server's folder: its vectors, log and (keyed) offline vectors and references."""
        return self.vector_dir.parent

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def port(self) -> int:
        return self.process.port

    def healthy(self) -> bool:
        return self.process.healthy()

    def http(self, method: str, path: str, key=_OWN, **kw):
        """A raw request; with the server's own API key unless ``key`` says otherwise (None: none)."""
        import requests

        key = self.key if key is _OWN else key
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kw)

    def upload(self, name: str, data: bytes, content_type: str | None = "application/octet-stream", **params):
        return self.http("POST", "/v1/steering/vectors", params={"name": name, **params} if name else None,
                         data=data, headers={"Content-Type": content_type} if content_type else {})

    def metrics(self) -> dict[str, float]:
        """The /metrics series, summed over their labels."""
        out = {}
        for line in self.http("GET", "/metrics").text.splitlines():
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([-+0-9.eEinfNa]+)$", line)
            if m:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
        return out


def error_message(response) -> str:
    return response.json()["error"]["message"]


def _process(model: Path, vector_dir: Path, root: Path, args: list[str], **kw):
    from cast_vllm.serving.launcher import ServerProcess

    return ServerProcess(str(model), str(vector_dir), [*SERVER_ARGS, *args], log_path=root / "server.log", **kw)


@contextlib.contextmanager
def keyed(model: Path, root: Path):
    from bad_inputs import save_vectors_for_bad_inputs

    served, references = root / "vectors", root / "offline-vectors"
    save_vectors_for_bad_inputs(served)
    save_vectors(served, {"v1": random_vector(1), "v2": random_vector(2), "v3": random_vector(3),
                          "busy": random_vector(10)})
    save_vectors(references, {"up": random_vector(20)})
    for i in range(4):
        shutil.copy(served / f"v{i}.safetensors", references / f"v{i}.safetensors")
    out = root / "references.json"
    ref = subprocess.Popen([sys.executable, offline.__file__, str(model), str(references), str(out)],
                           env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    serve_args = ["--max-steering-vectors", str(offline.MAX_STEERING_VECTORS),
                  "--max-steering-scale", str(offline.MAX_STEERING_SCALE), "--max-upload-bytes", "65536"]
    try:
        with _process(model, served, root, ["--api-key", API_KEY], serve_args=serve_args) as process:
            log, _ = ref.communicate(timeout=300)
            assert ref.returncode == 0, log.decode(errors="replace")[-4000:]
            yield Served(process, API_KEY, served, refs=json.loads(out.read_text()))
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()


@contextlib.contextmanager
def open_(model: Path, root: Path):
    vector_dir = save_vectors(root / "vectors", {"v0": random_vector(0), "v1": random_vector(1)})
    serve_args = ["--max-steering-vectors", "4", "--max-steering-scale", "100", "--max-upload-bytes", "65536",
                  "--max-uploaded-vectors", str(MAX_UPLOADED)]
    with _process(model, vector_dir, root, ["--allowed-origins", '["*"]'], serve_args=serve_args) as process:
        yield Served(process, None, vector_dir)


@contextlib.contextmanager
def plain(model: Path, root: Path):
    from cast_vllm.serving.plugin import WORKER_EXTENSION

    vector_dir = save_vectors(root / "vectors", {"v0": random_vector(0)})
    upload_dir = root / "uploads"
    upload_dir.mkdir()
    overrides = {"architectures": ["CastLlamaForCausalLM"], "cast_vector_dirs": [str(vector_dir)],
                 "cast_upload_dir": str(upload_dir), "cast_max_steering_vectors": 2, "cast_max_scale": 100,
                 "cast_max_upload_bytes": 65536, "cast_max_uploaded_vectors": 1}
    args = ["--kv-cache-memory-bytes", str(256 << 20), "--api-key", API_KEY, "--hf-overrides", json.dumps(overrides),
            "--worker-extension-cls", WORKER_EXTENSION]
    with _process(model, vector_dir, root, args, plain_vllm=True, env={"VLLM_PLUGINS": "cast_vllm"}) as process:
        yield Served(process, API_KEY, vector_dir, upload_dir=upload_dir)


CONFIGS = {"keyed": keyed, "open": open_, "plain": plain}


class OneServer:
    """At most one test server at a time: asked for another configuration, it stops the running one."""

    def __init__(self):
        self.name, self.served, self._stack = None, None, None

    def get(self, name: str, model: Path, tmp_path_factory) -> Served:
        if name != self.name:
            self.close()
            stack = contextlib.ExitStack()
            self.served = stack.enter_context(CONFIGS[name](model, tmp_path_factory.mktemp(f"server-{name}")))
            self.name, self._stack = name, stack
        return self.served

    def close(self) -> None:
        if self._stack is not None:
            stack, self._stack, self.name, self.served = self._stack, None, None, None
            stack.close()


# ---------------------------------------------------------------------------------------------
# What `cast-vllm serve` (keyed) and plain `vllm serve` (plain) must both do: vector routes, a
# steered request with its receipt, the cast_steering_* series, the API key on steering and /metrics.
# ---------------------------------------------------------------------------------------------
PROMPT = "the capital of France is Paris and the capital of Spain is"
CHECK_VECTOR = "plugin-check"
SERIES = ("cast_steering_requests_total", "cast_steering_rejected_requests_total",
          "cast_steering_slot_waits_total", "cast_steering_slot_loads_total", "cast_steering_slot_evictions_total",
          "cast_steering_requests_in_flight", "cast_steering_vectors_in_flight", "cast_steering_slots",
          "cast_steering_slots_in_use", "cast_steering_vectors_available", "cast_steering_vectors_shipped_total",
          "cast_steering_vectors_read_from_paths_total")


def upload_bytes() -> bytes:
    from safetensors.torch import save

    vec = random_vector(77)
    return save({f"layer.{i}": t for i, t in vec.directions.items()}, metadata={"format": "cast-vllm/1"})


def check_vector_routes(server: Served, model_name: str):
    names = {v["name"] for v in server.http("GET", "/v1/steering/vectors").json()["data"]}
    assert "v0" in names and CHECK_VECTOR not in names
    r = server.upload(CHECK_VECTOR, upload_bytes())
    assert r.status_code == 201 and r.json()["source"] == "upload", r.text
    assert server.http("GET", f"/v1/steering/vectors/{CHECK_VECTOR}").json()["layers"] == [0, 1, 2, 3]
    r = server.http("DELETE", f"/v1/steering/vectors/{CHECK_VECTOR}")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert server.http("GET", f"/v1/steering/vectors/{CHECK_VECTOR}").status_code == 404


def check_steered_request_has_receipt(server: Served, model_name: str):
    def complete(**extra):
        r = server.http("POST", "/v1/completions", json={"model": model_name, "prompt": PROMPT, "max_tokens": 8,
                                                         "temperature": 0.0, **extra})
        assert r.status_code == 200, r.text
        return r

    plain_ = complete()
    assert "x-cast-steering" not in plain_.headers and "steering" not in plain_.json()
    steered = complete(steering={"vector": "v0", "scale": 8.0})   # the top-level field: body rewrite
    (receipt,) = json.loads(steered.headers["x-cast-steering"])
    assert [c["vector"] for c in receipt["components"]] == ["v0"] and receipt["components"][0]["scale"] == 8.0
    assert steered.json()["steering"][0]["config_hash"] == receipt["config_hash"]
    assert steered.json()["choices"][0]["text"] != plain_.json()["choices"][0]["text"]


def check_metrics_series(server: Served, model_name: str):
    text = server.http("GET", "/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("cast_steering_")}
    assert set(SERIES) <= set(values), sorted(values)
    assert values["cast_steering_vectors_available"] >= 1
    # the steered request of check_steered_request_has_receipt: its vector went to the worker in-band
    assert values["cast_steering_vectors_shipped_total"] >= 1
    assert values["cast_steering_vectors_read_from_paths_total"] == 0


def check_api_key_guards_steering_and_metrics(server: Served, model_name: str):
    guarded = [("GET", "/v1/steering/vectors", {}), ("GET", "/v1/steering/vectors/v0", {}),
               ("POST", "/v1/steering/vectors", {"json": {"name": "v0"}}),
               ("DELETE", "/v1/steering/vectors/v0", {}), ("GET", "/metrics", {}),
               ("POST", "/v1/completions", {"json": {"model": model_name, "prompt": "hi", "max_tokens": 1}})]
    for wrong in (None, "wrong-key"):
        for method, path, kw in guarded:
            assert server.http(method, path, key=wrong, **kw).status_code == 401, (wrong, method, path)
    assert server.http("GET", "/health", key=None).status_code == 200
    assert server.http("GET", "/v1/steering/vectors/v0").status_code == 200  # the DELETE was refused


CHECKS = [check_vector_routes, check_steered_request_has_receipt, check_metrics_series,
          check_api_key_guards_steering_and_metrics]
CHECK_IDS = [c.__name__.removeprefix("check_") for c in CHECKS]


# ---------------------------------------------------------------------------------------------
# Requests: the openai client on the keyed server (answers checked against offline references),
# raw completions on the open one
# ---------------------------------------------------------------------------------------------
def complete(client, model_name, prompt, spec, **kw):
    extra = {"vllm_xargs": spec} if spec else {}
    return client.completions.create(model=model_name, prompt=prompt, max_tokens=MAX_TOKENS,
                                     temperature=0.0, extra_body=extra, **kw)


def chat(client, model_name, prompt, spec, **kw):
    extra = {"vllm_xargs": spec} if spec else {}
    return client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=MAX_TOKENS, temperature=0.0, extra_body=extra, **kw)


def good_request_succeeds(server: Served, client, model_name):
    prompt = offline.COMPLETION_PROMPTS[0]
    got = complete(client, model_name, prompt, offline.SPECS["v0"]).choices[0].text
    assert got == server.refs[offline.key("completion", prompt, "v0")]


OPEN_PROMPT = "the quick brown fox jumps over the lazy dog and"
STEER = {"vector": "v0", "scale": 4.0}


def completion(server: Served, model_name, **body):
    return server.http("POST", "/v1/completions", json={"model": model_name, "prompt": OPEN_PROMPT,
                                                        "max_tokens": MAX_TOKENS, "temperature": 0.0, **body})


def text_of(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


def expected_steered(prompt_tokens: int, output_tokens: int, positions: str = "all") -> int:
    """Forwarded tokens a policy steers: every prompt token, and each generated token but the last."""
    generated = max(output_tokens - 1, 0)
    return {"all": prompt_tokens + generated, "prompt": prompt_tokens, "generated": generated,
            "last_prompt": 1}[positions]
