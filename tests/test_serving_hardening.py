"""The HTTP API's defences, on a stand-in understander (no model): every bad request is a JSON 4xx that
echoes nothing it was sent; request ids; API keys; the body read timeout; one bad item in a batch.

Each test here is the regression test of a failure found on loopback: a 120k-deep JSON body (500),
a lone surrogate in a text (500 for it and its batch), a 415 echoing the Content-Type, an
X-Request-ID echoed raw, a body that never comes (connection held forever), no authentication,
``lang: "fr"`` accepted. ``tests/test_serving.py`` fuzzes the same API on a real model.
"""

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
from starlette.testclient import TestClient

from findial.serving.settings import ServeSettings, SettingsError

CARD = "6222021234567890128"
KEY = "test-key-0123456789abcdef"


class StandIn:
    """An understander that answers every turn the same way, and records what it was given."""

    metrics = None

    def __init__(self):
        self.seen = []

    async def start(self):
        pass

    async def stop(self):
        pass

    async def status(self):
        return {
            "ready": True,
            "model": {"ref": "stand-in", "name": "stand-in", "version": "1"},
            "last_error": None,
            "reloads": {},
        }

    async def understand(self, item):
        self.seen.append(item)
        return (
            {
                "text": item.text,
                "intent": "greeting",
                "confidence": 0.9,
                "emotion": "neutral",
                "emotion_confidence": 0.9,
                "entities": [],
                "state": {},
                "unknown_terms": [],
            },
            {"ref": "stand-in", "name": "stand-in", "version": "1"},
        )


class Echo:
    name, version = "echo", "0"

    def respond(self, understanding, history):
        return understanding["intent"]


@pytest.fixture()
def make_settings(compose, tmp_path):
    from omegaconf import OmegaConf

    def make(*overrides: str) -> ServeSettings:
        cfg = compose("serve", [f"audit.path={tmp_path}/audit.jsonl", "responder.model_ref=null", *overrides])
        return ServeSettings.from_mapping(OmegaConf.to_container(cfg, resolve=True))

    return make


@pytest.fixture()
def client(make_settings):
    """A TestClient over the app on the stand-in; ``client(*overrides)``. Server errors come back as responses."""
    from findial.serving.app import create_app

    clients = []

    def make(*overrides: str, understander=None) -> TestClient:
        app = create_app(make_settings(*overrides), understander or StandIn(), Echo())
        c = TestClient(app, raise_server_exceptions=False)
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def post_raw(c: TestClient, path: str, body: bytes, ctype: str = "application/json", **headers):
    return c.post(path, content=body, headers={"content-type": ctype, **headers})


def assert_json_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and r.json()["request_id"]
    return err


# ------------------------------------------------------------------------------------------------ 1. nesting
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 120_000,
        b'{"text": ' + b"[" * 120_000,
        b"[" * 500 + b"]" * 500,
        b'{"text": "hi", "context": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
    ids=["120k-open", "120k-in-a-field", "500-closed", "40-in-context"],
)
def test_a_deeply_nested_body_is_a_400(client, body):
    assert_json_error(post_raw(client(), "/v1/understand", body), 400, "too_deeply_nested")


def test_a_number_too_long_to_convert_is_a_400(client):
    body = b'{"text": "hi", "session_id": ' + b"7" * 5000 + b"}"
    assert_json_error(post_raw(client(), "/v1/understand", body), 400, "invalid_json")


