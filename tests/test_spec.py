"""The per-request spec parser: every accepted form, and every refusal (the `spec` cases of
tests/bad_inputs.py)."""

import pytest
from bad_inputs import cases

from cast_vllm.spec import SteeringComponent, SteeringSpecError, parse_steering, phase_masks, slots_needed


def test_unsteered():
    assert parse_steering(None) is None
    assert parse_steering({}) is None
    assert parse_steering({"other": 1}) is None


def test_forms_agree():
    full = {"vector": "v", "scale": 4.0, "layers": [14, 12], "positions": "all", "mode": "add"}
    expected = [SteeringComponent("v", 4.0, (12, 14), "all", "add")]
    assert parse_steering({"steering": full}) == expected
    assert parse_steering({"steering": [full]}) == expected
    import json
    assert parse_steering({"steering": json.dumps(full)}) == expected
    assert parse_steering({"steering": "v", "steering_scale": 4.0, "steering_layers": [12, 14]}) == expected
    assert parse_steering({"steering": "v", "steering_scale": "4", "steering_layers": "[12, 14]"}) == expected


def test_defaults():
    (c,) = parse_steering({"steering": "v"})
    assert (c.scale, c.layers, c.positions, c.mode) == (1.0, None, "all", "add")


@pytest.mark.parametrize("case", cases("spec"))
def test_refusals(case):
    with pytest.raises(SteeringSpecError) as err:
        parse_steering(case.extra)
    assert case.message in str(err.value)


def test_phase_masks_and_slots():
    assert phase_masks(["all"]) == {0: (0,), 1: (0,), 2: (0,)}
    assert slots_needed(["all"]) == 1
    assert phase_masks(["last_prompt"]) == {1: (0,)}
    assert phase_masks(["prompt", "generated"]) == {0: (0,), 1: (0,), 2: (1,)}
    assert slots_needed(["prompt", "generated"]) == 2
    assert slots_needed(["prompt", "last_prompt", "generated"]) == 3
