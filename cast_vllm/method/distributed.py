"""Activation reading split into shards, run in-process or on N Ray actors.

vLLM's own Ray executor does not run on the CPU platform, and extraction is embarrassingly
parallel anyway, so parallelism is ours: one Ray actor per worker (one GPU each when GPUs
exist, CPU otherwise) owns a reader (``activations.py``); prompts are cut into fixed shards
by index, handed to whichever actor is free, and gathered back in order. Because the shard
partition does not depend on the worker count, N workers compute exactly what one does.

Fault tolerance: an actor that dies (killed, Ray's OOM killer, node lost) is replaced by a fresh one and
its shard is redone; a shard that kills ``max_retries`` workers in a row aborts the run.
Errors raised by the reader itself (a prompt too long, say) are not retried: they would
only fail again.

Resume: each finished shard is saved to ``checkpoint_dir`` under a key that hashes the model
files, the reader settings and the shard's token ids, so a rerun after an interruption loads
finished shards instead of recomputing them, and a changed input can never reuse a stale one.
Models are only loaded when some shard is missing. A shard file that cannot be read (empty,
cut short, not an array) is recomputed with a warning. Files are written atomically, and
``ShardCheckpoint.remove_own`` deletes only this run's shard files: the folder goes too only
when cast-vllm made it (a marker file says so) and nothing else is in it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cast_vllm.atomic import atomic_write
from cast_vllm.method.activations import ReaderConfig, open_reader

logger = logging.getLogger(__name__)

#: env vars every actor gets (on top of the driver's); engine in the actor process, no pinning
ACTOR_ENV = {
    "HF_HUB_OFFLINE": "1",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "TOKENIZERS_PARALLELISM": "false",
}

#: file that marks a checkpoint folder cast-vllm created (so a later run may remove it)
CHECKPOINT_MARKER = ".cast-vllm-checkpoints"


class WorkerLostError(RuntimeError):
    """A shard kept killing its workers; the run gave up."""


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Connect to the cluster in ``RAY_ADDRESS`` or start a local one. True if this call
    started Ray (the caller may shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


class _ActivationWorker:
    """Ray actor body: builds one reader, serves shards."""

    def __init__(self, config: ReaderConfig, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.reader = open_reader(config)

    def ready(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        import time

        return time.process_time()

    def read(self, token_ids: list[list[int]]) -> np.ndarray:
        return self.reader.read(token_ids)


def model_fingerprint(config: ReaderConfig) -> str:
    """Hash of the reader settings and the model files' names, sizes and mtimes."""
    h = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k in {"model", "layers", "backend", "dtype"}}
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    folder = Path(config.model)
    if folder.is_dir():
        for f in sorted(folder.iterdir()):
            if f.is_file() and (f.suffix in {".safetensors", ".bin", ".json"}):
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class ShardCheckpoint:
    """Finished shards on disk, content-addressed; knows which files are its own (module doc)."""

    def __init__(self, directory: str | Path, fingerprint: str):
        self.dir = Path(directory)
        self.fingerprint = fingerprint
        self.owns_dir = self._claim_dir()
        self.used: set[Path] = set()    # shard files this run read or wrote

    def _claim_dir(self) -> bool:
        """Make the folder; True if cast-vllm made it, now or in an earlier (interrupted) run."""
        try:
            self.dir.mkdir(parents=True)
        except FileExistsError:
            if not self.dir.is_dir():
                raise
            return (self.dir / CHECKPOINT_MARKER).is_file()
        (self.dir / CHECKPOINT_MARKER).write_text("made by cast-vllm extract for activation shards; safe to delete\n")
        return True

    def path(self, shard: Sequence[Sequence[int]]) -> Path:
        h = hashlib.sha256(self.fingerprint.encode())
        for ids in shard:
            h.update(np.asarray(ids, dtype=np.int64).tobytes())
            h.update(b"|")
        return self.dir / f"shard-{h.hexdigest()[:40]}.npy"

    def load(self, shard: Sequence[Sequence[int]]) -> np.ndarray | None:
        """The saved activations, or None when missing or unusable (then the shard is recomputed)."""
        p = self.path(shard)
        if not p.is_file():
            return None
        try:
            with open(p, "rb") as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
        except Exception as exc:   # a cache file: whatever cannot be read is recomputed
            logger.warning("checkpoint %s is unreadable (%s: %s); recomputing its shard", p, type(exc).__name__, exc)
            return None
        if arr.ndim != 3 or arr.dtype != np.float32 or len(arr) != len(shard):
            logger.warning("checkpoint %s holds a %s %s array, not %d prompts' activations; recomputing its shard",
                           p, arr.dtype, list(arr.shape), len(shard))
            return None
        self.used.add(p)
        return arr

    def save(self, shard: Sequence[Sequence[int]], arr: np.ndarray) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)

        self.used.add(atomic_write(self.path(shard), write))

    def remove_own(self) -> None:
        """Delete this run's shard files; the folder too if cast-vllm made it and it is now empty."""
        for p in sorted(self.used):
            p.unlink(missing_ok=True)
        self.used.clear()
        if not self.owns_dir or not self.dir.is_dir():
            return
        others = [e.name for e in self.dir.iterdir() if e.name != CHECKPOINT_MARKER]
        if others:
            logger.info("keeping %s: it holds %d other files", self.dir, len(others))
            return
        (self.dir / CHECKPOINT_MARKER).unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:   # something appeared meanwhile: leave it
            pass


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
        self.max_retries = max_retries
        self.start_timeout = start_timeout
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.checkpoint = ShardCheckpoint(checkpoint_dir, model_fingerprint(config)) if checkpoint_dir else None
        self.stats = {"shards_computed": 0, "shards_resumed": 0, "workers_replaced": 0}
        self._reader = None
        self._actors: list = []
        self._actor_cls = None
        self._started_ray = False

    # ---- workers --------------------------------------------------------------------------
    def _new_actor(self):
        return self._actor_cls.remote(self.config, self._threads)

    def _start_actors(self) -> None:
        import ray
        import torch
        from ray.exceptions import OutOfMemoryError, RayActorError

        self._started_ray = ensure_ray() or self._started_ray
        gpus = self.gpus_per_worker
        if gpus is None:
            gpus = 1 if torch.cuda.is_available() else 0
        cpus = self.cpus_per_worker
        if cpus is None:
            total = ray.available_resources().get("CPU", os.cpu_count() or 1)
            cpus = max(1, int(total // self.workers))
        have_gpus = ray.cluster_resources().get("GPU", 0)
        if gpus and self.workers * gpus > have_gpus:
            raise ValueError(f"{self.workers} workers x {gpus} GPU need {self.workers * gpus} GPUs; the Ray cluster "
                             f"has {have_gpus:g}: use --workers {int(have_gpus // gpus) or 1}")
        self._threads = max(1, int(cpus))
        env = {**ACTOR_ENV}
        if gpus:
            env.pop("VLLM_CPU_OMP_THREADS_BIND")
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0,
                                     runtime_env={"env_vars": env})(_ActivationWorker)
        self._actors = [self._new_actor() for _ in range(self.workers)]
        self._pid_refs = [a.ready.remote() for a in self._actors]
        free = ray.available_resources()
        if free.get("CPU", 0) < self.workers * cpus or (gpus and free.get("GPU", 0) < self.workers * gpus):
            logger.warning("Ray has %s CPU / %s GPU free, %d workers ask for %s CPU / %s GPU each: waiting for "
                           "resources (other Ray jobs?)", free.get("CPU", 0), free.get("GPU", 0), self.workers,
                           cpus, gpus)
        try:
            # surfaces a model that cannot load before any work is handed out
            ray.get(self._pid_refs, timeout=self.start_timeout)
        except (RayActorError, OutOfMemoryError) as exc:
            self.close()
            raise WorkerLostError(f"a Ray worker could not start its {self.config.backend} reader: {exc}") from None
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise WorkerLostError(
                f"{self.workers} Ray workers did not start within {self.start_timeout:g} s; the cluster has "
                f"{free.get('CPU', 0)} CPU / {free.get('GPU', 0)} GPU free and each worker asks for {cpus} CPU / "
                f"{gpus} GPU") from None
        logger.info("started %d Ray workers (%s CPU, %s GPU each)", self.workers, cpus, gpus)

    def worker_pids(self) -> list[int]:
        """Process ids of the actors (after the first read; waits for a replacement to start)."""
        import ray

        return [int(p) for p in ray.get(list(getattr(self, "_pid_refs", [])))]

    def cpu_seconds(self) -> float:
        """CPU time used so far by whatever does the reading: this process (local) or the sum
        over live actors (Ray). For benchmarks on shared machines, where wall time is noisy."""
        import time

        if not self.use_ray:
            return time.process_time()
        import ray

        return float(sum(ray.get([a.cpu_seconds.remote() for a in self._actors]))) if self._actors else 0.0

    # ---- reading --------------------------------------------------------------------------
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
                run = self._run_ray if self.use_ray else self._run_local
                run(shards, todo, results, bar, on_shard_done)
        finally:
            if own_bar:
                bar.close()
        if not shards:
            from cast_vllm.method.activations import model_info

            return np.empty((0, len(self.config.layers), model_info(self.config.model).hidden_size), np.float32)
        return np.concatenate([results[i] for i in range(len(shards))], axis=0)

    def _finish(self, shards, i, arr, results, bar) -> None:
        if len(arr) != len(shards[i]):
            raise RuntimeError(f"shard {i}: worker returned {len(arr)} rows for {len(shards[i])} prompts")
        results[i] = arr
        if self.checkpoint:
            self.checkpoint.save(shards[i], arr)
        self.stats["shards_computed"] += 1
        bar.update(len(shards[i]))

    def _run_local(self, shards, todo, results, bar, on_shard_done) -> None:
        if self._reader is None:
            self._reader = open_reader(self.config)
        for i in todo:
            self._finish(shards, i, self._reader.read(shards[i]), results, bar)
            if on_shard_done:
                on_shard_done(i, 0)

    def _run_ray(self, shards, todo, results, bar, on_shard_done) -> None:
        import ray
        from ray.exceptions import ObjectLostError, OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError

        if not self._actors:
            self._start_actors()
        pending = deque(todo)
        idle = deque(range(len(self._actors)))
        in_flight: dict = {}
        failures: dict[int, int] = {}
        while pending or in_flight:
            while pending and idle:
                w, i = idle.popleft(), pending.popleft()
                in_flight[self._actors[w].read.remote(shards[i])] = (w, i)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            w, i = in_flight.pop(ref)
            try:
                arr = ray.get(ref)
            except RayTaskError as exc:  # the reader raised: deterministic, do not retry
                self._cancel(in_flight)
                raise exc.as_instanceof_cause() from None
            except (RayActorError, WorkerCrashedError, ObjectLostError, OutOfMemoryError) as exc:
                failures[i] = failures.get(i, 0) + 1
                if failures[i] > self.max_retries:
                    self._cancel(in_flight)
                    raise WorkerLostError(f"shard {i} lost {failures[i]} workers in a row; giving up: {exc}") from exc
                logger.warning("worker %d died on shard %d (%s); starting a replacement and redoing the shard",
                               w, i, type(exc).__name__)
                self._replace(w)
                pending.appendleft(i)
                idle.append(w)
                continue
            self._finish(shards, i, arr, results, bar)
            idle.append(w)
            if on_shard_done:
                on_shard_done(i, w)

    def _replace(self, w: int) -> None:
        import ray

        try:
            ray.kill(self._actors[w], no_restart=True)
        except Exception:  # already dead
            pass
        self._actors[w] = self._new_actor()   # starts in the background; its first shard waits for it
        self._pid_refs[w] = self._actors[w].ready.remote()
        self.stats["workers_replaced"] += 1

    @staticmethod
    def _cancel(in_flight) -> None:
        import ray

        for ref in in_flight:
            ray.cancel(ref, force=False)

    def close(self, shutdown_ray: bool | None = None) -> None:
        """Free the reader and actors. Shuts Ray down if this pool started it (or if asked)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._actors:
            import ray

            for actor in self._actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:
                    pass
            self._actors = []
        if shutdown_ray or (shutdown_ray is None and self._started_ray):
            import ray

            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> "ActivationPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
