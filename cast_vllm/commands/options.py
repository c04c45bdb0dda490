"""Command-line options generated from a settings dataclass, so a default lives in one place.

``add_field(group, EvalConfig, "n_test", "target test items")`` adds ``--n-test`` with the
field's type, its default, and "(default 400)" appended to the help. With ``unset=True`` the
option's own default is None (the caller fills the gap, e.g. the suite's own defaults) while the
help still shows the dataclass default; ``given_fields`` collects what the user set.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Sequence


def comma_list(item_type: type):
    """An argparse ``type`` reading ``"1,2,4"`` as a list of ``item_type``."""
    def parse(text: str) -> list:
        try:
            return [item_type(x.strip()) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma list of {item_type.__name__}: {exc}") from exc
    parse.__name__ = f"comma list of {item_type.__name__}"
    return parse


def field_default(cls: type, name: str) -> Any:
    """The dataclass field's default (default_factory called); KeyError for an unknown field."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(shown(v) for v in value) if value else "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def add_field(group, cls: type, name: str, help: str, *, flag: str | None = None, unset: bool = False,
              note: str = "", **kwargs) -> argparse.Action:
    """Add the option for ``cls.name`` (see the module doc); ``note`` follows the default in the
    help ("; suite 2"). A bool field defaulting to False becomes a ``store_true`` flag."""
    default = field_default(cls, name)
    flag = flag or "--" + name.replace("_", "-")
    if isinstance(default, bool) and not kwargs.get("action"):
        if default:
            raise ValueError(f"{cls.__name__}.{name} defaults to True: give the option an explicit action")
        return group.add_argument(flag, dest=name, action="store_true", help=help)
    if "type" not in kwargs and "choices" not in kwargs and default is not None:
        if isinstance(default, (list, tuple)):
            kwargs["type"] = comma_list(type(default[0]) if default else str)
        else:
            kwargs["type"] = type(default)
    text = f"{help} (default {shown(default)}{note})" if default is not None else help
    return group.add_argument(flag, dest=name, default=None if unset else default, help=text, **kwargs)


def given_fields(args: argparse.Namespace, cls: type, names: Sequence[str] | None = None) -> dict[str, Any]:
    """``{field: value}`` for the dataclass fields present in ``args`` and not None."""
    wanted = set(names) if names is not None else {f.name for f in dataclasses.fields(cls)}
    return {name: getattr(args, name) for name in wanted
            if getattr(args, name, None) is not None}
