"""Fused kernels of the steering engine, each beside its torch reference.

- ``modes``: the steering mode ids the kernels, the slot table and the spec share (torch-free);
- ``steer_residual``: the fused residual-stream steering op: torch reference, Triton kernel,
  its registration as the custom op ``torch.ops.cast_vllm.steer_residual``, and
  ``steering_fn(device)``, the one dispatcher.

Tests: ``tests/test_kernel_steer_residual.py`` (the Triton kernel on CPU under
``TRITON_INTERPRET=1``). Benchmark: ``cast-vllm bench kernel`` (``bench/kernel.py``).
This package imports nothing heavy: ``--help`` and the spec work without torch.
"""
