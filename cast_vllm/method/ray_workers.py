"""The extraction's Ray actor body: one activation reader (``activations.py``) per actor,
reading the shards the pool (``cast_vllm/ray_pool.py``) hands it."""

from __future__ import annotations

import numpy as np

from cast_vllm.method.activations import ReaderConfig, open_reader
from cast_vllm.ray_pool import ActorBody


class ActivationWorker(ActorBody):
    """Ray actor body: builds one reader, serves shards."""

    def __init__(self, config: ReaderConfig, threads: int | None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.reader = open_reader(config)

    def run(self, token_ids: list[list[int]]) -> np.ndarray:
        return self.reader.read(token_ids)
