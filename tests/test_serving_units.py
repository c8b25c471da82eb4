"""The serving parts that need no model: settings, hand-off rules, audit log, sessions, metrics, masking."""

import json
import multiprocessing
import threading
import time

import pytest

from findial.serving.audit import AuditLog
from findial.serving.handoff import HandoffPolicy
from findial.serving.metrics import Metrics
from findial.serving.responder import ResponderError, load_responder
from findial.serving.sessions import SessionIdError, SessionStore, check_session_id
from findial.serving.settings import ServeSettings, SettingsError
from findial.serving.understanding import detect_lang, mask_predicted_pii, mask_text

ID_NUMBER = "11010519491231002X"


@pytest.fixture()
def settings(compose):
    from omegaconf import OmegaConf

    return ServeSettings.from_mapping(OmegaConf.to_container(compose("serve", []), resolve=True))


def test_shipped_config_builds_settings(settings, tmp_path):
    assert settings.model_ref == "models:/findial-nlu@champion" and settings.backend == "local"
    assert settings.responder.model_ref == "models:/findial-response@champion" and settings.responder.target is None
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert settings.audit.path == f"{tmp_path}/serving/audit.jsonl"
    assert {r.name for r in settings.handoff.compliance_rules} >= {
        "guaranteed_return",
        "principal_and_interest_guaranteed",
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ({"handoff": {"min_confidence": 1.5}}, "handoff.min_confidence: must be within [0, 1]"),
        (
            {"handoff": {"compliance_rules": [{"name": "x", "pattern": "(unclosed"}]}},
            "handoff.compliance_rules[0].pattern: invalid regular expression",
        ),
        ({"limits": {"max_text_chars": "lots"}}, "limits.max_text_chars: expected int"),
        ({"limits": {"max_txt_chars": 5}}, "limits: unknown key(s) max_txt_chars"),
        ({"backend": "k8s"}, "backend: must be 'local' or 'ray'"),
        ({"port": None}, "port: expected int"),
    ],
)
def test_bad_settings_name_the_field(override, message):
    with pytest.raises(SettingsError) as err:
        ServeSettings.from_mapping(override)
    assert message in str(err.value)


def policy(min_confidence=0.5, **kw):
    from findial.serving.settings import ComplianceRule, HandoffSettings

    rules = (
        ComplianceRule("guaranteed_return", r"\bguarantee[ds]?\b.{0,30}?\b(?:return|profit)s?\b", True),
        ComplianceRule("principal_and_interest_guaranteed", "保本保息|稳赚不赔"),
    )
    return HandoffPolicy.from_settings(HandoffSettings(min_confidence=min_confidence, compliance_rules=rules, **kw))


@pytest.mark.parametrize(
    "turn, text, reasons",
    [
        ({"intent": "card_lost_report", "confidence": 0.93, "emotion": "neutral"}, "I lost my card", []),
        ({"intent": "card_lost_report", "confidence": 0.31, "emotion": "neutral"}, "lost card", ["low_confidence"]),
        ({"intent": "complaint", "confidence": 0.9, "emotion": "neutral"}, "x", ["intent:complaint"]),
        (
            {"intent": "request_human_agent", "confidence": 0.9, "emotion": "neutral"},
            "转人工",
            ["intent:request_human_agent"],
        ),
        ({"intent": "account_balance", "confidence": 0.9, "emotion": "angry"}, "x", ["emotion:angry"]),
        ({"intent": "account_balance", "confidence": 0.9, "emotion": "dissatisfied"}, "x", ["emotion:dissatisfied"]),
        (
            {"intent": "fund_purchase", "confidence": 0.9, "emotion": "neutral"},
            "这个基金保本保息吗",
            ["compliance:principal_and_interest_guaranteed"],
        ),
        (
            {"intent": "fund_purchase", "confidence": 0.9, "emotion": "neutral"},
            "You GUARANTEED me a 6% return!",
            ["compliance:guaranteed_return"],
        ),
        (
            {"intent": "complaint", "confidence": 0.2, "emotion": "angry"},
            "x",
            ["low_confidence", "intent:complaint", "emotion:angry"],
        ),
    ],
)
def test_handoff_rules(turn, text, reasons):
    assert policy().reasons(turn, text) == reasons