# ------------------------------------------------------------------------- 2a. control characters, surrogates
@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/understand", b'{"text": "card \\ud800 lost"}', "body.text"),
        ("/v1/understand", b'{"text": "\\udfff"}', "body.text"),
        ("/v1/understand", b'{"text": "nul \\u0000 here"}', "body.text"),
        ("/v1/understand", b'{"text": "bell \\u0007"}', "body.text"),
        ("/v1/understand", b'{"text": "hi", "session_id": "s\\ud800"}', "body.session_id"),
        ("/v1/understand", b'{"text": "hi", "session_id": "s\\u0000"}', "body.session_id"),
        (
            "/v1/understand",
            b'{"text": "hi", "context": [{"speaker": "user", "text": "x\\ud800"}]}',
            "body.context.0.text",
        ),
        ("/v1/respond", b'{"text": "a\\u001bb"}', "body.text"),
        ("/v1/dialogue/s-1", b'{"text": "\\ud83d"}', "body.text"),
        ("/v1/dialogue/s-1", b'{"speaker": "agent", "text": "ok\\u0000"}', "body.text"),
    ],
    ids=[
        "surrogate",
        "low-surrogate",
        "nul",
        "bell",
        "session-surrogate",
        "session-nul",
        "context-surrogate",
        "respond-escape",
        "dialogue-surrogate",
        "agent-nul",
    ],
)
def test_control_characters_and_lone_surrogates_are_a_422_naming_the_field(client, path, body, field):
    stand_in = StandIn()
    err = assert_json_error(post_raw(client(understander=stand_in), path, body), 422, "invalid_request")
    assert [d["field"] for d in err["details"]] == [field] and field in err["message"]
    assert stand_in.seen == []  # nothing reached the model


@pytest.mark.parametrize("text", ["\u200b", " \u00a0\u3000\n\t", "\x85\u2028", "\ufeff\u200d "])
def test_text_of_only_whitespace_or_format_characters_is_empty(client, text):
    c = client()
    assert_json_error(c.post("/v1/understand", json={"text": text}), 422, "empty_text")
    assert_json_error(
        c.post("/v1/understand", json={"text": "hi", "context": [{"speaker": "user", "text": text}]}), 422, "empty_text"
    )


def test_newlines_and_tabs_are_fine_and_a_trailing_newline_is_no_session_id(client):
    c = client()
    assert c.post("/v1/understand", json={"text": "line one\r\nline\ttwo"}).status_code == 200
    assert (
        post_raw(c, "/v1/understand", b'{"text": "a pair \\ud83d\\ude00 is fine"}').json()["text"]
        == "a pair \U0001f600 is fine"
    )
    err = assert_json_error(
        c.post("/v1/understand", json={"text": "hi", "session_id": "call-1\n"}), 422, "invalid_session_id"
    )
    assert err["details"] == [{"field": "body.session_id"}]


# ------------------------------------------------------------------------------------------- 2b. the batch
def test_a_failing_item_fails_alone_and_its_batch_neighbours_get_answers(monkeypatch):
    from types import SimpleNamespace

    from findial.serving import batcher
    from findial.serving.understanding import TurnInput

    class Pipeline:
        """Stands in for NLUPipeline: raises on the whole batch whenever it holds the item "boom"."""

        def __init__(self):
            self.batches = []

        def understand(self, items):
            self.batches.append([it.text for it in items])
            if any(it.text == "boom" for it in items):
                raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
            return [{"text": it.text, "intent": "greeting"} for it in items]

    pipeline = Pipeline()
    monkeypatch.setattr(batcher, "understand_batch", lambda p, items: p.understand(items))
    model = SimpleNamespace(pipeline=pipeline, info=lambda: {"version": "1"})
    holder = SimpleNamespace(current=model, last_error=None, start=lambda: None, stop=lambda: None, info=lambda: {})
    texts = [f"turn {i}" for i in range(7)] + ["boom"] + [f"turn {i}" for i in range(7, 14)]

    async def run():
        understander = batcher.LocalUnderstander(holder, max_batch_size=16, max_wait_ms=500)
        await understander.start()
        try:
            return await asyncio.gather(*(understander.understand(TurnInput(t)) for t in texts), return_exceptions=True)
        finally:
            await understander.stop()

    results = asyncio.run(run())
    assert pipeline.batches[0] == texts  # one batch first, then each item on its own
    assert sorted(map(tuple, pipeline.batches[1:])) == sorted((t,) for t in texts)
    assert isinstance(results[7], UnicodeEncodeError)
    assert [r[0]["text"] for i, r in enumerate(results) if i != 7] == [t for t in texts if t != "boom"]


