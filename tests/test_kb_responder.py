"""Grounded KB answers (findial.data.kb.grounded, facts) and the grounded responder of /v1/respond (serving/kb.py).

CI-fast: a tiny random encoder over a small KB written in tmp_path, and a stand-in understander (the service
and the app are what is tested, not the NLU model). Tests on the real e5 index are marked slow.
"""

import asyncio
import json
import os
import time

import pytest

from findial.data.kb.facts import check_grounding, extract_facts
from findial.data.kb.grounded import GroundedAnswerer, select, sentences

ARTICLES = [
    {
        "id": "kb-zh-0001",
        "lang": "zh",
        "category": "fee",
        "title": "信用卡年费",
        "body": "普卡年费100元，金卡年费300元。当年刷卡满6笔可免次年年费。年费在发卡后次月扣收。"
        "以上收费标准仅供参考，以本行公示为准。",
        "products": ["credit_card"],
        "terms": ["annual_fee"],
        "effective_date": "2025-01-01",
        "reference_only": True,
    },
    {
        "id": "kb-zh-0002",
        "lang": "zh",
        "category": "procedure",
        "title": "借记卡挂失补卡",
        "body": "借记卡丢失后请立即通过手机银行或客服热线办理挂失。补卡需要本人携带身份证到网点办理。"
        "新卡一般三个工作日内制成。",
        "products": ["debit_card"],
        "terms": [],
        "effective_date": "2025-01-01",
    },
    {
        "id": "kb-en-0001",
        "lang": "en",
        "category": "fee",
        "title": "Credit card late fee",
        "body": "If the minimum payment is not made by the due date, a late fee of HK$200 is charged. "
        "Interest of 3.5% per month applies to the unpaid balance. Repeated late payments may be reported "
        "to the credit reference agency. These fees are for reference only and subject to change.",
        "products": ["credit_card"],
        "terms": ["late_fee"],
        "effective_date": "2025-01-01",
        "reference_only": True,
    },
    {
        "id": "kb-en-0002",
        "lang": "en",
        "category": "procedure",
        "title": "Replacing a lost debit card",
        "body": "Report a lost debit card at once in the mobile app or through our hotline. "
        "A replacement card is usually ready within five working days. You can collect it at any branch.",
        "products": ["debit_card"],
        "terms": [],
        "effective_date": "2025-01-01",
    },
]


SERVED = [ARTICLES[1], ARTICLES[2]]  # one article per language: retrieval with a random encoder is then certain


