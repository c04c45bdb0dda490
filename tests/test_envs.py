"""Settings live in one place: environment variables in cast_vllm.envs, option defaults in the
dataclasses the CLI generates its options from."""

import argparse
import dataclasses
from pathlib import Path

import pytest


def test_readme_lists_every_environment_variable():
    from cast_vllm import envs

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [v.name for v in envs.VARIABLES if f"`{v.name}`" not in readme]
    assert not missing, f"README 'Environment variables' lacks {missing}"


def test_no_module_but_envs_touches_os_environ():
    import cast_vllm

    root = Path(cast_vllm.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "envs.py" and "os.environ" in p.read_text()]
    assert not offenders, f"read or set environment variables through cast_vllm.envs: {offenders}"



@pytest.mark.parametrize("command,config", [("eval", "cast_vllm.evaluation.config:EvalConfig"),
                                            ("extract", "cast_vllm.method.options:ExtractOptions")])
def test_cli_defaults_are_the_dataclass_defaults(command, config):
    """Every option named after a dataclass field shows that field's default (or None, where the
    command fills the gap itself), so a default changed in the dataclass changes the CLI too."""
    import importlib

    from cast_vllm.commands.options import field_default, shown

    module, cls_name = config.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    parser = argparse.ArgumentParser()
    command_module = importlib.import_module(f"cast_vllm.commands.{command}")
    command_module.add_arguments(parser)
    # eval's per-pair fields (model, source, target, task, ...) are the pair's, not defaults
    fields = {f.name for f in dataclasses.fields(cls)} - set(getattr(command_module, "PAIR_FIELDS", ()))
    checked = 0
    for action in parser._actions:
        if action.dest not in fields or action.const is not None:
            continue
        try:
            default = field_default(cls, action.dest)
        except KeyError:
            continue
        checked += 1
        assert action.default in (None, default) or list(action.default) == list(default), action.dest
        if default not in (None, (), []) and not isinstance(default, bool):
            assert f"default {shown(default)}" in (action.help or ""), (action.dest, action.help)
    assert checked >= 8


def test_our_errors_share_one_base():
    """Every error class in the package derives from CastVllmError (the CLI catches it once)."""
    import importlib
    import inspect
    import pkgutil

    import cast_vllm
    from cast_vllm.errors import CastVllmError

    skip = {"cast_vllm.engine.model_state_v2"}   # needs CUDA vLLM internals
    loose = []
    for info in pkgutil.walk_packages(cast_vllm.__path__, "cast_vllm."):
        if info.name in skip:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                    and not issubclass(obj, CastVllmError)):
                loose.append(f"{info.name}.{name}")
    assert not loose, f"derive these from cast_vllm.errors.CastVllmError: {loose}"


@pytest.mark.parametrize("max_num_seqs,layers,hidden,slots", [
    (8, 30, 576, 8),            # the default model in the tests: one slot per sequence
    (256, 32, 4096, 256),       # a 7B model: 135 MB of table
    (1024, 80, 8192, 256),      # capped at 256 (EasySteer's rule)
    (512, 128, 16384, 127),     # a 1 GiB table holds only 127 rows this wide
])
def test_default_slots_follow_max_num_seqs_within_bounds(max_num_seqs, layers, hidden, slots):
    from cast_vllm.engine.settings import MAX_AUTO_TABLE_BYTES, auto_slots

    assert auto_slots(max_num_seqs, layers, hidden) == slots
    assert slots * layers * (4 * hidden + 4) <= MAX_AUTO_TABLE_BYTES


def test_explicit_slots_win_and_auto_is_not_written_to_the_config():
    from cast_vllm.engine.settings import SteeringSettings

    assert "cast_max_steering_vectors" not in SteeringSettings(("d",)).to_overrides()
    assert SteeringSettings(("d",), 5).to_overrides()["cast_max_steering_vectors"] == 5
