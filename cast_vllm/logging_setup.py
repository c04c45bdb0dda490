"""Logging for command-line entry points (the library itself only creates loggers).

A command's own output (results on stdout, our progress on stderr) must not drown in the
engines' chatter: vLLM logs a few hundred INFO lines per engine start, to stdout, plus one
WARNING per weight when a float32 checkpoint is cast to bfloat16. So, unless ``-v``:

- vLLM logs at WARNING, to stderr, with repeats of one call site collapsed after a few
  (through ``VLLM_LOGGING_CONFIG_PATH``, so vLLM's engine-core and worker processes apply it
  too); Ray's start-up INFO lines are dropped (its workers' logs never reach the driver: we
  start Ray with ``log_to_driver=False``); torch's C++ warnings and Python's FutureWarning and
  DeprecationWarning (library internals a user cannot act on) are hidden;
- our own loggers stay at INFO.

Every variable the user has set already wins; ``-v`` leaves vLLM at its INFO level, on stderr.
``cast-vllm serve`` keeps vLLM's logs as they are: for a server they are the output.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings

from cast_vllm import envs

REPEAT_LIMIT = 3
RAY_LOGGERS = ("ray._private.worker", "ray._private.services", "ray._private.node", "ray.util")
_VLLM_LOGGING_VARS = (envs.VLLM_LOGGING_CONFIG_PATH, envs.VLLM_LOGGING_LEVEL, envs.VLLM_LOGGING_STREAM)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_DATEFMT = "%H:%M:%S"


class RepeatFilter(logging.Filter):
    """Pass the first ``limit`` records of each call site, mark the last one passed, drop the rest."""

    def __init__(self, limit: int = REPEAT_LIMIT):
        super().__init__()
        self.limit = int(limit)
        self.seen: dict[tuple, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.pathname, record.lineno)
        n = self.seen[key] = self.seen.get(key, 0) + 1
        if n == self.limit:
            record.msg = f"{record.getMessage()} [further messages like this one are not shown; -v shows them]"
            record.args = None
        return n <= self.limit


def vllm_quiet_config(level: str = "WARNING") -> dict:
    """A ``logging.config.dictConfig`` for the ``vllm`` logger: ``level``, stderr, repeats collapsed."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"repeats": {"()": "cast_vllm.logging_setup.RepeatFilter", "limit": REPEAT_LIMIT}},
        "formatters": {"cast": {"format": _FORMAT, "datefmt": _DATEFMT}},
        "handlers": {"vllm": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "level": level,
                              "formatter": "cast", "filters": ["repeats"]}},
        "loggers": {"vllm": {"handlers": ["vllm"], "level": level, "propagate": False}},
    }


def _write_vllm_config(config: dict) -> str:
    """The config as a file for VLLM_LOGGING_CONFIG_PATH (child processes read it at start)."""
    from cast_vllm.atomic import atomic_write_bytes
    from cast_vllm.home import cast_home

    text = json.dumps(config, indent=1, sort_keys=True)
    path = cast_home() / "logging" / f"vllm-quiet-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
    if not (path.is_file() and path.read_text() == text):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, text.encode())
    return str(path)


def quiet_engines(verbose: bool = False) -> None:
    """Set the engines' logging (module doc) through the environment, before vLLM is imported."""
    if verbose:
        envs.set_default(envs.VLLM_LOGGING_STREAM, "ext://sys.stderr")
        return
    user_set = any(envs.is_set(v) for v in _VLLM_LOGGING_VARS) or envs.get(envs.VLLM_CONFIGURE_LOGGING) == "0"
    if not user_set:
        envs.put(envs.VLLM_LOGGING_LEVEL, "WARNING")
        envs.put(envs.VLLM_LOGGING_STREAM, "ext://sys.stderr")
        try:
            envs.put(envs.VLLM_LOGGING_CONFIG_PATH, _write_vllm_config(vllm_quiet_config()))
        except OSError as exc:  # an unwritable home: still quiet, only without the repeat filter
            logging.getLogger(__name__).debug("no vLLM logging config file: %s", exc)
    envs.set_default(envs.VLLM_LOGGING_LEVEL, "WARNING")
    envs.set_default(envs.TORCH_CPP_LOG_LEVEL, "ERROR")
    envs.set_default(envs.RAY_DEDUP_LOGS, "1")
    envs.set_default(envs.PYTHONWARNINGS, "ignore::FutureWarning,ignore::DeprecationWarning")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # Records logged before vLLM configures its logger (at its first import) reach our root handler.
    logging.getLogger("vllm").setLevel((envs.get(envs.VLLM_LOGGING_LEVEL) or "WARNING").upper())
    for name in RAY_LOGGERS:   # Ray resets the level of "ray" itself when it is imported
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_cli_logging(verbose: bool = False, quiet: bool = True) -> None:
    """Our loggers at INFO (DEBUG with ``verbose``) on stderr; the engines quiet unless
    ``verbose`` or not ``quiet`` (see the module doc)."""
    if quiet:
        quiet_engines(verbose)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=_FORMAT, datefmt=_DATEFMT)
