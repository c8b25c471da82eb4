"""The real server on loopback, over a tiny model trained, registered and aliased in a temporary MLflow store.

The module trains once (`findial run experiment=smoke`). A smoke model fails the promotion
gates, so the fixture sets the `champion` alias directly with MlflowClient: a TEST-ONLY bypass
of the gated `findial promote`, which is the only way a real model reaches the alias.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
ID_NUMBER = "11010519491231002X"
CARD = "6222021234567890128"
NAME = "findial-nlu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)  # explicit URIs: no global MLflow state touched


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("serve-home")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "run",
            "experiment=smoke",
            "registry.response_model_name=null",  # no response model here (tests/test_grounded_responder.py)
            "data=custom",
            f"data.train_file={MINI}",
            f"data.val_file={MINI}",
            f"data.test_file={MINI}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "FINDIAL_HOME": str(home)},
        cwd=home,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"REFUSED {NAME} v1" in proc.stdout  # the smoke model fails the gates, as expected
    # TEST-ONLY: move the serving alias without the gates (see the module docstring)
    mlflow_client(home).set_registered_model_alias(NAME, "champion", "1")
    return home


class Server:
    """`findial serve` in a subprocess, its console captured to a file."""

    def __init__(self, home: Path, *overrides: str):
        self.home, self.port = home, free_port()
        self.log = home / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "findial.cli", "serve", f"port={self.port}", *overrides],
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=home,
            env={**os.environ, "FINDIAL_HOME": str(home)},
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited:\n{self.log.read_text()[-3000:]}"
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"not ready in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def server(home):
    srv = Server(home, "poll_interval_s=1", "handoff.min_confidence=0.5")
    try:
        srv.wait_ready()
        yield srv
    finally:
        rc = srv.stop()
    # a graceful shutdown on SIGTERM (uvicorn re-raises the signal once it is done)
    assert rc in (0, -signal.SIGTERM) and "Application shutdown complete" in srv.log.read_text(), srv.log.read_text()[
        -3000:
    ]


def post(srv, path, body):
    return srv.http.post(path, json=body)


def expected_reasons(r: dict, min_confidence: float) -> list[str]:
    """The documented hand-off rules (configs/serve.yaml defaults), recomputed from a response."""
    out = ["low_confidence"] if r["confidence"] < min_confidence else []
    out += [f"intent:{r['intent']}"] if r["intent"] in ("complaint", "request_human_agent") else []
    out += [f"emotion:{r['emotion']}"] if r["emotion"] in ("angry", "dissatisfied") else []
    return out


# ---------------------------------------------------------------------------------------------- endpoints
def test_health_readiness_and_schema(server):
    ready = server.http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["name"] == NAME
    health = server.http.get("/healthz").json()
    assert health["status"] == "ok" and health["ready"] and health["model"]["version"] == "1"
    schema = server.http.get("/openapi.json").json()
    for path in ("/v1/understand", "/v1/respond", "/v1/dialogue/{session_id}", "/healthz", "/readyz", "/metrics"):
        assert path in schema["paths"]
    body = schema["paths"]["/v1/understand"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/UnderstandRequest")
    assert "text" in schema["components"]["schemas"]["UnderstandRequest"]["required"]


@pytest.fixture(scope="module")
def bundle(home):
    return next((home / "runs").glob("*-pipeline")) / "bundle"


def test_understand_gives_intent_entities_state_emotion_and_confidences(server, bundle):
    r = post(server, "/v1/understand", {"text": "我的信用卡昨天丢了"})
    assert r.status_code == 200, r.text
    u = r.json()
    labels = json.loads((bundle / "intent" / "findial_model.json").read_text())
    assert u["intent"] in labels["intents"] and 0 < u["confidence"] <= 1
    assert u["emotion"] in labels["emotions"] and 0 < u["emotion_confidence"] <= 1
    assert u["lang"] == "zh" and u["text"] and isinstance(u["state"], dict)
    for e in u["entities"]:
        assert u["text"][e["start"] : e["end"]] == e["text"] and 0 < e["confidence"] <= 1
    assert u["model"] == {"ref": f"models:/{NAME}@champion", "name": NAME, "version": "1"}
    assert r.headers["x-request-id"] == u["request_id"]


def test_handoff_on_low_confidence_and_compliance(server):
    seen_low = False
    for text in ("hello", "I want to complain about a fee", "转人工", "你们太过分了！", "what is my balance"):
        u = post(server, "/v1/understand", {"text": text}).json()
        assert u["handoff_reasons"] == expected_reasons(u, 0.5) and u["handoff"] == bool(u["handoff_reasons"])
        seen_low |= "low_confidence" in u["handoff_reasons"]
    assert seen_low  # a tiny random model is never sure: the threshold rule did fire
    for text, rule in (
        ("Your advisor said this fund has a guaranteed return of 8%", "guaranteed_return"),
        ("这个理财产品是保本保息的吗", "principal_and_interest_guaranteed"),
    ):
        u = post(server, "/v1/understand", {"text": text}).json()
        assert u["handoff"] and f"compliance:{rule}" in u["handoff_reasons"]


def test_dialogue_session_keeps_history_and_accumulates_state(server):
    sid = "call-accum-1"
    turns = ["我想办一张信用卡", "年费多少钱", "额度能到五万吗"]
    replies = []
    for i, text in enumerate(turns):
        r = post(server, f"/v1/dialogue/{sid}", {"text": text})
        assert r.status_code == 200, r.text
        replies.append(r.json())
        assert replies[-1]["session_id"] == sid and replies[-1]["turn_index"] == 2 * i
        post(server, f"/v1/dialogue/{sid}", {"speaker": "agent", "text": f"好的，第{i}步"}).raise_for_status()
    for prev, cur in zip(replies, replies[1:]):
        assert set(prev["state"]) <= set(cur["state"])  # a slot, once filled, carries over
    view = server.http.get(f"/v1/dialogue/{sid}").json()
    assert [t["speaker"] for t in view["turns"]] == ["user", "agent"] * 3
    assert view["state"] == replies[-1]["state"] and view["turns"][4]["intent"] == replies[-1]["intent"]
    # the last turn was understood in the context of the session: a stateless call with the same
    # context gives the same answer, one without context (almost surely) another
    history = [{"speaker": t["speaker"], "text": t["text"]} for t in view["turns"][:4]]
    with_ctx = post(server, "/v1/understand", {"text": turns[2], "context": history}).json()
    without = post(server, "/v1/understand", {"text": turns[2]}).json()
    assert with_ctx["intent"] == replies[-1]["intent"]
    assert with_ctx["confidence"] == pytest.approx(replies[-1]["confidence"], abs=2e-3)
    assert without["confidence"] != pytest.approx(replies[-1]["confidence"], abs=1e-6)
    # /v1/understand with a session id continues the same session
    u = post(server, "/v1/understand", {"text": "谢谢", "session_id": sid}).json()
    assert u["turn_index"] == 6 and set(replies[-1]["state"]) <= set(u["state"])
    deleted = server.http.delete(f"/v1/dialogue/{sid}")
    assert deleted.status_code == 200 and deleted.json() == {"session_id": sid, "deleted": True, "turns": 7}
    gone = server.http.get(f"/v1/dialogue/{sid}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "session_not_found"


def test_agent_turn_breaking_a_compliance_rule_hands_the_session_off(server):
    sid = "call-compliance-2"
    r = post(server, f"/v1/dialogue/{sid}", {"speaker": "agent", "text": "放心，这款产品稳赚不赔"}).json()
    assert r["handoff"] and r["handoff_reasons"] == ["compliance:principal_and_interest_guaranteed"]
    view = server.http.get(f"/v1/dialogue/{sid}").json()
    assert view["handoff"] and "compliance:principal_and_interest_guaranteed" in view["handoff_reasons"]


def test_respond_without_a_response_model_is_503(server):
    # the default responder.model_ref, models:/findial-response@champion: no such registered model here
    r = post(server, "/v1/respond", {"text": "hello"})
    assert r.status_code == 503
    assert r.json()["error"] == {"code": "no_response_model", "details": [], "message": r.json()["error"]["message"]}
    message = r.json()["error"]["message"]
    assert "no response model promoted" in message and "findial promote model_name=findial-response" in message
    assert server.http.get("/readyz").status_code == 200  # readiness is the NLU model's alone
    response_model = server.http.get("/healthz").json()["response_model"]
    assert response_model["ref"] == "models:/findial-response@champion" and response_model["version"] is None


BAD_INPUTS = [  # (method, path, raw body or JSON, headers, status, error code)
    ("POST", "/v1/understand", {"text": ""}, None, 422, "empty_text"),
    ("POST", "/v1/understand", {"text": " \n\t "}, None, 422, "empty_text"),
    ("POST", "/v1/understand", {"text": "x" * 2001}, None, 413, "text_too_long"),
    ("POST", "/v1/understand", b'{"text": "' + b"y" * 300_000 + b'"}', None, 413, "body_too_large"),
    ("POST", "/v1/understand", b'{"text": "\xff\xfe bad"}', None, 400, "invalid_utf8"),
    ("POST", "/v1/understand", b'{"text": "unclosed', None, 400, "invalid_json"),
    ("POST", "/v1/understand", b"", None, 422, "invalid_request"),
    ("POST", "/v1/understand", {"txt": "typo"}, None, 422, "invalid_request"),
    ("POST", "/v1/understand", {"text": 42}, None, 422, "invalid_request"),
    ("POST", "/v1/understand", [1, 2], None, 422, "invalid_request"),
    ("POST", "/v1/understand", {"text": "hi", "lang": "klingon"}, None, 422, "invalid_request"),
    (
        "POST",
        "/v1/understand",
        {"text": "hi", "context": [{"speaker": "bot", "text": "x"}]},
        None,
        422,
        "invalid_request",
    ),
    ("POST", "/v1/understand", {"text": "hi", "context": [{"speaker": "user", "text": ""}]}, None, 422, "empty_text"),
    ("POST", "/v1/understand", {"text": "hi", "session_id": "has spaces"}, None, 422, "invalid_session_id"),
    ("POST", "/v1/understand", b'{"text": "hi"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ("POST", "/v1/dialogue/ok-1", {"speaker": "robot", "text": "hi"}, None, 422, "invalid_request"),
    ("POST", "/v1/dialogue/ok-1", {"text": "x" * 5000}, None, 413, "text_too_long"),
    ("GET", "/v1/dialogue/never-started", None, None, 404, "session_not_found"),
    ("DELETE", "/v1/dialogue/never-started", None, None, 404, "session_not_found"),
    ("GET", "/v1/dialogue/13812345678", None, None, 422, "invalid_session_id"),
    ("POST", "/v1/respond", {}, None, 422, "invalid_request"),
    ("GET", "/v1/nothing", None, None, 404, "not_found"),
    ("PUT", "/v1/understand", {"text": "hi"}, None, 405, "method_not_allowed"),
    ("POST", "/v1/understand", b"[" * 120_000, None, 400, "too_deeply_nested"),
    ("POST", "/v1/understand", b'{"text": "lost \\ud800 card"}', None, 422, "invalid_request"),
    ("POST", "/v1/understand", b'{"text": "nul \\u0000"}', None, 422, "invalid_request"),
    ("POST", "/v1/understand", {"text": "\u200b\u3000"}, None, 422, "empty_text"),
    ("POST", "/v1/understand", {"text": "hi", "lang": "fr"}, None, 422, "invalid_request"),
    ("POST", "/v1/dialogue/ok-1", {"text": "hi", "lang": "fr"}, None, 422, "invalid_request"),
    ("POST", "/v1/understand", b'{"text": "hi"}', {"content-type": f"text/{CARD}"}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    "method, path, body, headers, status, code",
    BAD_INPUTS,
    ids=[f"{c[0]}-{c[5]}-{i}" for i, c in enumerate(BAD_INPUTS)],
)
def test_bad_input_is_a_clear_4xx(server, method, path, body, headers, status, code):
    kw = {"content": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
    if isinstance(body, bytes) and headers is None:
        headers = {"content-type": "application/json"}
    r = server.http.request(method, path, headers=headers, **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and r.json()["request_id"]
    assert CARD not in r.text  # nothing sent comes back


def test_a_bad_request_does_not_fail_the_others_in_its_batch(server):
    """A lone surrogate once failed its whole inference batch with 500s; now it is refused alone (422)."""
    bodies = [json.dumps({"text": f"查询余额 {i}"}).encode() for i in range(15)]
    bodies[7:7] = [b'{"text": "card \\ud800 lost"}']
    results = [None] * len(bodies)

    def one(i):
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as http:
            results[i] = http.post(
                "/v1/understand", content=bodies[i], headers={"content-type": "application/json", "x-request-id": CARD}
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = [r.status_code for r in results]
    assert statuses == [200] * 7 + [422] + [200] * 8, statuses
    assert results[7].json()["error"]["details"][0]["field"] == "body.text"
    assert all(r.headers["x-request-id"] != CARD and CARD not in r.text for r in results)


def test_server_survives_bad_input_and_counts_it(server):
    assert server.http.get("/readyz").status_code == 200
    text = server.http.get("/metrics").text
    assert 'findial_http_requests_total{method="POST",route="/v1/understand",status="400"}' in text
    assert 'findial_http_requests_total{method="POST",route="/v1/understand",status="413"}' in text
    assert 'status="500"' not in text  # no request failed with an internal error


def test_metrics_are_prometheus_text(server):
    post(server, "/v1/understand", {"text": "hello"}).raise_for_status()
    r = server.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    ok = samples['findial_http_requests_total{method="POST",route="/v1/understand",status="200"}']
    assert ok >= 1
    assert samples['findial_http_request_duration_seconds_count{route="/v1/understand"}'] >= ok
    assert samples[f'findial_model_info{{name="{NAME}",version="1",ref="models:/{NAME}@champion"}}'] == 1
    assert samples["findial_model_loaded"] == 1 and samples["findial_inference_batch_items_total"] >= ok
    assert samples['findial_handoffs_total{reason="low_confidence"}'] >= 1


def test_personal_data_never_reaches_audit_log_or_server_log(server):
    sid = "call-pii-3"
    text = f"我的身份证号是{ID_NUMBER}，卡号{CARD}，手机13812345678，帮我查余额"
    u = post(server, "/v1/understand", {"text": text}).json()
    assert ID_NUMBER not in json.dumps(u, ensure_ascii=False)
    assert "[ID_NUMBER]" in u["text"] and u["pii_masked"] == ["ID_NUMBER", "CARD_NUMBER", "PHONE"]
    d = post(server, f"/v1/dialogue/{sid}", {"text": text}).json()
    assert "[ID_NUMBER]" in d["text"]
    post(server, f"/v1/dialogue/{sid}", {"speaker": "agent", "text": f"已核实身份证{ID_NUMBER}"}).raise_for_status()
    post(server, "/v1/understand", {"text": "hi", "context": [{"speaker": "user", "text": f"ID {ID_NUMBER}"}]})
    assert ID_NUMBER not in server.http.get(f"/v1/dialogue/{sid}").text
    # refused requests must not echo it either
    for body in (
        f'{{"text": "{ID_NUMBER}"'.encode(),
        json.dumps({"text": [ID_NUMBER]}).encode(),
        json.dumps({"text": ID_NUMBER, "session_id": ID_NUMBER}).encode(),
    ):
        r = server.http.post("/v1/understand", content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500 and ID_NUMBER not in r.text
    r = server.http.get(f"/v1/dialogue/{ID_NUMBER}")
    assert r.status_code == 422 and ID_NUMBER not in r.text
    audit = (server.home / "serving" / "audit.jsonl").read_text(encoding="utf-8")
    assert "[ID_NUMBER]" in audit and "[CARD_NUMBER]" in audit  # the turns were audited, masked
    time.sleep(0.5)  # let the access log flush
    leaks = [
        str(p)
        for p in server.home.rglob("*")
        if p.is_file()
        and p.suffix in (".jsonl", ".log")
        and (ID_NUMBER[:17].encode() in p.read_bytes() or CARD.encode() in p.read_bytes())
    ]
    assert leaks == []
    assert "[ID_NUMBER]" in server.log.read_text()  # the path with the ID was logged, masked


# ------------------------------------------------------------------------------ the model path in process
@pytest.fixture(scope="module")
def pipeline(bundle):
    from findial.training.inference import NLUPipeline

    return NLUPipeline(bundle / "intent", bundle / "ner")


def test_turn_by_turn_understanding_matches_the_offline_pipeline(pipeline):
    from findial.data.corpus import load_corpus
    from findial.data.labelbook import Glossary, LabelBook
    from findial.serving.understanding import TurnInput, predict_turns

    dialogues = load_corpus(MINI, LabelBook.load(), Glossary.load())
    offline = pipeline.predict_dialogues(dialogues)
    compared = 0
    for d, ref in zip(dialogues, offline):
        history, state, previous = [], {}, ()
        for turn, want in zip(d["turns"], ref["turns"]):
            if turn["speaker"] == "user":
                got = predict_turns(pipeline, [TurnInput(turn["text"], d["lang"], tuple(history), state, previous)])[0]
                assert got["intent"] == want["intent"] and got["emotion"] == want["emotion"]
                assert got["confidence"] == pytest.approx(want["confidence"], abs=2e-3)
                assert [(e["label"], e["start"], e["end"], e.get("term_id")) for e in got["entities"]] == [
                    (e["label"], e["start"], e["end"], e.get("term_id")) for e in want["entities"]
                ]
                assert got["state"] == want["state"]
                state, previous = got["state"], previous + (got["intent"],)
                compared += 1
            history.append((turn["speaker"], turn["text"]))
    assert compared >= 12 and any(len(d["turns"]) > 2 for d in dialogues)


class ScriptedResponder:
    """A plugged-in stand-in for a response model: it names the intent; from its third reply on it
    promises what a compliance rule forbids."""

    name, version = "scripted", "1"

    def __init__(self):
        self.calls = 0

    def respond(self, understanding, history):
        self.calls += 1
        if self.calls >= 3:
            return "这款产品保本保息"
        return f"[{understanding['intent']}] noted ({len(history)} earlier turns)"


@pytest.fixture()
def thread_server(bundle, compose, tmp_path):
    """Start the app under uvicorn in a thread: a bundle directory (no registry), a responder, given overrides."""
    import uvicorn
    from omegaconf import OmegaConf

    from findial.serving.app import create_app
    from findial.serving.batcher import LocalUnderstander
    from findial.serving.model_store import ModelHolder
    from findial.serving.settings import ServeSettings

    running = []

    def start(overrides: list[str], name: str):
        cfg = OmegaConf.to_container(
            compose("serve", [f"model_ref={bundle}", f"audit.path={tmp_path}/{name}.jsonl", *overrides]), resolve=True
        )
        settings = ServeSettings.from_mapping(cfg)
        understander = LocalUnderstander(ModelHolder(settings.model_ref, settings.download_dir, poll_interval_s=0))
        app = create_app(settings, understander, ScriptedResponder())
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="none")
        srv = uvicorn.Server(config)
        thread = threading.Thread(target=srv.run, daemon=True)
        thread.start()
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        running.append((srv, thread, http))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if http.get("/readyz").status_code == 200:
                    return http, settings
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the in-thread server did not get ready")

    yield start
    for srv, thread, http in running:
        http.close()
        srv.should_exit = True
        thread.join(timeout=60)


def audit_events(settings) -> list[dict]:
    return [json.loads(x) for x in Path(settings.audit.path).read_text(encoding="utf-8").splitlines()]


def test_configured_intent_rule_hands_off_instead_of_replying(thread_server, pipeline):
    from findial.serving.understanding import TurnInput, predict_turns

    text = "I want to complain about this fee"
    predicted = predict_turns(pipeline, [TurnInput(text, "en")])[0]["intent"]
    other = next(i for i in pipeline.intent.meta["intents"] if i != predicted)
    # the intent this model gives the text is a hand-off intent on one server and not on the other
    for intents, handed_off in (([predicted], True), ([other], False)):
        http, settings = thread_server(
            ["handoff.min_confidence=0", f"handoff.intents=[{','.join(intents)}]", "handoff.emotions=[]"],
            f"intent-rule-{handed_off}",
        )
        r = http.post("/v1/respond", json={"text": text}).json()
        assert r["intent"] == predicted and r["responder"] == {"name": "scripted", "version": "1"}
        if handed_off:  # a human takes over: no generated reply
            assert r["handoff"] is True and r["handoff_reasons"] == [f"intent:{predicted}"] and r["response"] is None
        else:
            assert r["handoff"] is False and r["response"] == f"[{predicted}] noted (0 earlier turns)"
        assert [x["event"] for x in audit_events(settings)] == ["respond"]


def test_a_plugged_in_responder_replies_within_the_session(thread_server):
    http, settings = thread_server(
        ["handoff.min_confidence=0", "handoff.intents=[]", "handoff.emotions=[]"], "responder"
    )
    for k in range(2):
        r = http.post("/v1/respond", json={"text": "annual fee?", "session_id": "resp-1"}).json()
        assert r["handoff"] is False and r["response"] == f"[{r['intent']}] noted ({2 * k} earlier turns)"
    view = http.get("/v1/dialogue/resp-1").json()
    assert [t["speaker"] for t in view["turns"]] == ["user", "agent", "user", "agent"]
    assert view["turns"][1]["text"].endswith("noted (0 earlier turns)")
    # a generated reply that breaks a compliance rule is withheld and the turn handed off
    r = http.post("/v1/respond", json={"text": "annual fee?"}).json()
    assert r["response"] is None and r["handoff"] is True
    assert r["handoff_reasons"] == ["compliance:principal_and_interest_guaranteed:response"]
    records = audit_events(settings)
    assert [x["event"] for x in records] == ["respond"] * 3 and records[-1]["response"] is None
    assert all(x["model"]["version"] is None and x["model"]["ref"] == settings.model_ref for x in records)


# -------------------------------------------------------------------------------- fuzzing from the OpenAPI schema
def fuzz(schema, max_examples: int, headers: dict | None = None) -> dict:
    """Every operation of the schema, with valid and invalid data (schemathesis, seeded): no response may be a
    5xx, and each must be JSON (or text) conforming to the responses the schema declares. {(operation, status): n}"""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    seen: dict = {}
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in GenerationMode:

            @settings(
                max_examples=max_examples,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
            )
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(headers=headers)
                key = (op.label, response.status_code)
                seen[key] = seen.get(key, 0) + 1
                case.validate_response(response, checks=checks)

            try:
                run()
            except Unsatisfiable:  # no invalid value exists (no parameters, or a free-form path string)
                assert mode is GenerationMode.NEGATIVE and not op.body
    return seen


@pytest.fixture()
def asgi_app(bundle, compose, tmp_path):
    """The app on the tiny model, in process (schemathesis calls it through ASGI), with given overrides."""
    from omegaconf import OmegaConf
    from schemathesis.python import asgi

    from findial.serving.app import create_app
    from findial.serving.batcher import LocalUnderstander
    from findial.serving.model_store import ModelHolder
    from findial.serving.settings import ServeSettings

    def make(*overrides: str):
        cfg = OmegaConf.to_container(
            compose("serve", [f"model_ref={bundle}", f"audit.path={tmp_path}/fuzz.jsonl", *overrides]), resolve=True
        )
        settings = ServeSettings.from_mapping(cfg)
        holder = ModelHolder(settings.model_ref, settings.download_dir, poll_interval_s=0)
        assert holder.check_once()  # loaded before the first request
        return create_app(settings, LocalUnderstander(holder, max_wait_ms=2), ScriptedResponder())

    yield make
    asgi.shutdown_lifespans()


def test_the_api_survives_fuzzing_from_its_own_openapi_schema(asgi_app):
    import schemathesis

    seen = fuzz(schemathesis.openapi.from_asgi("/openapi.json", asgi_app()), max_examples=30)
    ops = {op for op, _ in seen}
    assert len(ops) == 8 and all(status < 500 for _, status in seen)
    for op in ("POST /v1/understand", "POST /v1/respond", "POST /v1/dialogue/{session_id}"):
        assert seen.get((op, 200)) and seen.get((op, 422)), seen  # the model answered, and bad input was refused


def test_fuzzing_with_auth_on_and_the_key_sent(asgi_app, monkeypatch):
    import schemathesis

    key = "fuzz-key-0123456789abcdef"
    monkeypatch.setenv("FINDIAL_API_KEYS", key)
    app = asgi_app("host=0.0.0.0")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {key}"})
    seen = fuzz(schema, max_examples=10, headers={"Authorization": f"Bearer {key}"})
    assert seen.get(("POST /v1/understand", 200)) and not any(status in (401, 500) for _, status in seen), seen
    assert not any(status == 401 for _, status in fuzz(schema, max_examples=3, headers={"X-API-Key": key}))


# ----------------------------------------------------------------------------------------------- hot reload
def test_new_version_is_picked_up_without_restart_or_failed_requests(server, home):
    client = mlflow_client(home)
    v1 = client.get_model_version(NAME, "1")
    statuses, versions, stop = [], [], threading.Event()

    def fire(i):
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=60) as http:
            while not stop.is_set():
                r = http.post("/v1/understand", json={"text": f"查询余额 {i}"})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.append((time.monotonic(), r.json()["model"]["version"]))

    workers = [threading.Thread(target=fire, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    try:
        time.sleep(1.0)
        v2 = client.create_model_version(NAME, v1.source, run_id=v1.run_id).version
        client.set_registered_model_alias(NAME, "champion", v2)  # TEST-ONLY bypass of the gates
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any(v == str(v2) for _, v in versions[-3:]):
            time.sleep(0.5)
        time.sleep(1.0)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=120)
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {set(statuses)}"
    seen = [v for _, v in sorted(versions)]
    assert seen[0] == "1" and seen[-1] == str(v2)
    assert server.http.get("/healthz").json()["model"]["version"] == str(v2)
    # a version that cannot be loaded is refused; the old one keeps serving
    broken = home / "broken-bundle"
    broken.mkdir()
    (broken / "bundle.json").write_text("{}")
    v3 = client.create_model_version(NAME, str(broken), run_id=v1.run_id).version
    client.set_registered_model_alias(NAME, "champion", v3)  # TEST-ONLY
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not server.http.get("/healthz").json()["last_error"]:
        time.sleep(0.5)
    health = server.http.get("/healthz").json()
    assert f"models:/{NAME}/{v3}" in health["last_error"] and health["model"]["version"] == str(v2)
    r = post(server, "/v1/understand", {"text": "still serving"})
    assert r.status_code == 200 and r.json()["model"]["version"] == str(v2)
    metrics = server.http.get("/metrics").text
    assert 'findial_model_reloads_total{result="failure"} 1' in metrics
    assert 'findial_model_reloads_total{result="success"} 2' in metrics
    client.set_registered_model_alias(NAME, "champion", v2)  # TEST-ONLY: back to a loadable version


# ------------------------------------------------------------------------------- the promoted response model
@pytest.fixture(scope="module")
def response_home(home, tmp_path_factory):
    """A FINDIAL_HOME whose MLflow store is a copy of the NLU one: the response versions registered and
    promoted here stay out of the other tests' servers."""
    import sqlite3

    copy = tmp_path_factory.mktemp("respond-home")
    src, dst = sqlite3.connect(home / "mlflow.db"), sqlite3.connect(copy / "mlflow.db")
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return copy


