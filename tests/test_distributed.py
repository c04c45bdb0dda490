"""Ray sharding: N workers equal one, a killed worker is replaced and its shard redone, finished
shards are checkpointed and a rerun resumes without recomputing them. HF readers in the actors
(start in about a second); the vLLM reader inside actors is exercised by bench/extraction.py."""

import os
import signal

import numpy as np
import pytest

from cast_vllm.method.activations import ReaderConfig, encode_prompts, load_tokenizer
from cast_vllm.method.checkpoints import CHECKPOINT_MARKER, ShardCheckpoint, model_fingerprint
from cast_vllm.method.pool import ActivationPool

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


@pytest.fixture(scope="module")
def ray_pool(ray_cluster, setup):
    """One 2-actor pool for the module: actor start-up dominates these tests."""
    config, _, _ = setup
    with ActivationPool(config, 2, shard_size=5) as pool:
        yield pool


def test_two_workers_equal_one(ray_pool, setup):
    _, ids, reference = setup
    got = ray_pool.read(ids)
    assert len(set(ray_pool.worker_pids())) == 2 and os.getpid() not in ray_pool.worker_pids()
    assert got.shape == reference.shape == (36, 3, 64)
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_reader_errors_are_not_retried(ray_pool):
    before = ray_pool.stats["workers_replaced"]
    with pytest.raises(IndexError):                 # the worker's own error, raised once, as its type
        ray_pool.read([[1, 2], [10_000_000]])       # token id beyond the vocabulary
    assert ray_pool.stats["workers_replaced"] == before


