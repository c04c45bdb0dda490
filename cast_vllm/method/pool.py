"""``ActivationPool``: activations of many prompts, read in fixed shards, in this process or on
N Ray actors (``ray_workers.py``), resumable from shard checkpoints (``checkpoints.py``).

Prompts are cut into shards by index and gathered back in order. Because the shard partition
does not depend on the worker count, N workers compute exactly what one does, and a rerun finds
the same shards on disk. Models are only loaded when some shard is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cast_vllm.method.activations import ReaderConfig, model_info, open_reader
from cast_vllm.method.checkpoints import ShardCheckpoint, model_fingerprint
from cast_vllm.method.ray_workers import ActivationWorker
from cast_vllm.ray_pool import RayWorkers

logger = logging.getLogger(__name__)


class ActivationPool:
    """Reads activations for many prompts, in shards, locally or on ``workers`` Ray actors.

    ``use_ray`` defaults to ``workers > 1``. Readers and actors start on first need and live
    until ``close()``, so several ``read`` calls (zero-shot, then few-shot) share them.
    """

    def __init__(self, config: ReaderConfig, workers: int = 1, *, use_ray: bool | None = None, shard_size: int = 64,
                 checkpoint_dir: str | Path | None = None, gpus_per_worker: float | None = None,
                 cpus_per_worker: float | None = None, max_retries: int = 3, start_timeout: float = 900.0):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.config = config
        self.workers = workers
        self.use_ray = workers > 1 if use_ray is None else use_ray
        self.shard_size = shard_size
        self.checkpoint = ShardCheckpoint(checkpoint_dir, model_fingerprint(config)) if checkpoint_dir else None
        self.stats = {"shards_computed": 0, "shards_resumed": 0, "workers_replaced": 0}
        self._reader = None
        self._ray = RayWorkers(ActivationWorker, (config,), workers, what=f"{config.backend} activation reader",
                               gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker,
                               max_retries=max_retries, start_timeout=start_timeout) if self.use_ray else None

    def worker_pids(self) -> list[int]:
        """Process ids of the Ray actors (after the first read; waits for a replacement to start)."""
        return self._ray.pids() if self._ray else []

    def cpu_seconds(self) -> float:
        """CPU time used so far by whatever does the reading: this process (local) or the sum
        over live actors (Ray). For benchmarks on shared machines, where wall time is noisy."""
        import time

        return self._ray.cpu_seconds() if self._ray else time.process_time()

    def read(self, token_ids: Sequence[Sequence[int]], progress=None,
             on_shard_done: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``[prompts, layers, hidden]`` float32 in input order. ``progress``: a tqdm bar to
        advance (one is made when None). ``on_shard_done(shard, worker)`` is called after each
        computed shard (a hook for monitoring and fault-injection tests)."""
        from tqdm.auto import tqdm

        shards = [list(token_ids[i:i + self.shard_size]) for i in range(0, len(token_ids), self.shard_size)]
        results: dict[int, np.ndarray] = {}
        own_bar = progress is None
        bar = tqdm(total=len(token_ids), desc="activations", unit="prompt", dynamic_ncols=True) if own_bar else progress

        def finish(i: int, worker: int, arr: np.ndarray) -> None:
            if len(arr) != len(shards[i]):
                raise RuntimeError(f"shard {i}: worker returned {len(arr)} rows for {len(shards[i])} prompts")
            results[i] = arr
            if self.checkpoint:
                self.checkpoint.save(shards[i], arr)
            self.stats["shards_computed"] += 1
            bar.update(len(shards[i]))
            if on_shard_done:
                on_shard_done(i, worker)

        try:
            todo = []
            for i, shard in enumerate(shards):
                cached = self.checkpoint.load(shard) if self.checkpoint else None
                if cached is not None:
                    results[i] = cached
                    self.stats["shards_resumed"] += 1
                    bar.update(len(shard))
                else:
                    todo.append(i)
            if todo:
                logger.debug("%d of %d shards to compute", len(todo), len(shards))
                if self._ray:
                    self._ray.run(shards, todo, finish, self._count_replacement)
                else:
                    self._run_local(shards, todo, finish)
        finally:
            if own_bar:
                bar.close()
        if not shards:
            return np.empty((0, len(self.config.layers), model_info(self.config.model).hidden_size), np.float32)
        return np.concatenate([results[i] for i in range(len(shards))], axis=0)

    def _run_local(self, shards, todo, finish) -> None:
        if self._reader is None:
            self._reader = open_reader(self.config)
        for i in todo:
            finish(i, 0, self._reader.read(shards[i]))

    def _count_replacement(self) -> None:
        self.stats["workers_replaced"] += 1

    def close(self, shutdown_ray: bool | None = None) -> None:
        """Free the reader and actors. Shuts Ray down if this pool started it (or if asked)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._ray is not None:
            self._ray.close(shutdown_ray)
        elif shutdown_ray:
            import ray

            ray.shutdown()

    def __enter__(self) -> "ActivationPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