def test_respond_answers_with_the_promoted_response_model_and_picks_up_a_new_one(response_home, response_model):
    from mlflow import MlflowClient

    from findial import registry, tracking
    from findial.policy import Policy
    from findial.evaluation.responses import evaluate_response_model

    home, (_, package, _) = response_home, response_model
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    low_gates = {"pii_clean_rate": 1.0, "compliance_clean_rate": 0.0, "term_grounding": 0.0, "chrf": 0.0}

    def evaluate_and_promote(version: str) -> None:  # the gated path, with gates a tiny random model passes
        evaluate_response_model(f"models:/findial-response/{version}", MINI, eval_set="mini", limit=2)
        fp = MlflowClient().get_model_version("findial-response", version).tags["eval.mini.data_fingerprint"]
        policy = Policy.of({"response": low_gates}, {"response": {"mini": fp}})
        decision = registry.promote(
            "findial-response", version, "champion", "mini", home / "audit" / "promotions.jsonl", policy
        )
        assert decision.promoted, decision.summary()

    def wait_for_responder(srv, version: str) -> dict:
        deadline, r = time.monotonic() + 180, None
        while time.monotonic() < deadline:
            r = post(srv, "/v1/respond", {"text": "I lost my card", "session_id": f"resp-v{version}"})
            if r.status_code == 200 and r.json()["responder"]["version"] == version:
                return r.json()
            time.sleep(0.5)
        raise AssertionError(f"version {version} not served: {r.text if r else None}")

    v1 = registry.register(package, "findial-response", {"findial.task": "response"})  # registered, not promoted
    srv = Server(home, "poll_interval_s=1", "handoff.min_confidence=0", "handoff.intents=[]", "handoff.emotions=[]")
    try:
        srv.wait_ready()
        r = post(srv, "/v1/respond", {"text": "hello"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "no_response_model"
        evaluate_and_promote(v1)
        first = wait_for_responder(srv, v1)
        assert first["responder"] == {"name": "findial-response", "version": v1}
        assert isinstance(first["response"], str) and first["handoff"] is False
        turns = srv.http.get(f"/v1/dialogue/resp-v{v1}").json()["turns"]
        assert [t["speaker"] for t in turns] == ["user", "agent"] and turns[1]["text"] == first["response"]
        v2 = registry.register(package, "findial-response", {"findial.task": "response"})
        evaluate_and_promote(v2)  # a newly promoted version, picked up without a restart
        assert wait_for_responder(srv, v2)["responder"] == {"name": "findial-response", "version": v2}
        health = srv.http.get("/healthz").json()["response_model"]
        assert health["name"] == "findial-response" and health["version"] == v2 and health["last_error"] is None
        assert health["ref"] == "models:/findial-response@champion"
    finally:
        srv.stop()


# --------------------------------------------------------------------------------------------- Ray Serve
@pytest.mark.slow
def test_ray_serve_backend_with_two_replicas(home, tmp_path):
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="fdray-", dir="/tmp")  # Ray's socket paths must stay short
    current = mlflow_client(home).get_model_version_by_alias(NAME, "champion").version
    srv = Server(
        home,
        "backend=ray",
        "replicas=2",
        "poll_interval_s=1",
        f"ray.temp_dir={ray_tmp}",
        f"audit.path={tmp_path}/ray-audit.jsonl",
    )
    try:
        srv.wait_ready(timeout=500)
        u = post(srv, "/v1/understand", {"text": f"身份证{ID_NUMBER}丢了"})
        assert u.status_code == 200 and u.json()["model"]["version"] == str(current)
        assert "[ID_NUMBER]" in u.json()["text"]
        results = []

        def one(i):
            results.append(post(srv, "/v1/understand", {"text": f"balance {i}"}).status_code)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 16
        d = post(srv, "/v1/dialogue/ray-1", {"text": "我想办信用卡"}).json()
        d2 = post(srv, "/v1/dialogue/ray-1", {"text": "年费多少"}).json()
        assert d2["turn_index"] == 1 and set(d["state"]) <= set(d2["state"])
        assert srv.http.get("/v1/dialogue/ray-1").json()["turns"][1]["text"] == "年费多少"
        bad = srv.http.post("/v1/understand", content=b'{"text": "\xff"}', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_utf8"
        assert srv.http.post("/v1/understand", json={"text": "x" * 3000}).status_code == 413
        assert srv.http.get("/v1/dialogue/nope").status_code == 404
        assert srv.http.post("/v1/respond", json={"text": "hi"}).status_code == 503
        assert "findial_http_requests_total" in srv.http.get("/metrics").text
        # every replica polls the alias: a new version reaches all of them
        client = mlflow_client(home)
        src = client.get_model_version(NAME, str(current))
        new = client.create_model_version(NAME, src.source, run_id=src.run_id).version
        client.set_registered_model_alias(NAME, "champion", new)  # TEST-ONLY
        deadline, seen = time.monotonic() + 240, []
        while time.monotonic() < deadline:
            seen = [post(srv, "/v1/understand", {"text": "hi"}).json()["model"]["version"] for _ in range(6)]
            if set(seen) == {str(new)}:
                break
            time.sleep(1)
        assert set(seen) == {str(new)}
        audit = (tmp_path / "ray-audit.jsonl").read_text(encoding="utf-8")
        assert "[ID_NUMBER]" in audit and ID_NUMBER not in audit
    finally:
        rc = srv.stop()
    assert rc == 0, srv.log.read_text()[-3000:]
    assert ID_NUMBER not in srv.log.read_text()
    leaks = [
        str(p)
        for p in Path(ray_tmp).rglob("*")
        if p.is_file() and not p.is_symlink() and ID_NUMBER[:17].encode() in p.read_bytes()
    ]
    assert leaks == []  # nor Ray's own logs
    shutil.rmtree(ray_tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_load_benchmark_reports_percentiles_for_both_servers(bundle, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "benchmarks" / "load_benchmark.py"),
            "--model",
            str(bundle),
            "--concurrency",
            "1",
            "4",
            "--duration",
            "2",
            "--max-requests",
            "40",
            "--warmup",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["server"], r["concurrency"]) for r in rows] == [
        ("findial", 1),
        ("findial", 4),
        ("baseline", 1),
        ("baseline", 4),
    ]
    for r in rows:
        assert 0 < r["requests"] <= 40 and r["errors"] == 0 and r["throughput_rps"] > 0
        assert 0 < r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
    assert "| findial | 4 |" in proc.stdout
