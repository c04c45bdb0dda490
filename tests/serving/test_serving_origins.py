"""Uploads to the open server (no API key, CORS "*": what a web page can reach) need
`application/octet-stream`, and the steering routes are closed to other origins (issue 10: 1, 2)."""

from servers import error_message

SERVER = "open"
FOREIGN = "http://evil.example"


def test_upload_needs_octet_stream(server, good_upload):
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        r = server.upload("typed", good_upload, content_type)
        assert r.status_code == 415, (content_type, r.text)
        assert "application/octet-stream" in error_message(r)
    r = server.http("POST", "/v1/steering/vectors", params={"name": "typed"},
             files={"file": ("typed.safetensors", good_upload)})
    assert r.status_code == 415 and "multipart" in error_message(r)
    assert server.http("GET", "/v1/steering/vectors/typed").status_code == 404


def test_foreign_page_cannot_replace_a_vector(server, good_upload):
    """What a web page can send without a preflight: text/plain, its own Origin, overwrite=true."""
    before = server.http("GET", "/v1/steering/vectors/v0").json()
    for content_type in ("text/plain", "application/octet-stream"):
        r = server.http("POST", "/v1/steering/vectors", params={"name": "v0", "overwrite": "true"},
                 data=good_upload, headers={"Content-Type": content_type, "Origin": FOREIGN})
        assert r.status_code == 403, r.text
        assert "cross-origin requests to steering routes are refused" in error_message(r)
    r = server.http("POST", "/v1/steering/vectors", json={"name": "v0"}, headers={"Origin": FOREIGN})
    assert r.status_code == 403
    r = server.http("DELETE", "/v1/steering/vectors/v0", headers={"Origin": "null"})
    assert r.status_code == 403
    after = server.http("GET", "/v1/steering/vectors/v0").json()
    assert after["source"] == before["source"] == "vector_dir" and after["metadata"] == before["metadata"]


def test_same_origin_and_originless_uploads_work(server, good_upload):
    r = server.upload("same-origin", good_upload)
    assert r.status_code == 201, r.text
    r = server.http("POST", "/v1/steering/vectors", params={"name": "same-origin", "overwrite": "true"},
             data=good_upload, headers={"Content-Type": "application/octet-stream",
                                        "Origin": f"http://127.0.0.1:{server.port}"})
    assert r.status_code == 201, r.text
    assert server.http("DELETE", "/v1/steering/vectors/same-origin",
                headers={"Origin": f"http://127.0.0.1:{server.port}"}).status_code == 200


def test_no_cors_on_steering_routes(server):
    preflight = {"Origin": FOREIGN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    for path in ("/v1/steering/vectors", "/v1/steering/vectors/v0"):
        r = server.http("OPTIONS", path, headers=preflight)
        assert r.status_code == 403, (path, r.status_code)
        assert not [h for h in r.headers if h.lower().startswith("access-control-allow")], r.headers
    r = server.http("GET", "/v1/steering/vectors", headers={"Origin": FOREIGN})
    assert r.status_code == 200 and "access-control-allow-origin" not in {h.lower() for h in r.headers}
    assert server.http("DELETE", "/v1/steering/vectors/v0", headers={"Origin": FOREIGN}).status_code == 403
    # the OpenAI routes keep vLLM's own CORS (--allowed-origins)
    r = server.http("OPTIONS", "/v1/completions", headers=preflight)
    assert r.status_code == 200 and r.headers.get("access-control-allow-origin") == "*"
    r = server.http("GET", "/v1/models", headers={"Origin": FOREIGN})
    assert r.headers.get("access-control-allow-origin") == "*"