def write_kb(path, articles=ARTICLES):
    path.write_text("".join(json.dumps(a, ensure_ascii=False) + "\n" for a in articles), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def encoder():
    from findial.training.backbones import tiny

    return tiny(extra_chars="".join({c for a in ARTICLES for c in a["title"] + a["body"]}))


@pytest.fixture()
def answerer(encoder, tmp_path):
    from findial.data.kb.index import Retriever
    from findial.data.kb.load import load_kb

    articles = load_kb(write_kb(tmp_path / "kb.jsonl"))
    r = Retriever(encoder, weight=0.0)  # BM25 alone: a random dense encoder would rank at random
    r.index(articles, tmp_path / "index")
    return GroundedAnswerer(r, articles, threshold=0.0)


# ------------------------------------------------------------------ the template answer
def test_template_answer_cites_the_retrieved_article_and_uses_only_its_sentences(answerer):
    a = answerer.answer("信用卡年费多少钱，怎么免年费", "zh")
    top = a.ranking[0][0]
    assert a.text is not None and a.citations == (top,) and a.reason is None
    assert a.text.startswith("根据本行资料：") and a.text.endswith(f"（参考：{top}）")
    body = a.text[len("根据本行资料：") : -len(f"（参考：{top}）")]
    article = answerer.articles[top]
    used = sentences(body, "zh")
    assert used and all(s in sentences(article["body"], "zh") for s in used)
    assert top == "kb-zh-0001" and "年费" in body
    e = answerer.answer("how much is the late fee", "en")
    assert e.citations == ("kb-en-0001",) and e.text.endswith("(source: kb-en-0001)")
    assert "HK$200" in e.text and "for reference only" in e.text  # a figure brings the disclaimer along


def test_sentence_selection_keeps_order_and_at_most_three():
    body = ARTICLES[0]["body"]
    picked = select(body, "zh", "年费 扣收 免年费 刷卡", max_sentences=2)
    order = [sentences(body, "zh").index(s) for s in picked]
    assert order == sorted(order) and len(picked) <= 3
    assert select("First. Second one. Third!", "en", "nothing matches") == ["First."]


def test_low_confidence_and_no_article_of_the_language_hand_off(answerer):
    assert answerer.answer("年费", "zh", threshold=1.01).reason == "no_kb_answer"
    assert answerer.answer("annual fee", "fr").text is None


def test_state_terms_enrich_the_query(answerer):
    from findial.data.labelbook import Glossary

    answerer.glossary = Glossary.load()
    a = answerer.answer("这个要多久", "zh", state={"product": "debit_card"})
    assert a.citations == ("kb-zh-0002",)


# ------------------------------------------------------------------ the fact checker
@pytest.mark.parametrize(
    "text, facts",
    [
        (
            "普卡年费100元，金卡5万元，三个工作日，利率3.5%",
            [("100", "cny"), ("50000", "cny"), ("3", "workday"), ("3.5", "%")],
        ),
        (
            "HK$1,000 within three working days from 1 January 2025",
            [("1000", "hkd"), ("3", "workday"), ("2025-01-01", "date")],
        ),
        ("百分之五，2025年3月1日起，20 bps", [("5", "%"), ("2025-03-01", "date"), ("20", "bp")]),
    ],
)
def test_facts_are_normalised(text, facts):
    assert [(v, u) for _, v, u in extract_facts(text)] == facts


@pytest.mark.parametrize(
    "reply, dialogue, unsupported",
    [
        ("普卡年费100元（参考：kb-zh-0001）", [], []),
        ("普卡年费150元（参考：kb-zh-0001）", [], ["150元"]),
        ("年费打8折（参考：kb-zh-0001）", [], ["8"]),
        ("满六笔免年费，2025年1月1日起（参考：kb-zh-0001）", [], ["2025年1月1日"]),
        ("您说的200元已收到（参考：kb-zh-0001）", ["我昨天还了200元"], []),
        ("A late fee of HK$200 and 3.5% a month (source: kb-en-0001)", [], []),
        ("A late fee of HK$250 (source: kb-en-0001)", [], ["hk$250"]),
        ("Interest of 4.5% per month (source: kb-en-0001)", [], ["4.5%"]),
        ("Effective 1 March 2026 (source: kb-en-0001)", [], ["1 march 2026"]),
        ("You paid 2 days late (source: kb-en-0001)", ["I paid 2 days late, what is the fee?"], []),
    ],
)
def test_checker_flags_invented_figures_and_accepts_the_article_or_dialogue(reply, dialogue, unsupported):
    cited = [a for a in ARTICLES if a["id"] in reply]
    assert check_grounding(reply, cited, dialogue) == unsupported


# ------------------------------------------------------------------ the service and the app
class StandIn:
    """A stand-in understander: intent and state are given; the service and app are under test."""

    metrics = None

    async def start(self):
        pass

    async def stop(self):
        pass

    async def status(self):
        return {"ready": True, "model": {"ref": "stand-in", "name": "stand-in", "version": "1"}}

    async def understand(self, item):
        return (
            {
                "text": item.text,
                "intent": "fee_inquiry",
                "confidence": 0.9,
                "emotion": "neutral",
                "emotion_confidence": 0.9,
                "entities": [],
                "state": {},
                "unknown_terms": [],
            },
            {"ref": "stand-in", "name": "stand-in", "version": "1"},
        )


@pytest.fixture()
def settings(compose, tmp_path, encoder):
    from omegaconf import OmegaConf

    from findial.serving.settings import ServeSettings

    def make(*overrides):
        cfg = OmegaConf.to_container(
            compose(
                "serve",
                [
                    f"audit.path={tmp_path}/audit.jsonl",
                    "responder.kind=grounded",
                    f"responder.kb={tmp_path}/kb.jsonl",
                    f"responder.kb_index={tmp_path}/kb-index",
                    f"responder.kb_encoder={encoder}",
                    "responder.kb_threshold=0",
                    "handoff.min_confidence=0",
                    *overrides,
                ],
            ),
            resolve=True,
        )
        return ServeSettings.from_mapping(cfg)

    write_kb(tmp_path / "kb.jsonl", SERVED)
    return make


def audit(settings) -> list[dict]:
    return [json.loads(x) for x in open(settings.audit.path, encoding="utf-8")]


def test_respond_with_the_grounded_responder_returns_citations_and_kb_version(settings):
    from fastapi.testclient import TestClient

    from findial.data.kb.load import kb_version, load_kb
    from findial.serving.app import create_app
    from findial.serving.kb import KBResponder
    from findial.serving.responder import build_responder

    s = settings()
    responder = build_responder(s)
    assert isinstance(responder, KBResponder)
    version = kb_version(load_kb(s.responder.kb))
    with TestClient(create_app(s, StandIn(), responder)) as client:
        assert responder.holder.wait_loaded(120)
        r = client.post("/v1/respond", json={"text": "借记卡丢了怎么补卡", "session_id": "kb-1"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["handoff"] is False and body["citations"] == ["kb-zh-0002"] and body["kb_version"] == version
        assert body["response"].endswith("（参考：kb-zh-0002）")
        en = client.post("/v1/respond", json={"text": "what is the late fee?"}).json()
        assert en["citations"] == ["kb-en-0001"] and "HK$200" in en["response"]
        assert body["responder"] == {"name": "findial-kb-grounded", "version": version}
        assert client.get("/healthz").json()["response_model"]["version"] == version
        turns = client.get("/v1/dialogue/kb-1").json()["turns"]
        assert turns[1]["speaker"] == "agent" and turns[1]["citations"] == ["kb-zh-0002"]
    rec = audit(s)[0]
    assert rec["citations"] == ["kb-zh-0002"] and rec["kb_version"] == version
    assert rec["grounding"] == {"cited": ["kb-zh-0002"], "unsupported": [], "reason": None}


def test_an_ungrounded_reply_is_withheld_and_handed_off(settings):
    from findial.serving.responder import Reply
    from findial.serving.service import DialogueService

    class Inventive:
        name, version = "inventive", "1"

        def respond(self, understanding, history):
            return Reply("普卡年费只要50元（参考：kb-zh-0001）", ("kb-zh-0001",), "v", None, (ARTICLES[0],))

    s = settings()
    service = DialogueService(s, StandIn())
    out = asyncio.run(service.user_turn("年费多少", "zh", "r1", "respond", responder=Inventive()))
    assert out["response"] is None and out["handoff"] is True and out["handoff_reasons"] == ["ungrounded"]
    assert out["citations"] == []
    rec = audit(s)[-1]
    assert rec["grounding"]["unsupported"] == ["50元"] and rec["grounding"]["cited"] == ["kb-zh-0001"]
    # the same figure said by the customer earlier is grounded in the dialogue
    out = asyncio.run(service.user_turn("我看到年费50元？", "zh", "r2", "respond", responder=Inventive()))
    assert out["handoff"] is False and out["citations"] == ["kb-zh-0001"]


def test_no_confident_answer_hands_off(settings):
    from findial.serving.kb import KBResponder
    from findial.serving.service import DialogueService

    s = settings("responder.kb_threshold=1")
    holder = KBResponder.from_settings(s).holder
    assert holder.check_once()
    service = DialogueService(s, StandIn())
    out = asyncio.run(service.user_turn("随便问问", "zh", "r1", "respond", responder=holder.current.pipeline))
    assert out["response"] is None and out["handoff_reasons"] == ["no_kb_answer"] and out["citations"] == []


def test_kb_hot_reload_picks_up_an_edited_article_without_a_restart(settings, tmp_path):
    from fastapi.testclient import TestClient

    from findial.serving.app import create_app
    from findial.serving.responder import build_responder

    s = settings("poll_interval_s=0.2")
    responder = build_responder(s)
    with TestClient(create_app(s, StandIn(), responder)) as client:
        assert responder.holder.wait_loaded(120)
        first = client.post("/v1/respond", json={"text": "补卡要几个工作日"}).json()
        assert first["citations"] == ["kb-zh-0002"] and "三个工作日" in first["response"]
        edited = [dict(a) for a in SERVED]
        edited[0]["body"] = edited[0]["body"].replace("三个工作日", "五个工作日")
        write_kb(tmp_path / "kb.jsonl", edited)
        os.utime(tmp_path / "kb.jsonl", ns=(time.time_ns(), time.time_ns() + 10**9))  # a coarse-mtime FS
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = client.post("/v1/respond", json={"text": "补卡要几个工作日"}).json()
            if r["kb_version"] != first["kb_version"]:
                break
            time.sleep(0.2)
        assert r["kb_version"] != first["kb_version"] and "五个工作日" in r["response"]
        assert responder.holder.current.index["embedded"] == 1 and responder.holder.current.index["reused"] == 1
        # a broken file is skipped: the edited KB keeps serving
        (tmp_path / "kb.jsonl").write_text("{not json\n", encoding="utf-8")
        time.sleep(1.0)
        assert client.post("/v1/respond", json={"text": "补卡"}).json()["kb_version"] == r["kb_version"]
        assert responder.holder.last_error


def test_settings_check_the_responder_kind(compose):
    from omegaconf import OmegaConf

    from findial.serving.settings import ServeSettings, SettingsError

    cfg = OmegaConf.to_container(compose("serve", []), resolve=True)
    assert ServeSettings.from_mapping(cfg).responder.kind == "model"  # the registered response model by default
    with pytest.raises(SettingsError, match="responder.kind"):
        ServeSettings.from_mapping({**cfg, "responder": {**cfg["responder"], "kind": "llm"}})


# ------------------------------------------------------------------ the real e5 index
@pytest.mark.slow
def test_bundled_kb_answers_a_real_question_with_e5(tmp_path):
    from findial.data.kb.index import Retriever
    from findial.data.kb.load import load_kb

    articles = load_kb()
    r = Retriever()
    r.index(articles, tmp_path / "index")
    answer = GroundedAnswerer(r, articles).answer("信用卡逾期了违约金怎么算", "zh", threshold=0.0)
    assert answer.text is not None and answer.citations[0].startswith("kb-zh-")
    cited = [x for x in articles if x["id"] in answer.citations]
    assert check_grounding(answer.text, cited, []) == []
