"""Property-based (issue 10: 7): generated request bodies and malformed safetensors uploads never
break the open server: no 5xx, no error inside a 200 stream, and it answers as before after them."""

import json
import struct

from servers import STEER, completion, text_of

SERVER = "open"


def _json_values():
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10 ** 30), max_value=10 ** 30),
                        st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                        max_leaves=12)


def _steering_specs():
    from hypothesis import strategies as st

    names = st.one_of(st.sampled_from(["v0", "v1", "missing", "../v0", "", "n" * 300]),
                      st.text(min_size=1, max_size=200))
    component = st.fixed_dictionaries(
        {"vector": names},
        optional={"scale": st.one_of(st.floats(), st.integers(), st.text(max_size=8), st.sampled_from(["1e400"])),
                  "layers": st.one_of(st.lists(st.integers(min_value=-5, max_value=10 ** 12), max_size=6),
                                      st.text(max_size=10)),
                  "positions": st.sampled_from(["all", "prompt", "generated", "last_prompt", "middle"]),
                  "mode": st.sampled_from(["add", "norm_preserving", "multiply"])})
    spec = st.one_of(names, component, st.lists(component, max_size=20), _json_values())
    flat_value = st.one_of(st.integers(min_value=-(10 ** 400), max_value=10 ** 400), st.floats(), st.text(max_size=30),
                           st.lists(st.integers(min_value=-5, max_value=40), max_size=5))
    keys = st.one_of(st.sampled_from(["steering", "steering_scale", "steering_layers", "steering_positions",
                                      "steering_mode", "steerng", "cast_resolved", "cast_x", "seed"]),
                     st.text(max_size=12))
    xargs = st.dictionaries(keys, st.one_of(flat_value, spec.map(json.dumps), _json_values()), max_size=5)
    return st.fixed_dictionaries({}, optional={"vllm_xargs": st.one_of(xargs, _json_values()), "steering": spec,
                                               "use_beam_search": st.booleans()})


def _safetensors_bodies():
    from hypothesis import strategies as st

    entry = st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F64", "X"]),
        "shape": st.lists(st.integers(min_value=-2, max_value=2 ** 40), max_size=3),
        "data_offsets": st.lists(st.integers(min_value=-1, max_value=2 ** 40), min_size=0, max_size=3)})
    header = st.dictionaries(st.sampled_from(["layer.0", "layer.3", "layer.99", "layer.-1", "direction.1", "x",
                                              "__metadata__"]),
                             st.one_of(entry, _json_values()), max_size=4)

    def assemble(h, data, length_delta):
        raw = json.dumps(h).encode()
        return struct.pack("<Q", max(len(raw) + length_delta, 0)) + raw + data

    structured = st.builds(assemble, header, st.binary(max_size=600),
                           st.sampled_from([0, 0, 0, -1, 1, 2 ** 40]))
    return st.one_of(structured, st.binary(max_size=400))


def _stream_errors(content: bytes) -> list:
    events = [line[len(b"data: "):] for line in content.split(b"\n\n") if line.startswith(b"data: {")]
    return [e for e in map(json.loads, events) if "error" in e]


def test_property_no_input_breaks_the_server(server, model_name, good_upload):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    steered_before = text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)}))
    seen: dict[int, int] = {}

    @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_steering_specs(), st.booleans())
    def specs(extra, stream):
        body = {"model": model_name, "prompt": "hello", "max_tokens": 1, "temperature": 0.0, "stream": stream,
                **extra}
        r = server.http("POST", "/v1/completions", data=json.dumps(body), headers={"Content-Type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code < 500, (body, r.text)
        if r.status_code == 200 and not stream:
            assert r.json()["choices"]
        if r.status_code == 200 and stream:
            assert r.content.endswith(b"data: [DONE]\n\n") and not _stream_errors(r.content), (body, r.content)

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(_safetensors_bodies())
    def uploads(data):
        r = server.upload("fuzz", data, overwrite="true")
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        assert r.status_code in (201, 400, 413), (data[:200], r.text)

    specs()
    uploads()
    assert seen.get(400, 0) > 0 and seen.get(200, 0) > 0, seen
    server.http("DELETE", "/v1/steering/vectors/fuzz")
    assert server.healthy()
    assert text_of(completion(server, model_name, vllm_xargs={"steering": json.dumps(STEER)})) == steered_before
    assert server.upload("after-fuzz", good_upload).status_code == 201
    assert server.http("DELETE", "/v1/steering/vectors/after-fuzz").status_code == 200
