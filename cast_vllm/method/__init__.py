"""CAST, the method: steering vectors from a source task's few-shot minus zero-shot activations.

- ``tasks/``: record formats (a registry), task specs and files, data files, prompts;
- ``activations.py``: last-prompt-token residual states through vLLM (probe) or HF hooks;
- ``selection.py``: which source samples build the vector (IDEAL influence diffusion, ablations);
- ``source_shift.py``: one source's selection -> demonstrations -> few-shot minus zero-shot,
  shared by ``extract`` and ``eval``;
- ``cast_math.py``: demonstration assignment, aggregation, source weights, random control;
- ``options.py`` and ``pipeline.py``: ``extract``'s settings and the whole offline run;
- ``pool.py``, ``ray_workers.py``, ``checkpoints.py``: sharded reading, on Ray actors, resumable;
- ``report.py``: analysis plots of an extraction.
"""
