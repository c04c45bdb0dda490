"""The open server's limits (issue 10: 3): vector name length, uploaded vectors, concurrent
uploads, the load-by-name body."""

import json
import threading
import time

from servers import MAX_UPLOADED, completion, error_message

SERVER = "open"


def test_long_vector_names_are_400(server, model_name, good_upload):
    name = "n" * 300
    r = server.upload(name, good_upload)
    assert r.status_code == 400 and "exceeds the limit of 128" in error_message(r), r.text
    r = server.http("GET", f"/v1/steering/vectors/{name}")
    assert r.status_code == 400 and "128" in error_message(r)
    assert server.http("DELETE", f"/v1/steering/vectors/{name}").status_code == 400
    assert server.http("POST", "/v1/steering/vectors", json={"name": name}).status_code == 400
    r = completion(server, model_name, vllm_xargs={"steering": name})
    assert r.status_code == 400, r.text
    assert server.upload("n" * 128, good_upload).status_code == 201
    assert server.http("DELETE", f"/v1/steering/vectors/{'n' * 128}").status_code == 200


def test_uploaded_vector_count_is_limited(server, good_upload):
    names = [f"count{i}" for i in range(MAX_UPLOADED)]
    try:
        for name in names:
            assert server.upload(name, good_upload).status_code == 201
        r = server.upload("count-extra", good_upload)
        assert r.status_code == 409 and "--max-uploaded-vectors" in error_message(r), r.text
        assert server.upload(names[0], good_upload, overwrite="true").status_code == 201  # a replacement
        assert server.http("DELETE", f"/v1/steering/vectors/{names[0]}").status_code == 200
        assert server.upload("count-extra", good_upload).status_code == 201
        names.append("count-extra")
    finally:
        for name in names:
            server.http("DELETE", f"/v1/steering/vectors/{name}")
    assert not {v["name"] for v in server.http("GET", "/v1/steering/vectors").json()["data"]} & set(names)


def test_concurrent_uploads_are_limited(server):
    """Four bodies held open fill the upload buffers; a fifth upload is 429 until one ends."""
    import requests

    release = threading.Event()
    results: list[int] = []

    def slow_body():
        yield b"\x08\x00\x00\x00\x00\x00\x00\x00"
        release.wait(30)
        yield b"{}"

    def slow_upload(i):
        r = requests.post(f"{server.url}/v1/steering/vectors", params={"name": f"slow{i}"}, data=slow_body(),
                          headers={"Content-Type": "application/octet-stream"}, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=slow_upload, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline, status = time.monotonic() + 20, None
        while time.monotonic() < deadline:
            r = server.upload("fifth", b"not a safetensors file")
            status = r.status_code
            if status == 429:
                assert "--max-concurrent-uploads 4" in error_message(r)
                break
            assert status == 400, r.text  # buffers free: refused for its bytes
            time.sleep(0.1)
        assert status == 429
    finally:
        release.set()
        for t in threads:
            t.join(60)
    assert results == [400] * 4
    assert server.upload("fifth", b"not a safetensors file").status_code == 400


def test_load_by_name_body_is_limited(server):
    r = server.http("POST", "/v1/steering/vectors", data=json.dumps({"name": "v0", "pad": "x" * 70_000}),
             headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "JSON body" in error_message(r)