# ----------------------------------------------------------------------------------------------- 3. no echo
def test_errors_echo_nothing_the_request_sent(client):
    c = client()
    r = post_raw(c, "/v1/understand", b'{"text": "hi"}', ctype=f"text/x-{CARD}")
    err = assert_json_error(r, 415, "unsupported_media_type")
    assert CARD not in r.text and "x-" not in err["message"]
    r = post_raw(c, "/v1/understand", json.dumps({"text": "hi", CARD: 1, "alice_wong": 2}).encode())
    err = assert_json_error(r, 422, "invalid_request")
    assert CARD not in r.text and "alice_wong" not in r.text
    assert {d["field"] for d in err["details"]} == {"body.<unknown>"}
    r = post_raw(c, "/v1/understand", b'{"text": "hi", "\\ud800": 1}')  # a field name that cannot be encoded
    assert_json_error(r, 422, "invalid_request")
    r = c.get(f"/v1/nothing/{CARD[:6]}-{CARD[6:]}")
    assert_json_error(r, 404, "not_found")
    assert CARD[:6] not in r.text
    r = c.post("/v1/dialogue/call-7", json={"speaker": "agent", "text": "ok"})
    assert r.status_code == 200
    r = c.get("/v1/dialogue/call-8")
    assert_json_error(r, 404, "session_not_found")
    assert "call-8" not in r.text


# ------------------------------------------------------------------------------------------ 4. request ids
@pytest.mark.parametrize(
    "sent, kept",
    [
        ("req-42_abc", True),
        ("a" * 64, True),
        ("123456", True),
        (CARD, False),
        ("req-1234567", False),
        ("6222-0212-3456-7890-128", False),  # a card number the masker sees
        ("a" * 65, False),
        ("has space", False),
        ("li.lei@example.com", False),
        ("", False),
        ("é", False),
    ],
)
def test_a_client_request_id_is_kept_only_when_safe(client, sent, kept):
    r = client().post("/v1/understand", json={"text": "hi"}, headers={"x-request-id": sent.encode("utf-8")})
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert rid == r.json()["request_id"]
    assert (rid == sent) is kept
    if not kept:
        assert len(rid) == 32 and (not sent or sent not in r.text)


def test_generated_request_ids_hold_no_digit_runs():
    import re

    from findial.serving.guard import request_id_of

    ids = {request_id_of(CARD) for _ in range(300)}
    assert len(ids) == 300 and not any(re.search(r"\d{7}", i) for i in ids)


# ----------------------------------------------------------------------------------------- 5. body timeout
def test_a_stalled_body_is_a_408_at_the_asgi_level():
    from findial.serving.guard import RequestGuard
    from findial.serving.metrics import Metrics

    async def app(scope, receive, send):  # never reached
        raise AssertionError("the app ran")

    async def never():
        await asyncio.Event().wait()

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/understand",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"40")],
    }
    guard = RequestGuard(app, Metrics(), max_body_bytes=1000, body_timeout_s=0.2)
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(guard(scope, never, send), 5))
    assert time.monotonic() - started < 2
    start, body = sent[0], json.loads(sent[1]["body"])
    assert start["status"] == 408 and (b"connection", b"close") in start["headers"]
    assert body["error"]["code"] == "body_timeout"


def test_a_stalled_body_is_a_408_and_the_connection_closes_on_a_real_socket(make_settings):
    import uvicorn

    from findial.serving.app import create_app

    app = create_app(make_settings("limits.body_timeout_s=0.5"), StandIn())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, ws="none"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(
                b"POST /v1/understand HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 100\r\n\r\n{"te'
            )  # ... and nothing more
            started, data = time.monotonic(), b""
            while chunk := conn.recv(65536):  # until the server closes the connection
                data += chunk
            assert time.monotonic() - started < 4
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "body_timeout"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # the server still serves
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_body_timeout_is_a_setting(make_settings):
    assert make_settings().limits.body_timeout_s == 10
    with pytest.raises(SettingsError, match="limits.body_timeout_s: must be > 0"):
        make_settings("limits.body_timeout_s=0")


