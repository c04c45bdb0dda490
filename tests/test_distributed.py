"""Ray sharding: N workers equal one, a killed worker is replaced and its shard redone, finished
shards are checkpointed and a rerun resumes without recomputing them. HF readers in the actors
(start in about a second); the vLLM reader inside actors is exercised by bench/extraction.py."""

import os
import signal

import numpy as np
import pytest

from cast_vllm.method.activations import ReaderConfig, encode_prompts, load_tokenizer
from cast_vllm.method.distributed import ActivationPool, ShardCheckpoint, model_fingerprint

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    path = str(tiny_model_dir("llama"))
    tok = load_tokenizer(path)
    prompts = [f"Q: what is {i} plus {i % 7}?\nA:" + " and" * (i % 5) for i in range(36)]
    config = ReaderConfig(path, (0, 2, 3), backend="hf", batch_size=4)
    with ActivationPool(config, 1, shard_size=5) as local:
        reference = local.read(encode_prompts(tok, prompts))
    return config, encode_prompts(tok, prompts), reference


def test_two_workers_equal_one(ray_cluster, setup):
    config, ids, reference = setup
    with ActivationPool(config, 2, shard_size=5) as pool:
        got = pool.read(ids)
        assert len(set(pool.worker_pids())) == 2 and os.getpid() not in pool.worker_pids()
    assert got.shape == reference.shape == (36, 3, 64)
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_killed_worker_is_replaced(ray_cluster, setup):
    config, ids, reference = setup
    killed = []
    with ActivationPool(config, 2, shard_size=5) as pool:
        def kill_the_other(shard, worker):
            if not killed:                       # after the first finished shard, SIGKILL the busy peer
                victim = pool.worker_pids()[1 - worker]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        got = pool.read(ids, on_shard_done=kill_the_other)
        assert pool.stats["workers_replaced"] >= 1
        assert killed[0] not in pool.worker_pids()
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_resume_from_checkpoints(ray_cluster, setup, tmp_path):
    config, ids, reference = setup
    with ActivationPool(config, 2, shard_size=5, checkpoint_dir=tmp_path) as pool:
        first = pool.read(ids)
        assert pool.stats == {"shards_computed": 8, "shards_resumed": 0, "workers_replaced": 0}
    files = sorted(tmp_path.glob("shard-*.npy"))
    assert len(files) == 8
    files[3].unlink()                                # as if the run had stopped before this shard
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        second = pool.read(ids)
        assert pool.stats["shards_computed"] == 1 and pool.stats["shards_resumed"] == 7
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        third = pool.read(ids)
        assert pool.stats["shards_computed"] == 0 and pool._reader is None   # nothing to do: no model loaded
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first, third)
    np.testing.assert_allclose(first, reference, rtol=1e-6, atol=1e-6)


def test_checkpoint_keys_depend_on_inputs(setup, tmp_path):
    config, ids, _ = setup
    other = ReaderConfig(config.model, (0, 2), backend="hf")
    a = ShardCheckpoint(tmp_path, model_fingerprint(config))
    b = ShardCheckpoint(tmp_path, model_fingerprint(other))
    assert a.path(ids[:5]) != b.path(ids[:5]) != a.path(ids[5:10])
    a.save(ids[:5], np.zeros((5, 3, 64), np.float32))
    assert a.load(ids[:5]) is not None and b.load(ids[:5]) is None and a.load(ids[:4]) is None


def test_reader_errors_are_not_retried(ray_cluster, tiny_model_dir):
    config = ReaderConfig(str(tiny_model_dir("llama")), (0,), backend="hf")
    with ActivationPool(config, 2, shard_size=1) as pool:
        with pytest.raises(IndexError):             # the worker's own error, raised once, as its type
            pool.read([[1, 2], [10_000_000]])       # token id beyond the vocabulary
        assert pool.stats["workers_replaced"] == 0