def test_handoff_threshold_and_lists_come_from_settings():
    strict = policy(min_confidence=0.95, intents=("fraud_report",), emotions=("anxious",))
    turn = {"intent": "fraud_report", "confidence": 0.94, "emotion": "anxious"}
    assert strict.reasons(turn, "x") == ["low_confidence", "intent:fraud_report", "emotion:anxious"]
    assert policy(min_confidence=0.0).reasons({"intent": "greeting", "confidence": 0.0}, "x") == []
    assert policy(intents=()).reasons({"intent": "complaint", "confidence": 0.9}, "x") == []


def test_shipped_compliance_rules(settings):
    p = HandoffPolicy.from_settings(settings.handoff)
    assert p.compliance_hits("We guarantee a 5% return") == ["compliance:guaranteed_return"]
    assert p.compliance_hits("这款理财保本保息，稳赚不赔") == ["compliance:principal_and_interest_guaranteed"]
    assert p.compliance_hits("What is the return on this fund? 这个基金风险高吗") == []


def _append_many(path, n, tag):
    log = AuditLog(path)
    for i in range(n):
        log.write({"event": "test", "tag": tag, "i": i, "text": f"身份证{ID_NUMBER} " + "." * 5000})


def test_audit_appends_are_whole_lines_and_masked(tmp_path):
    path = tmp_path / "audit" / "audit.jsonl"
    threads = [threading.Thread(target=_append_many, args=(path, 50, f"t{k}")) for k in range(4)]
    procs = [
        multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, 50, f"p{k}")) for k in range(2)
    ]
    for w in threads + procs:
        w.start()
    for w in threads + procs:
        w.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    raw = path.read_text(encoding="utf-8")
    records = [json.loads(line) for line in raw.splitlines()]  # a torn or interleaved line would not parse
    assert len(records) == 300
    assert {r["tag"] for r in records} == {"t0", "t1", "t2", "t3", "p0", "p1"}
    assert ID_NUMBER not in raw and all(r["text"].startswith("身份证[ID_NUMBER]") for r in records)
    assert all(r["ts"] for r in records)


def test_audit_masking_matches_redact_json():
    from findial.data.pii import redact_json
    from findial.serving.audit import mask_strings

    record = {
        "text": f"身份证{ID_NUMBER}",
        "mail": "write to li.lei@example.com",
        "wide": "电话１３８１２３４５６７８",
        "circled": "卡号⑥②②②⓪②①②③④⑤⑥⑦⑧⑨⓪①②⑧",
        "ids": ["req-1", 13812345678, 42],
        "ok": "card_lost_report",
        "nested": {"x": [f"ID {ID_NUMBER}"]},
    }
    masked = mask_strings(record)
    assert masked == {**redact_json(record), "ids": ["req-1", "[PHONE]", 42]}
    assert "[PHONE]" in masked["wide"] and "[EMAIL]" in masked["mail"] and "[ID_NUMBER]" in masked["text"]


def test_session_ids_are_opaque():
    assert check_session_id("call-2024.11:42_a") == "call-2024.11:42_a"
    for bad in ("", "has space", "../etc", "x" * 129, "13812345678", ID_NUMBER, "6222021234567890128"):
        with pytest.raises(SessionIdError):
            check_session_id(bad)


def test_sessions_expire_and_least_recent_is_dropped():
    store = SessionStore(max_sessions=2, ttl_s=0.3)
    a, created = store.get_or_create("a")
    assert created and store.get_or_create("a") == (a, False)
    store.get_or_create("b")
    store.get("a")  # a is now the most recent
    store.get_or_create("c")
    assert store.get("b") is None and store.get("a") is a and len(store) == 2
    time.sleep(0.4)
    assert store.get("a") is None and len(store) == 0
    s, _ = store.get_or_create("d")
    for i in range(5):
        s.add_turn({"speaker": "user", "text": str(i)}, max_turns=3)
    assert [t["text"] for t in s.turns] == ["2", "3", "4"] and s.history(2) == (("user", "3"), ("user", "4"))
    assert store.delete("d") and not store.delete("d")


