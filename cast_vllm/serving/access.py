"""Who can reach the steered server: the API keys vLLM enforces, and a loud warning when other
machines can reach a server that has none (they could then replace or delete vectors)."""

from __future__ import annotations

import ipaddress
import logging
from argparse import Namespace

logger = logging.getLogger(__name__)


def api_keys(args: Namespace) -> list[str]:
    """The keys vLLM itself enforces (``--api-key`` first, else ``VLLM_API_KEY``)."""
    import vllm.envs as envs

    return [k for k in (getattr(args, "api_key", None) or [envs.VLLM_API_KEY]) if k]


def is_loopback(host: str | None) -> bool:
    """True for an address only this machine can reach (no host: every interface, so False)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable from elsewhere


def warn_if_exposed(args: Namespace) -> bool:
    """Log the warning when the bind address is reachable from elsewhere without a key; True if so."""
    if api_keys(args) or getattr(args, "uds", None) or is_loopback(getattr(args, "host", None)):
        return False
    logger.warning(
        "!!! the steered server binds %s WITHOUT an API key: anyone who can reach this address can generate, "
        "list, upload, replace and delete steering vectors. Pass --api-key KEY (or set VLLM_API_KEY), or bind "
        "127.0.0.1 (--host 127.0.0.1). !!!", getattr(args, "host", None) or "every interface")
    return True
