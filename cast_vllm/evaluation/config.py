"""What one source -> target evaluation runs with: ``EvalConfig``, its defaults (the CLI's
options are generated from them) and the checks that refuse an unusable configuration before
any engine starts."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from cast_vllm.errors import CastVllmError
from cast_vllm.evaluation import scoring
from cast_vllm.evaluation.methods import METHODS, parse_methods

ABLATION_SETTINGS = ("own", "cast")    # cast_random_selection / mean_diff: own search or CAST's setting


class EvalConfigError(CastVllmError, ValueError):
    """An evaluation that cannot run as configured; the message names the setting."""


@dataclass
class EvalConfig:
    model: str
    source: str
    target: str
    task: str = "sentiment"                 # target task format or task file
    source_task: str | None = None          # default: task
    extra_sources: Sequence[str] = ()       # cast_multi_source: more source files (source_task format)
    similarity_threshold: float = 0.0       # cast_multi_source: sources less similar to the target are dropped
    methods: Sequence[str] = METHODS
    seeds: int = 3
    n_test: int = 400
    n_dev: int = 100
    split_seed: int = 0
    pool_size: int = 128
    num_selected: int = 32
    num_demos: int = 4                      # demonstrations per few-shot prompt when building vectors
    icl_shots: Sequence[int] = (1, 2, 4)    # candidates for k, chosen on dev
    alphas: Sequence[float] = (1.0, 0.5, 2.0, 4.0)
    modes: Sequence[str] = ("norm_preserving", "add")
    positions: Sequence[str] = ("last_prompt", "all")
    layer_fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5)
    layer_width: int | None = None
    vary_width: bool = True
    tune_each_seed: bool = False
    ablation_settings: str = "own"          # own | cast
    calibration: str = "none"               # none | dev
    scoring: str = "auto"                   # auto | labels | generate
    max_labels: int = 16
    max_new_tokens: int = 8
    latency_items: int = 64
    latency_batch: int = 16
    latency_rounds: int = 3
    name: str = ""

    def validate(self) -> None:
        self.methods = parse_methods(self.methods)
        if self.seeds < 1:
            raise EvalConfigError(f"seeds must be >= 1, got {self.seeds}")
        if self.calibration not in scoring.CALIBRATIONS:
            raise EvalConfigError(f"calibration must be one of {scoring.CALIBRATIONS}, got {self.calibration!r}")
        if self.scoring not in scoring.SCORINGS:
            raise EvalConfigError(f"scoring must be one of {scoring.SCORINGS}, got {self.scoring!r}")
        if self.ablation_settings not in ABLATION_SETTINGS:
            raise EvalConfigError(f"ablation_settings must be 'own' or 'cast', got {self.ablation_settings!r}")
        if not self.icl_shots or any(k < 1 for k in self.icl_shots):
            raise EvalConfigError(f"icl_shots must be positive integers, got {list(self.icl_shots)}")
        if max(self.icl_shots) >= self.n_dev and "target_icl" in self.methods:
            raise EvalConfigError(f"target_icl needs n_dev > max(icl_shots) = {max(self.icl_shots)}")
        if self.pool_size and self.pool_size < self.num_selected:
            raise EvalConfigError(f"pool_size {self.pool_size} is smaller than num_selected {self.num_selected}")
        if self.latency_batch < 1 or self.latency_items < 0 or self.latency_rounds < 1:
            raise EvalConfigError("latency_batch and latency_rounds must be >= 1 and latency_items >= 0")
        if "cast_multi_source" in self.methods and not self.extra_sources:
            raise EvalConfigError("cast_multi_source needs extra_sources (--extra-sources a.jsonl,b.jsonl)")
        if not -1.0 <= self.similarity_threshold < 1.0:
            raise EvalConfigError(f"similarity_threshold must be in [-1, 1), got {self.similarity_threshold}")
        sources = [str(Path(p).resolve()) for p in (self.source, *self.extra_sources)]
        if len(set(sources)) != len(sources):
            raise EvalConfigError("extra_sources must differ from each other and from the source")
        for path, what in ((self.source, "source"), (self.target, "target"),
                           *((p, "extra source") for p in self.extra_sources)):
            if not Path(path).is_file():
                raise EvalConfigError(f"{what} file {path} does not exist")

    def to_json_dict(self) -> dict[str, Any]:
        """Every field, tuples as lists (the result's ``config`` entry)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
