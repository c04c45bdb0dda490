"""``CastVllmError``: the one base of every error cast-vllm raises on purpose.

Each error also keeps the builtin base it always had (``ValueError`` for bad input,
``RuntimeError`` for a failed environment), so ``except ValueError`` callers keep working; the
CLI catches ``CastVllmError`` once and prints its message instead of a traceback.
"""

from __future__ import annotations


class CastVllmError(Exception):
    """An error whose message is meant for the user: it names the problem and what to do."""
