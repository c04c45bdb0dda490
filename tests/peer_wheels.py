"""Peers' own code for interop tests: the pinned wheels of ``cast_vllm.benchmarks.peer_wheels``
(sha256-checked, imported from the zip, never installed), for the duration of one test module.
A test skips when PyPI cannot be reached; a wheel whose hash changed fails."""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import pytest

from cast_vllm.benchmarks.peer_wheels import (REPENG, STEERING_VECTORS, PeerUnavailable, WheelPin, fetch_wheel,
                                              imported_from_wheel)

__all__ = ["REPENG", "STEERING_VECTORS", "peer_package"]


@contextlib.contextmanager
def peer_package(pin: WheelPin, tmp_path_factory) -> Iterator[types.ModuleType]:
    """The peer's own package for one test module (use from a module-scoped fixture)."""
    try:
        wheel = fetch_wheel(pin)
    except PeerUnavailable as exc:
        pytest.skip(str(exc))
    with imported_from_wheel(wheel, pin) as module:
        yield module
