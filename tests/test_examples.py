"""The scripts in examples/ are the README's promises: each one runs here, end to end, on a tiny
model (build a vector with `cast-vllm extract`, import a llama.cpp-layout GGUF, steer a batch
offline, an OpenAI-client session against `cast-vllm serve`)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import SERVER_ARGS

from cast_vllm import SteeringVector

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WORDS = {1: "wonderful moving loved great".split(), -1: "terrible boring awful long".split()}


def run(cmd: list[str], env: dict | None = None, timeout: int = 600) -> str:
    venv_bin = str(Path(sys.executable).parent)
    full_env = {**os.environ, "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""), **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return str(tiny_model_dir("llama"))


@pytest.fixture(scope="module")
def built_vector(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("example-build")
    rng = random.Random(0)
    with open(d / "source.jsonl", "w") as f:
        for i in range(40):
            rating = rng.choice([-3, -2, 2, 3])
            words = " ".join(rng.choice(WORDS[1 if rating > 0 else -1]) for _ in range(5))
            f.write(json.dumps({"text": f"the film was {words}", "rating": rating}) + "\n")
    out = d / "movies.safetensors"
    stdout = run(["bash", str(EXAMPLES / "build_vector.sh")],
                 env={"MODEL": model, "SOURCE": str(d / "source.jsonl"), "OUT": str(out), "NUM_SELECTED": "6",
                      "NUM_DEMOS": "2", "POOL_SIZE": "30", "BACKEND": "hf"})
    assert f"{out}: 4 layers, hidden 64, method cast" in stdout
    assert out.with_suffix(".gguf").is_file()
    return out


def test_build_vector(built_vector):
    vec = SteeringVector.load(built_vector)
    assert vec.layers == [0, 1, 2, 3] and vec.metadata["task_format"] == "sentiment"


def test_import_peer_vector(model, tmp_path):
    stdout = run([sys.executable, str(EXAMPLES / "import_peer_vector.py"), str(tmp_path), "--name", "peer",
                  "--model", model, "--demo"])
    vec = SteeringVector.load(tmp_path / "peer.safetensors")
    assert vec.layers == [1, 2, 3], "llama.cpp's direction.N is our layer N"
    assert "imported llama-cpp.gguf: layers 1..3 (3)" in stdout


def test_batch_offline(model, built_vector):
    stdout = run([sys.executable, str(EXAMPLES / "batch_offline.py"), "--model", model, "--vector", str(built_vector),
                  "--max-tokens", "6"])
    lines = [line for line in stdout.splitlines() if re.match(r"\s*(unsteered|scale=[^:]*): ['\"]", line)]
    assert len(lines) == 12
    assert sum("tokens steered" in line for line in lines) == 9
    assert all("tokens steered" not in line for line in lines if line.strip().startswith("unsteered"))


def test_openai_client_session(model, built_vector, tmp_path):
    from cast_vllm.serving.launcher import ServerProcess

    with ServerProcess(model, str(tmp_path), SERVER_ARGS) as server:
        stdout = run([sys.executable, str(EXAMPLES / "openai_client.py"), "--url", server.url, "--vector",
                      str(built_vector), "--max-tokens", "6"])
    assert "uploaded example: 4 layers" in stdout
    assert "receipt header: [{" in stdout and "tokens steered: [" in stdout
    assert "| receipt: [" in stdout and "vectors:   ['example']" in stdout and "deleted example" in stdout
