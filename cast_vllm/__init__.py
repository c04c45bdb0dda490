"""cast-vllm: CAST steering vectors served by vLLM, many vectors per batch."""

__all__ = ["SteeredLLM", "SteeringVector"]
__version__ = "0.1.0"


def __getattr__(name):
    # SteeredLLM imports vLLM (seconds), SteeringVector torch: load them only when asked for.
    if name == "SteeredLLM":
        from cast_vllm.llm import SteeredLLM

        return SteeredLLM
    if name == "SteeringVector":
        from cast_vllm.vectors import SteeringVector

        return SteeringVector
    raise AttributeError(name)
