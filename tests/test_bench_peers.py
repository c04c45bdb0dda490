"""`cast-vllm bench peers` on the tiny Llama: a --quick run writes valid JSON, and the peers' own
code (repeng, steering-vectors, vllm-lens: pinned wheels from PyPI) steers token for token like
our engine. A peer PyPI cannot deliver is recorded as skipped; its identity test then skips."""

from __future__ import annotations

import json

import pytest

from cast_vllm.benchmarks import BENCHMARKS, peers
from cast_vllm.benchmarks.peer_systems import first_difference

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def quick_run(tiny_model_dir, tmp_path_factory):
    """One --quick run with every peer; a vector large enough that steering changes the tokens."""
    out = tmp_path_factory.mktemp("bench-peers") / "peers.json"
    assert peers.main(["--model", str(tiny_model_dir("llama")), "--quick", "--relative-norm", "0.5",
                       "--out", str(out)]) == 0
    return json.loads(out.read_text()), out


def test_quick_run_writes_the_json(quick_run):
    result, out = quick_run
    assert "peers" in BENCHMARKS
    for key in ("benchmark", "model", "num_layers", "hidden_size", "steering", "peers", "identity", "timing",
                "max_tokens", "rounds", "quick", "machine", "load_average_at_end"):
        assert key in result, key
    assert result["quick"] is True
    assert set(result["peers"]) == {"repeng", "steering-vectors", "vllm-lens", "hotwire-vllm"}
    assert result["peers"]["hotwire-vllm"]["status"] == "not run: needs CUDA"
    for name, peer in result["peers"].items():
        assert peer["status"] in ("ran", "skipped", "not run: needs CUDA"), (name, peer)
        assert peer["status"] == "ran" or peer["reason"]
    ran = [n for n, p in result["peers"].items() if p["status"] == "ran"]
    assert set(result["identity"]) == set(ran)
    for workload in ("a_one_vector", "b_vector_per_request"):
        row = result["timing"][workload]
        assert set(row["systems"]) == {"cast-vllm", *ran}
        assert set(row["ratios"]) == set(ran)
        for system in row["systems"].values():
            assert len(system["seconds"]) == result["rounds"] and system["tok_per_s"] > 0
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("peer", ["repeng", "steering-vectors", "vllm-lens"])
def test_peer_tokens_identical_to_ours(quick_run, peer):
    result, _ = quick_run
    status = result["peers"][peer]
    if status["status"] != "ran":
        pytest.skip(f"{peer}: {status['reason']}")
    identity = result["identity"][peer]
    assert identity["prompts_changed_by_steering"] > 0, "the vector changed no token: the check would be empty"
    assert identity["unsteered_identical"], identity
    assert identity["identical"], identity


def test_first_difference():
    assert first_difference([[1, 2], [3, 4]], [[1, 2], [3, 4]]) is None
    assert first_difference([[1, 2], [3, 4]], [[1, 2], [3, 5]]) == \
        {"prompt": 1, "position": 1, "ours": 4, "theirs": 5}
    assert first_difference([[1, 2]], [[1]])["position"] == 1
