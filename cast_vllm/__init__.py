"""cast-vllm: CAST steering vectors served by vLLM, many vectors per batch."""

__all__ = ["SteeredLLM", "SteeringVector", "__version__"]
__version__ = "0.1.0"   # the one place: pyproject.toml reads it (dynamic version)


def __getattr__(name):
    # SteeredLLM imports vLLM (seconds), SteeringVector torch: load them only when asked for,
    # so `import cast_vllm` stays light and works (and can say how to install vLLM) without it.
    if name == "SteeredLLM":
        import importlib.util

        from cast_vllm.engine.vllm_compat import VLLMNotInstalledError

        if importlib.util.find_spec("vllm") is None:
            raise VLLMNotInstalledError()
        from cast_vllm.llm import SteeredLLM

        return SteeredLLM
    if name == "SteeringVector":
        from cast_vllm.vectors import SteeringVector

        return SteeringVector
    raise AttributeError(name)