def test_killed_worker_is_replaced(ray_pool, setup):
    _, ids, reference = setup
    killed = []

    def kill_the_other(shard, worker):
        if not killed:                              # after the first finished shard, SIGKILL the busy peer
            victim = ray_pool.worker_pids()[1 - worker]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    before = ray_pool.stats["workers_replaced"]
    got = ray_pool.read(ids, on_shard_done=kill_the_other)
    assert ray_pool.stats["workers_replaced"] == before + 1
    assert killed[0] not in ray_pool.worker_pids()
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ray_pool.read(ids[:7]), reference[:7], rtol=1e-6, atol=1e-6)  # replacement works


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_from_checkpoints(setup, tmp_path):
    config, ids, reference = setup

    def stop_after_three(shard, worker):
        if shard == 2:
            raise Interrupt()

    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        with pytest.raises(Interrupt):
            pool.read(ids, on_shard_done=stop_after_three)
    assert len(list(tmp_path.glob("shard-*.npy"))) == 3
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        second = pool.read(ids)
        assert pool.stats == {"shards_computed": 5, "shards_resumed": 3, "workers_replaced": 0}
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        third = pool.read(ids)
        assert pool.stats["shards_computed"] == 0 and pool._reader is None   # nothing to do: no model loaded
    np.testing.assert_allclose(second, reference, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(second, third)


def test_ray_pool_resumes_without_starting_actors(setup, tmp_path):
    config, ids, reference = setup
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as local:
        local.read(ids)
    pool = ActivationPool(config, 2, shard_size=5, checkpoint_dir=tmp_path)   # Ray pool, same shards
    got = pool.read(ids)
    assert pool.stats["shards_resumed"] == 8 and pool._ray.actors == []          # everything came from disk
    np.testing.assert_allclose(got, reference, rtol=1e-6, atol=1e-6)


def test_checkpoint_keys_depend_on_inputs(setup, tmp_path):
    config, ids, _ = setup
    other = ReaderConfig(config.model, (0, 2), backend="hf")
    a = ShardCheckpoint(tmp_path, model_fingerprint(config))
    b = ShardCheckpoint(tmp_path, model_fingerprint(other))
    assert a.path(ids[:5]) != b.path(ids[:5]) != a.path(ids[5:10])
    a.save(ids[:5], np.zeros((5, 3, 64), np.float32))
    assert a.load(ids[:5]) is not None and b.load(ids[:5]) is None and a.load(ids[:4]) is None


def test_unreadable_checkpoints_are_recomputed(setup, tmp_path, caplog):
    """An empty file (disk full), a cut one (killed mid-write by an older version) and garbage
    are warned about and recomputed; they used to raise EOFError and break every resume."""
    config, ids, reference = setup
    with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
        clean = pool.read(ids)
    ckpt = ShardCheckpoint(tmp_path, model_fingerprint(config))
    empty, cut, header_only, garbage = (ckpt.path(ids[i:i + 5]) for i in (0, 10, 20, 30))
    empty.write_bytes(b"")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    header_only.write_bytes(header_only.read_bytes()[:20])
    garbage.write_bytes(b"PK\x03\x04 not a zip either")
    with caplog.at_level("WARNING", logger="cast_vllm.method.checkpoints"):
        with ActivationPool(config, 1, shard_size=5, checkpoint_dir=tmp_path) as pool:
            again = pool.read(ids)
            assert pool.stats == {"shards_computed": 4, "shards_resumed": 4, "workers_replaced": 0}
    np.testing.assert_array_equal(again, clean)
    np.testing.assert_allclose(again, reference, rtol=1e-6, atol=1e-6)
    assert sum("recomputing" in r.getMessage() for r in caplog.records) == 4
    for p in (empty, cut, header_only, garbage):
        assert np.load(p).shape == (5, 3, 64)          # rewritten whole
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_removes_only_its_own_files(setup, tmp_path):
    config, ids, _ = setup
    fp, arr = model_fingerprint(config), np.zeros((5, 3, 64), np.float32)
    made = tmp_path / "made"                           # created here: gone entirely afterwards
    a = ShardCheckpoint(made, fp)
    a.save(ids[:5], arr)
    assert (made / CHECKPOINT_MARKER).is_file()
    a.remove_own()
    assert not made.exists()
    theirs = tmp_path / "theirs"                       # the user's folder: only our shard goes
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    (theirs / "shard-0000.npy").write_bytes(b"another run's shard")
    b = ShardCheckpoint(theirs, fp)
    b.save(ids[:5], arr)
    b.remove_own()
    assert sorted(os.listdir(theirs)) == ["notes.txt", "shard-0000.npy"]
    empty = tmp_path / "empty"                         # the user's empty folder stays
    empty.mkdir()
    c = ShardCheckpoint(empty, fp)
    c.save(ids[:5], arr)
    c.remove_own()
    assert empty.is_dir() and os.listdir(empty) == []
    ShardCheckpoint(made, fp).save(ids[:5], arr)       # an interrupted run made it ...
    resumed = ShardCheckpoint(made, fp)                # ... the rerun that finishes removes it,
    assert resumed.load(ids[:5]) is not None and resumed.load(ids[5:10]) is None
    resumed.remove_own()
    assert not made.exists()
    ShardCheckpoint(made, fp).save(ids[:5], arr)
    (made / "mine.txt").write_text("added by the user")
    resumed = ShardCheckpoint(made, fp)                # ... unless something else was put there
    resumed.load(ids[:5])
    resumed.remove_own()
    assert sorted(os.listdir(made)) == [CHECKPOINT_MARKER, "mine.txt"]


def test_extract_on_two_workers_equals_one(ray_pool, tiny_model_dir, shared_data):
    """The whole pipeline on the shared 2-actor pool (reads layers 0, 2, 3: vector at 2-3,
    selection embedding at 0) gives the in-process vector."""
    from cast_vllm.method.options import ExtractionError, ExtractOptions
    from cast_vllm.method.pipeline import extract

    opts = ExtractOptions(model=str(tiny_model_dir("llama")), sources=[str(shared_data / "sentiment/movies.jsonl")],
                          tasks=["sentiment"], num_selected=6, num_demos=2, pool_size=24, layers="2-3",
                          selection_layer=0, backend="hf", shard_size=5)
    one = extract(opts)
    two = extract(opts, pool=ray_pool)
    assert two.vector.metadata["selected_ids"] == one.vector.metadata["selected_ids"]
    assert two.vector.metadata["workers"] == "2" and one.vector.metadata["workers"] == "1"
    for layer in one.vector.layers:
        np.testing.assert_allclose(two.vector.directions[layer], one.vector.directions[layer], rtol=1e-5, atol=1e-6)
    assert len(ray_pool.worker_pids()) == 2          # the given pool is left open
    with pytest.raises(ExtractionError, match="this extraction needs"):
        extract(ExtractOptions(**{**opts.__dict__, "layers": "1-3"}), pool=ray_pool)
