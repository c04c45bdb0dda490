"""A pool of Ray actors that work through shards, one per worker, replaced when they die.

vLLM's own Ray executor does not run on the CPU platform, and extraction and offline batches are
embarrassingly parallel anyway, so this parallelism is ours: one Ray actor per worker (one GPU
each when GPUs exist, CPU otherwise) owns a model and is handed the next shard when it is free;
the caller gathers the results in order. The actor body is the caller's: a class with
``ready()``, ``cpu_seconds()`` (``ActorBody`` gives both) and a ``run(shard)`` method (extraction:
``method/ray_workers.py``; batches: ``batch/shard_runner.py``).

Fault tolerance: an actor that dies (killed, Ray's OOM killer, node lost) is replaced by a
fresh one and its shard is redone; a shard that kills ``max_retries`` workers in a row aborts
the run. Errors raised by the body itself (a prompt too long, say) are not retried: they
would only fail again.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Callable, Sequence

from cast_vllm import envs
from cast_vllm.errors import CastVllmError

logger = logging.getLogger(__name__)

#: env vars every actor gets (on top of the driver's); engine in the actor process, no pinning
ACTOR_ENV = {
    envs.HF_HUB_OFFLINE.name: "1",
    envs.VLLM_ENABLE_V1_MULTIPROCESSING.name: "0",
    envs.VLLM_CPU_OMP_THREADS_BIND.name: "nobind",
    envs.TOKENIZERS_PARALLELISM.name: "false",
}


class WorkerLostError(CastVllmError, RuntimeError):
    """A shard kept killing its workers, or the workers did not start; the run gave up."""


def ensure_ray(num_cpus: int | None = None) -> bool:
    """Connect to the cluster in ``RAY_ADDRESS`` or start a local one. True if this call
    started Ray (the caller may shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = envs.ray_address()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    return True


class ActorBody:
    """What every actor body offers the pool besides its own ``run(shard)``."""

    def ready(self) -> int:
        return os.getpid()

    def cpu_seconds(self) -> float:
        import time

        return time.process_time()


class RayWorkers:
    """``workers`` actors of ``body(*args, threads)`` working through shards; started on first
    ``run``, alive until ``close``. ``what`` names the body in errors ("activation reader")."""

    def __init__(self, body: type, args: tuple, workers: int, *, what: str = "worker",
                 gpus_per_worker: float | None = None, cpus_per_worker: float | None = None, max_retries: int = 3,
                 start_timeout: float = 900.0):
        self.body = body
        self.args = args
        self.what = what
        self.workers = workers
        self.gpus_per_worker = gpus_per_worker
        self.cpus_per_worker = cpus_per_worker
        self.max_retries = max_retries
        self.start_timeout = start_timeout
        self.actors: list = []
        self.started_ray = False
        self._pid_refs: list = []
        self._actor_cls = None
        self._threads = 1

    def _new_actor(self):
        return self._actor_cls.remote(*self.args, self._threads)

    def start(self) -> None:
        import ray
        import torch
        from ray.exceptions import OutOfMemoryError, RayActorError

        self.started_ray = ensure_ray() or self.started_ray
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
            env.pop(envs.VLLM_CPU_OMP_THREADS_BIND.name)
        self._actor_cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0,
                                     runtime_env={"env_vars": env})(self.body)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self._pid_refs = [a.ready.remote() for a in self.actors]
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
            raise WorkerLostError(f"a Ray worker could not start its {self.what}: {exc}") from None
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise WorkerLostError(
                f"{self.workers} Ray workers did not start within {self.start_timeout:g} s; the cluster has "
                f"{free.get('CPU', 0)} CPU / {free.get('GPU', 0)} GPU free and each worker asks for {cpus} CPU / "
                f"{gpus} GPU") from None
        logger.info("started %d Ray workers (%s CPU, %s GPU each)", self.workers, cpus, gpus)

    def pids(self) -> list[int]:
        """Process ids of the actors (waits for a replacement to start)."""
        import ray

        return [int(p) for p in ray.get(list(self._pid_refs))]

    def cpu_seconds(self) -> float:
        """CPU time used so far, summed over the live actors."""
        import ray

        return float(sum(ray.get([a.cpu_seconds.remote() for a in self.actors]))) if self.actors else 0.0

    def run(self, shards: Sequence[list], todo: Sequence[int], finish: Callable[[int, int, Any], None],
            on_replace: Callable[[], None] = lambda: None) -> None:
        """Run ``shards[i]`` for every ``i`` in ``todo``; ``finish(i, worker, result)`` as each
        arrives, ``on_replace()`` when a dead worker is replaced."""
        import ray
        from ray.exceptions import ObjectLostError, OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError

        if not self.actors:
            self.start()
        pending = deque(todo)
        idle = deque(range(len(self.actors)))
        in_flight: dict = {}
        failures: dict[int, int] = {}
        while pending or in_flight:
            while pending and idle:
                w, i = idle.popleft(), pending.popleft()
                in_flight[self.actors[w].run.remote(shards[i])] = (w, i)
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            ref = ready[0]
            w, i = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as exc:  # the body raised: deterministic, do not retry
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
                on_replace()
                pending.appendleft(i)
                idle.append(w)
                continue
            idle.append(w)
            finish(i, w, result)

    def _replace(self, w: int) -> None:
        import ray

        try:
            ray.kill(self.actors[w], no_restart=True)
        except Exception:  # already dead
            pass
        self.actors[w] = self._new_actor()   # starts in the background; its first shard waits for it
        self._pid_refs[w] = self.actors[w].ready.remote()

    @staticmethod
    def _cancel(in_flight) -> None:
        import ray

        for ref in in_flight:
            ray.cancel(ref, force=False)

    def close(self, shutdown_ray: bool | None = None) -> None:
        """Kill the actors. Shuts Ray down if ``start`` started it (or if asked)."""
        if self.actors:
            import ray

            for actor in self.actors:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:
                    pass
            self.actors = []
        if shutdown_ray or (shutdown_ray is None and self.started_ray):
            import ray

            ray.shutdown()
            self.started_ray = False