# ---------------------------------------------------------------------------------------------- 6. API keys
@pytest.mark.parametrize(
    "host, required, on",
    [
        ("127.0.0.1", "auto", False),
        ("::1", "auto", False),
        ("localhost", "auto", False),
        ("127.0.0.2", "auto", False),
        ("0.0.0.0", "auto", True),
        ("10.1.2.3", "auto", True),
        ("::", "auto", True),
        ("api.example.com", "auto", True),
        ("127.0.0.1", True, True),
        ("0.0.0.0", False, False),
    ],
)
def test_auth_is_on_unless_the_host_is_loopback(host, required, on):
    from findial.serving.auth import auth_required

    settings = ServeSettings.from_mapping({"host": host, "auth": {"required": required}})
    assert auth_required(settings) is on


def test_auth_settings_and_keys(tmp_path, monkeypatch, caplog):
    from findial.serving.auth import ApiKeys

    assert ServeSettings().auth.required == "auto" and ServeSettings().auth.keys_env == "FINDIAL_API_KEYS"
    with pytest.raises(SettingsError, match="auth.required: must be auto, true or false"):
        ServeSettings.from_mapping({"auth": {"required": "maybe"}})
    with pytest.raises(SettingsError, match="auth: unknown key"):
        ServeSettings.from_mapping({"auth": {"key": "x"}})
    monkeypatch.delenv("FINDIAL_API_KEYS", raising=False)
    public = {"host": "0.0.0.0"}
    with pytest.raises(
        SettingsError,
        match=r"auth: auth.required is auto and host 0.0.0.0 is not loopback, but no "
        r"API key is configured: put keys in auth.keys_file",
    ):
        ApiKeys.from_settings(ServeSettings.from_mapping(public))
    keys = tmp_path / "keys"
    keys.write_text("# ops team\nkey-one\n\n  key-two  \n# old: key-three\n")
    monkeypatch.setenv("FINDIAL_API_KEYS", "key-four, key-one,")
    api = ApiKeys.from_settings(ServeSettings.from_mapping({**public, "auth": {"keys_file": str(keys)}}))
    assert api.required and api.keys == (b"key-one", b"key-two", b"key-four") and "key-one" not in repr(api)
    with pytest.raises(SettingsError, match="auth.keys_file: cannot read"):
        ApiKeys.from_settings(ServeSettings.from_mapping({"auth": {"keys_file": str(tmp_path / "none")}}))
    monkeypatch.setenv("FINDIAL_API_KEYS", "two words")
    with pytest.raises(SettingsError, match=r"auth.keys_env \(FINDIAL_API_KEYS\): an API key must be") as err:
        ApiKeys.from_settings(ServeSettings.from_mapping({}))
    assert "two words" not in str(err.value)
    monkeypatch.delenv("FINDIAL_API_KEYS")
    with caplog.at_level("WARNING", logger="findial.serving"):
        assert not ApiKeys.from_settings(ServeSettings.from_mapping({**public, "auth": {"required": False}})).required
    assert "auth.required is false and host 0.0.0.0 is not loopback" in caplog.text


