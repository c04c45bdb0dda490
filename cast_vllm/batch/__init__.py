"""Offline batch inference at scale: ``cast-vllm batch`` (requests.py -> runner.py -> results.py),
one engine per worker (shard_runner.py), in this process or on Ray actors (``ray_pool.py``)."""
