"""``ExtractOptions``: every setting of an extraction, with its default (the ``extract`` CLI is
generated from these fields) and the checks that refuse a bad combination before any model
loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cast_vllm.errors import CastVllmError
from cast_vllm.method.selection import SELECTION_RULES, TARGET_RULES

#: how the per-sample differences become one direction per layer (``cast_math.aggregate_differences``)
AGGREGATES = ("mean", "pca")


class ExtractionError(CastVllmError, ValueError):
    """Extraction cannot run as asked; the message names the setting."""


@dataclass
class ExtractOptions:
    """Every knob of ``extract``. ``sources`` and ``tasks`` pair up (one task for all sources
    is fine); ``model`` is a folder or an embedded model name."""

    model: str
    sources: Sequence[str]
    tasks: Sequence[str] = ("sentiment",)
    layers: str | Sequence[int] | None = None          # None / "all", "5-10", "3,5,7"
    num_selected: int = 64
    num_demos: int = 4
    selection: str = "ideal"
    seed: int = 0
    pool_size: int = 1000                                # 0: the whole source file
    selection_layer: int | None = None                   # default num_layers // 2
    neighbors: int = 10
    diffusion_steps: int = 10
    diffusion_runs: int = 10
    aggregate: str = "mean"
    balance_labels: bool = False                         # label-balanced demonstrations and mean
    chat: bool = False
    target: str | None = None                            # for multi-source similarity weights
    compare: Sequence[tuple[str, str]] = ()              # (file, task): differences for reports only
    target_task: str | None = None
    target_size: int = 200
    similarity_threshold: float = 0.0
    backend: str = "vllm"
    workers: int = 1
    shard_size: int = 64
    checkpoint_dir: str | None = None
    dtype: str = "auto"
    batch_size: int = 8
    max_model_len: int | None = None
    kv_cache_bytes: int = 512 << 20
    enforce_eager: bool = True

    def validate(self) -> None:
        if not self.sources:
            raise ExtractionError("at least one source file is needed")
        if len(self.tasks) not in (1, len(self.sources)):
            raise ExtractionError(f"give one task for all sources or one per source: {len(self.sources)} sources, "
                                  f"{len(self.tasks)} tasks")
        if self.selection not in SELECTION_RULES:
            raise ExtractionError(f"unknown selection {self.selection!r}; use one of {', '.join(SELECTION_RULES)}")
        if self.aggregate not in AGGREGATES:
            raise ExtractionError(f"unknown aggregate {self.aggregate!r}; use one of {', '.join(AGGREGATES)}")
        if self.num_selected < 2:
            raise ExtractionError(f"--num-selected must be >= 2 (demonstrations come from the other selected "
                                  f"samples), got {self.num_selected}")
        if not 1 <= self.num_demos < self.num_selected:
            raise ExtractionError(f"--num-demos must be in [1, num_selected - 1] = [1, {self.num_selected - 1}], "
                                  f"got {self.num_demos}")
        if self.pool_size < 0 or self.target_size < 1 or self.workers < 1 or self.shard_size < 1:
            raise ExtractionError("pool_size must be >= 0, target_size, workers and shard_size >= 1")
        if self.target_task and not self.target:
            raise ExtractionError("--target-task needs --target")
        if self.selection in TARGET_RULES and not self.target:
            raise ExtractionError(f"--selection {self.selection} measures influence on the target: give --target")