def test_a_long_session_keeps_its_task_and_counts_its_turns(settings, tmp_path):
    """More non-task turns than the session keeps: the dialogue's task still reaches the model, and
    turn indices keep counting. The understander is a recording stand-in (this tests the service)."""
    import asyncio
    import dataclasses

    from findial.serving.service import DialogueService
    from findial.data.corpus import dialogue_task

    non_task = ("greeting", "thanks")
    script = ["loan_prepayment"] + ["greeting", "thanks"] * 4 + ["loan_prepayment", "card_lost_report", "thanks"]

    class Recorder:
        def __init__(self):
            self.seen: list[tuple[str, ...]] = []

        async def understand(self, item):
            self.seen.append(item.previous_intents)
            intent = script[len(self.seen) - 1]
            return (
                {
                    "text": item.text,
                    "intent": intent,
                    "confidence": 0.9,
                    "emotion": "neutral",
                    "emotion_confidence": 0.9,
                    "entities": [],
                    "state": {},
                    "unknown_terms": [],
                },
                {"ref": None, "name": "stand-in", "version": "1"},
            )

    limits = dataclasses.replace(settings.limits, max_context_turns=3)
    settings = dataclasses.replace(
        settings, limits=limits, audit=dataclasses.replace(settings.audit, path=str(tmp_path / "audit.jsonl"))
    )
    recorder = Recorder()
    service = DialogueService(settings, recorder)

    async def talk():
        out = []
        for i, _ in enumerate(script):
            out.append(await service.user_turn(f"turn {i}", "en", f"r{i}", "dialogue", session_id="s1"))
            out.append(await service.agent_turn("s1", f"reply {i}", f"a{i}"))
        return out

    replies = asyncio.run(talk())
    assert [r["turn_index"] for r in replies] == list(range(2 * len(script)))
    assert len(service.sessions.get("s1").turns) == 3
    tasks = [dialogue_task(previous, non_task) for previous in recorder.seen]
    # the 10th user turn comes 18 turns after the one that set the task (3 are kept): it still reads it
    assert tasks == [None] + ["loan_prepayment"] * 10 + ["card_lost_report"]
    assert set(service.sessions.get("s1").intents) == set(script)  # one entry per distinct intent


def test_metrics_render_prometheus_text():
    m = Metrics()
    m.observe_request("POST", "/v1/understand", 200, 0.02)
    m.observe_request("POST", "/v1/understand", 200, 0.3)
    m.observe_request("POST", "/v1/understand", 413, 0.001)
    m.count_handoff(["low_confidence", "compliance:guaranteed_return"])
    m.set_model("findial-nlu", "7", 'models:/findial-nlu@champion"x')
    text = m.render()
    assert 'findial_http_requests_total{method="POST",route="/v1/understand",status="200"} 2' in text
    assert 'findial_http_request_duration_seconds_bucket{route="/v1/understand",le="0.025"} 2' in text
    assert 'findial_http_request_duration_seconds_bucket{route="/v1/understand",le="0.5"} 3' in text
    assert 'findial_http_request_duration_seconds_count{route="/v1/understand"} 3' in text
    assert 'findial_handoffs_total{reason="compliance:guaranteed_return"} 1' in text
    assert 'findial_model_info{name="findial-nlu",version="7",ref="models:/findial-nlu@champion\\"x"} 1' in text
    for line in text.splitlines():  # every sample line is `name{labels} value`
        if not line.startswith("#"):
            float(line.rsplit(" ", 1)[1])


