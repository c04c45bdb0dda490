"""Activation-probe architectures for vLLM's pooling runner (filled in by the extraction work)."""

PROBE_ARCHITECTURES: dict[str, str] = {}
