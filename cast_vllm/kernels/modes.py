"""The steering modes and their kernel ids: the one definition (torch-free).

The spec validates mode names against ``MODES``, the slot table stores ``MODE_IDS[name]`` per
layer and slot, and the kernels branch on the ids (``modes[slot]``).
"""

from __future__ import annotations

MODE_ADD = 0                 # h + scale * v
MODE_NORM_PRESERVING = 1     # (h + scale * v) * ||h|| / ||h + scale * v||

#: mode name (as in a steering spec) -> id stored in the slot table
MODE_IDS: dict[str, int] = {"add": MODE_ADD, "norm_preserving": MODE_NORM_PRESERVING}

#: the mode names, in id order
MODES: tuple[str, ...] = tuple(sorted(MODE_IDS, key=MODE_IDS.__getitem__))
