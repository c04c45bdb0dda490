"""Release an offline vLLM engine now, not at garbage collection: tools that open one engine
after another (the eval suite, the activation reader) would otherwise hold two at once."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def shutdown_llm(llm) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        try:
            core.shutdown()
        except Exception:  # best effort: the engine may already be gone
            logger.debug("engine shutdown failed", exc_info=True)