def test_text_masking_and_language():
    masked, labels = mask_text(f"我的身份证是{ID_NUMBER}，电话13812345678")
    assert masked == "我的身份证是[ID_NUMBER]，电话[PHONE]" and labels == ["ID_NUMBER", "PHONE"]
    assert detect_lang("信用卡 annual fee") == "zh" and detect_lang("annual fee") == "en"


def test_model_labelled_names_are_masked_and_offsets_follow():
    text = "I am Alice Wong and need 500 USD"
    result = {
        "entities": [
            {"label": "PERSON", "start": 5, "end": 15, "confidence": 0.9},
            {"label": "AMOUNT", "start": 25, "end": 32, "confidence": 0.8},
        ],
        "state": {"amount": "500 USD"},
        "unknown_terms": [],
    }
    masked, out = mask_predicted_pii(text, result, {"PERSON"})
    assert masked == "I am [PERSON] and need 500 USD"
    assert [(e["label"], masked[e["start"] : e["end"]]) for e in out["entities"]] == [
        ("PERSON", "[PERSON]"),
        ("AMOUNT", "500 USD"),
    ]


def test_predicted_names_never_break_a_placeholder():
    text = "身份证[ID_NUMBER]丢了，找王小明"
    ents = [
        {"label": "EMAIL", "start": 13, "end": 15, "confidence": 0.2},  # "]丢": the tail of a placeholder
        {"label": "PERSON", "start": 3, "end": 5, "confidence": 0.2},  # "[I": inside it only
        {"label": "PERSON", "start": 18, "end": 21, "confidence": 0.9},
    ]  # 王小明
    masked, out = mask_predicted_pii(text, {"entities": ents, "state": {}, "unknown_terms": []}, {"EMAIL", "PERSON"})
    assert masked == "身份证[ID_NUMBER][EMAIL]了，找[PERSON]"
    assert [masked[e["start"] : e["end"]] for e in out["entities"]] == ["[EMAIL]", "[PERSON]"]


class EchoResponder:
    name, version = "echo", "0"

    def respond(self, understanding, history):
        return understanding["intent"]


def make_echo():
    return EchoResponder()


def test_responder_is_pluggable():
    assert load_responder(None) is None
    assert load_responder("test_serving_units:make_echo").respond({"intent": "greeting"}, []) == "greeting"
    with pytest.raises(ResponderError, match="expected 'module:callable'"):
        load_responder("no_colon")
    with pytest.raises(ResponderError, match="cannot import"):
        load_responder("test_serving_units:nothing_here")
    with pytest.raises(ResponderError, match="lacks name, version or respond"):
        load_responder("builtins:dict")


def test_the_promoted_response_model_is_the_default_responder_and_a_target_wins(settings):
    from dataclasses import replace

    from findial.serving.responder import PromotedResponder, build_responder

    promoted = build_responder(settings)  # nothing is started: no registry is asked yet
    assert isinstance(promoted, PromotedResponder) and promoted.holder.kind == "response"
    assert promoted.current() is None and promoted.info() == {
        "ref": "models:/findial-response@champion",
        "name": None,
        "version": None,
        "last_error": None,
    }
    assert "findial promote model_name=findial-response version=N" in promoted.unavailable()
    custom = replace(settings.responder, target="test_serving_units:make_echo")
    assert isinstance(build_responder(replace(settings, responder=custom)), EchoResponder)
    assert build_responder(replace(settings, responder=replace(settings.responder, model_ref=None))) is None


def test_model_holder_loads_with_the_loader_it_is_given(tmp_path):
    from findial.serving.model_store import ModelHolder

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    calls = []

    def loader(path, device, ident):
        calls.append((path, device, ident))
        return "the model"

    holder = ModelHolder(str(bundle), tmp_path / "dl", loader=loader)
    assert holder.check_once() and holder.current.pipeline == "the model" and calls == [(bundle, "cpu", None)]
    wrong = ModelHolder(str(bundle), tmp_path / "dl", loader=loader, kind="response")
    assert not wrong.check_once() and wrong.current is None
    assert "an NLU bundle, not a response model" in wrong.last_error and len(calls) == 1
