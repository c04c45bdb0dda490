"""vLLM general plugin: loaded by every vLLM process (front end, engine core, workers)."""


def register() -> None:
    pass
