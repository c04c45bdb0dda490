"""The vector routes of the keyed server: bad uploads refused (never unpickled), upload, list,
steer with and delete a vector, and no delete while a request uses it."""

import io
import pickle
from pathlib import Path

import openai
import pytest
import torch
from offline_references import COMPLETION_PROMPTS, MAX_TOKENS, UPLOAD_SPEC, key
from safetensors.torch import save as st_save
from servers import complete, error_message, good_request_succeeds
from tiny_models import random_vector

SERVER = "keyed"


def uploaded(server) -> bytes:
    """The vector the offline references call "up" (uploaded by the tests, not in the vector dir)."""
    return (server.root / "offline-vectors" / "up.safetensors").read_bytes()


class _Boom:
    """Unpickling this would create a marker file: proof that uploads are never unpickled."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_bad_uploads_are_refused(server, client, model_name, tmp_path):
    marker = tmp_path / "unpickled"
    wrong_hidden = random_vector(40, hidden=32)
    out_of_range = random_vector(41, layers=[0, 9])
    nan = torch.randn(64)
    nan[0] = float("inf")
    torch_zip = io.BytesIO()
    torch.save({"layer.0": torch.randn(64)}, torch_zip)
    good = uploaded(server)
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
        r = server.upload(name, data)
        assert r.status_code == status, (name, r.text)
        assert message in error_message(r), (name, r.text)
        good_request_succeeds(server, client, model_name)
    r = server.http("POST", "/v1/steering/vectors", params={"name": "m"}, files={"file": ("m.safetensors", good)})
    assert r.status_code == 415 and "multipart" in error_message(r)
    assert not marker.exists(), "an upload was unpickled"
    names = {v["name"] for v in server.http("GET", "/v1/steering/vectors").json()["data"]}
    assert not names & {"p1", "p2", "p3", "p4", "p5", "p6", "p7", "big", "evil"}
    assert not list(server.root.glob("**/evil*"))


def test_upload_list_use_delete(server, client, model_name):
    listed = {v["name"]: v for v in server.http("GET", "/v1/steering/vectors").json()["data"]}
    assert {"v0", "v1", "v2", "v3", "busy"} <= set(listed)
    assert listed["v1"]["layers"] == [0, 1, 2, 3] and listed["v1"]["hidden_size"] == 64
    assert listed["v1"]["source"] == "vector_dir" and listed["v1"]["metadata"]["method"] == "random-test"
    assert listed["small"]["usable"] is False and "hidden size 32" in listed["small"]["error"]
    assert "up" not in listed

    data = uploaded(server)
    r = server.upload("up", data)
    assert r.status_code == 201, r.text
    assert r.json()["loaded"] is True and r.json()["source"] == "upload" and r.json()["layers"] == [0, 1, 2, 3]
    assert server.http("GET", "/v1/steering/vectors/up").json()["name"] == "up"
    r = server.upload("up", data)
    assert r.status_code == 409 and "already exists" in error_message(r)

    got = complete(client, model_name, COMPLETION_PROMPTS[0], UPLOAD_SPEC).choices[0].text
    assert got == server.refs[key("completion", COMPLETION_PROMPTS[0], "up")]
    assert got != server.refs[key("completion", COMPLETION_PROMPTS[0], "none")]

    r = server.http("DELETE", "/v1/steering/vectors/up")
    assert r.status_code == 200 and r.json()["deleted"] is True
    with pytest.raises(openai.BadRequestError, match="unknown steering vector 'up'"):
        complete(client, model_name, COMPLETION_PROMPTS[0], UPLOAD_SPEC)
    assert server.http("GET", "/v1/steering/vectors/up").status_code == 404
    assert server.http("DELETE", "/v1/steering/vectors/up").status_code == 404
    assert server.http("DELETE", "/v1/steering/vectors/..").status_code in (400, 404)
    assert "up" not in {v["name"] for v in server.http("GET", "/v1/steering/vectors").json()["data"]}
    good_request_succeeds(server, client, model_name)


def test_delete_refused_while_in_flight_and_directory_vectors_only_hidden(server, client, model_name):
    # n=4 sampled sequences with logprobs make the request several times slower to serve than to
    # start reading, so DELETE reliably arrives while it is in flight (240 greedy tokens raced it
    # on a busy CI core)
    stream = client.completions.create(model=model_name, prompt="hello world", max_tokens=240, temperature=1.0,
                                       seed=0, n=4, logprobs=5, stream=True,
                                       extra_body={"ignore_eos": True, "vllm_xargs": {"steering": "busy"}})
    first = next(iter(stream))
    assert first.choices
    r = server.http("DELETE", "/v1/steering/vectors/busy")
    assert r.status_code == 409 and "in flight" in error_message(r), r.text
    assert server.http("GET", "/v1/steering/vectors/busy").json()["in_flight"] == 1
    n = sum(1 for _ in stream)
    assert n > 100  # the request was still running when DELETE came

    r = server.http("DELETE", "/v1/steering/vectors/busy")
    assert r.status_code == 200 and r.json()["source"] == "vector_dir"
    assert (server.vector_dir / "busy.safetensors").is_file(), "a --vector-dir file is never deleted"
    with pytest.raises(openai.BadRequestError, match="unknown steering vector 'busy'"):
        complete(client, model_name, "hello", {"steering": "busy"})
    r = server.http("POST", "/v1/steering/vectors", json={"name": "busy"})
    assert r.status_code == 200 and r.json()["loaded"] is True, r.text
    assert complete(client, model_name, "hello", {"steering": "busy"}).usage.completion_tokens == MAX_TOKENS
    assert server.http("POST", "/v1/steering/vectors", json={"name": "nothere"}).status_code == 404
    r = server.http("POST", "/v1/steering/vectors", json={"name": "small"})
    assert r.status_code == 400 and "hidden size 32" in error_message(r)