def test_findial_serve_refuses_to_start_on_a_public_host_without_a_key(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "FINDIAL_API_KEYS"}
    proc = subprocess.run(
        [sys.executable, "-m", "findial.cli", "serve", "host=0.0.0.0", "port=0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        env={**env, "FINDIAL_HOME": str(tmp_path), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode != 0
    assert "SettingsError" in proc.stderr and "no API key is configured" in proc.stderr
    assert "findial serve: http" not in proc.stdout  # it never started


PROTECTED = [
    ("POST", "/v1/understand", {"text": "hi"}),
    ("POST", "/v1/respond", {"text": "hi"}),
    ("POST", "/v1/dialogue/call-1", {"text": "hi"}),
    ("GET", "/v1/dialogue/call-1", None),
    ("DELETE", "/v1/dialogue/call-1", None),
    ("GET", "/metrics", None),
    ("GET", "/docs", None),
    ("GET", "/openapi.json", None),
    ("GET", "/redoc", None),
    ("GET", "/v1/nothing", None),
    ("POST", "/healthz", None),
    ("PUT", "/v1/understand", {"text": "hi"}),
]


def test_with_auth_on_every_endpoint_but_the_probes_needs_a_key(client, tmp_path, monkeypatch):
    monkeypatch.setenv("FINDIAL_API_KEYS", f"{KEY},other-key-abcdefghijkl")
    c = client("host=0.0.0.0")
    for method, path, body in PROTECTED:
        for headers in (
            {},
            {"authorization": "Bearer wrong-key-4111111111111111"},
            {"x-api-key": KEY[:-1]},
            {"authorization": KEY},
            {"authorization": f"Basic {KEY}"},
        ):
            r = c.request(method, path, json=body, headers=headers)
            err = assert_json_error(r, 401, "unauthorized")
            assert r.headers["www-authenticate"] == "Bearer" and "4111111111111111" not in r.text
            assert err["details"] == []
    for path in ("/healthz", "/readyz"):
        assert c.get(path).status_code == 200
    for headers in (
        {"authorization": f"Bearer {KEY}"},
        {"authorization": f"bearer {KEY}"},
        {"x-api-key": KEY},
        {"x-api-key": "other-key-abcdefghijkl"},
    ):
        assert c.post("/v1/understand", json={"text": "hi"}, headers=headers).status_code == 200
        assert c.get("/docs", headers=headers).status_code == 200
        assert c.get("/metrics", headers=headers).status_code == 200
    schema = c.get("/openapi.json", headers={"x-api-key": KEY}).json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert "401" in schema["paths"]["/v1/understand"]["post"]["responses"]
    assert 'status="401"' in c.get("/metrics", headers={"x-api-key": KEY}).text


def test_on_loopback_auth_is_off_by_default(client, monkeypatch):
    monkeypatch.delenv("FINDIAL_API_KEYS", raising=False)
    c = client()
    assert c.post("/v1/understand", json={"text": "hi"}).status_code == 200
    assert c.get("/openapi.json").status_code == 200 and c.get("/metrics").status_code == 200
    assert "securitySchemes" not in c.get("/openapi.json").json().get("components", {})


def test_the_ray_ingress_app_reads_the_keys(make_settings, monkeypatch):
    pytest.importorskip("ray.serve")
    from findial.serving import ray_backend

    monkeypatch.delenv("FINDIAL_API_KEYS", raising=False)
    with pytest.raises(SettingsError, match="no API key is configured"):
        ray_backend.build_app(make_settings("host=0.0.0.0"))
    with pytest.raises(SettingsError, match="no API key is configured"):
        ray_backend.serve_ray(make_settings("host=0.0.0.0"))  # before Ray is started


# ---------------------------------------------------------------------------------------------- 7. lang
@pytest.mark.parametrize("lang, status", [("zh", 200), ("en", 200), ("fr", 422), ("EN", 422), ("eng", 422)])
def test_lang_is_one_of_the_label_books(client, lang, status):
    c = client()
    assert c.post("/v1/understand", json={"text": "hi", "lang": lang}).status_code == status
    assert c.post("/v1/dialogue/call-2", json={"text": "hi", "lang": lang}).status_code == status
    schema = c.get("/openapi.json").json()["components"]["schemas"]["UnderstandRequest"]["properties"]["lang"]
    assert {"enum": ["zh", "en"], "type": "string"} in schema["anyOf"]
