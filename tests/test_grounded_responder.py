"""The grounded KB responder as a registered, gated response model (findial.data.kb.package,
evaluation/grounded.py): `findial run` registers it beside the NLU bundle, scores it on the KB's test queries,
promotes it through the response gates, and `findial serve` answers fee questions from it with citations.

The package and evaluation tests use a tiny random encoder over a small KB (BM25 alone ranks); the main-job
test runs the real e5-small over the bundled KB (about a minute on 2 cores)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from findial.data.kb import package as grounded_package
from findial.evaluation.grounded import evaluate_grounded, own_text

from test_kb_responder import ARTICLES, write_kb  # the small KB of the grounded-answer tests

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
QUERIES = [
    {"id": "q-zh-1", "lang": "zh", "query": "信用卡年费多少钱", "answers": ["kb-zh-0001"], "split": "test"},
    {"id": "q-zh-2", "lang": "zh", "query": "借记卡丢了怎么补卡", "answers": ["kb-zh-0002"], "split": "test"},
    {"id": "q-en-1", "lang": "en", "query": "what is the late fee if I miss the due date", "answers": ["kb-en-0001"],
     "split": "test"},
    {"id": "q-en-2", "lang": "en", "query": "I lost my debit card, how do I get a replacement card",
     "answers": ["kb-en-0002"], "split": "test"},
    {"id": "q-en-3", "lang": "en", "query": "late fee", "answers": ["kb-en-0001"], "split": "validation"},
]  # fmt: skip


@pytest.fixture(scope="module")
def encoder():
    from findial.training.backbones import tiny

    return tiny(extra_chars="".join({c for a in ARTICLES for c in a["title"] + a["body"]}))


def test_package_round_trip_and_bad_settings_name_the_key(tmp_path):
    settings = grounded_package.GroundedSettings(threshold=0.5, k=3, weight=0.0, encoder="tiny:0")
    path = grounded_package.save(tmp_path / "pkg", settings)
    assert grounded_package.is_grounded(path) and grounded_package.load(path) == settings
    from findial import registry

    assert registry.model_kind(path) == "response"  # registered and resolved like any response package
    for bad, key in (({"threshold": 2}, "threshold"), ({"k": 0}, "k"), ({"fusion": "max"}, "fusion")):
        with pytest.raises(grounded_package.PackageError, match=key):
            grounded_package.GroundedSettings(**bad)
    meta = json.loads((path / "findial_model.json").read_text())
    (path / "findial_model.json").write_text(json.dumps({**meta, "max_sentence": 2}))
    with pytest.raises(grounded_package.PackageError, match=r"findial_model.json: unknown key\(s\) max_sentence"):
        grounded_package.load(path)
    (path / "findial_model.json").write_text(json.dumps({**meta, "format_version": 9}))
    with pytest.raises(grounded_package.PackageError, match="format_version 9"):
        grounded_package.load(path)


def test_evaluation_scores_retrieval_citations_groundedness_and_gates(tmp_path, encoder):
    kb = write_kb(tmp_path / "kb.jsonl")
    unrelated = {"id": "q-zh-3", "lang": "zh", "query": "天气怎么样", "answers": ["kb-zh-0002"], "split": "test"}
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in [*QUERIES, unrelated]), "utf-8")
    pkg = grounded_package.save(tmp_path / "pkg", grounded_package.GroundedSettings(threshold=0.5, weight=0.0))
    gates = {"citation_accuracy": 0.9, "answer_rate": 0.9}
    result = evaluate_grounded(
        pkg, "mine", tmp_path / "report", kb, queries, index_dir=tmp_path / "index", encoder_path=encoder, gates=gates
    )
    m = result.metrics
    assert m["queries"] == 5 and m["by_lang.zh"]["queries"] == 3 and m["by_lang.en"]["queries"] == 2
    assert m["retrieval_recall_at_5"] == 1.0  # two articles per language, both in the top 5
    # the unrelated question shares no word with any article: BM25 confidence 0, handed off
    assert m["answered"] == 4 and m["answer_rate"] == 0.8 and m["handoffs"] == {"no_kb_answer": 1, "ungrounded": 0}
    assert m["citation_accuracy"] == 1.0 and m["correct_answer_rate"] == 0.8
    assert m["groundedness"] == 1.0 and m["pii_clean_rate"] == 1.0 and m["compliance_clean_rate"] == 1.0
    assert set(result.gates) == set(gates) and [f.split(":")[0] for f in result.failures] == ["answer_rate"]
    replies = [json.loads(x) for x in (tmp_path / "report" / "replies.jsonl").read_text().splitlines()]
    answered = [r for r in replies if r["reply"]]
    assert len(answered) == 4 and all(r["reply"].endswith(("）", ")")) and r["cited"] in r["reply"] for r in answered)
    assert "retrieval_recall_at_5" in (tmp_path / "report" / "report.md").read_text()


def test_compliance_counts_the_responders_own_words_and_lists_hits_in_quoted_articles():
    from findial.evaluation.grounded import score
    from findial.training.generation.rules import RuleSet

    article = {"id": "kb-en-9", "lang": "en", "body": "The annual fee is waived in the first year. Apply online."}
    quoted = "According to our information: The annual fee is waived in the first year. (source: kb-en-9)"
    invented = "According to our information: we guarantee a fixed return. (source: kb-en-9)"
    assert "waived" not in own_text(quoted, article)
    rows = [
        {"reply": r, "cited": "kb-en-9", "answers": ["kb-en-9"], "ranking": ["kb-en-9"], "query": "fee", "reason": None}
        for r in (quoted, invented)
    ]
    m = score(rows, {"kb-en-9": article}, RuleSet.load())
    assert m["compliance_clean_rate"] == 0.5 and m["kb_rule_hits"] == [
        "kb-en-9:fee_waiver",
        "kb-en-9:guaranteed_return",
    ]


# ------------------------------------------------------------------ the main job and the server, real e5
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_main_job_promotes_the_grounded_responder_and_serve_answers_fee_questions_with_citations(tmp_path):
    from findial.data.kb.load import kb_version, load_kb

    home = tmp_path / "home"
    env = {**os.environ, "FINDIAL_HOME": str(home)}
    data = [f"data.{k}_file={MINI}" for k in ("train", "val", "test")]
    run = subprocess.run(
        [sys.executable, "-m", "findial.cli", "run", "experiment=smoke", "data=custom", *data],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "registered findial-response v1 (grounded KB responder)" in run.stdout
    assert "PROMOTED findial-response v1 -> @champion (eval set bundled-test)" in run.stdout, run.stdout[-3000:]
    records = [json.loads(x) for x in (home / "audit" / "promotions.jsonl").read_text().splitlines()]
    assert records[-1]["model_name"] == "findial-response" and records[-1]["promoted"] is True
    # TEST-ONLY: the smoke NLU model fails its gates (as tests/test_serving.py, the alias is moved without them)
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias("findial-nlu", "champion", "1")
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "findial.cli", "serve", f"port={port}", "handoff.min_confidence=0",
         "handoff.intents=[]", "handoff.emotions=[]"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
    )  # fmt: skip
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline, body = time.monotonic() + 300, None
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                r = http.post("/v1/respond", json={"text": "信用卡年费是多少？"})
                if r.status_code == 200:
                    body = r.json()
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        assert body is not None, log.read_text()[-3000:]
        articles = {a["id"]: a for a in load_kb()}
        assert body["responder"] == {"name": "findial-response", "version": "1"}
        assert body["kb_version"] == kb_version(list(articles.values()))
        (cited,) = body["citations"]
        assert cited.startswith("kb-zh-") and "年费" in articles[cited]["title"] + articles[cited]["body"]
        assert body["response"].endswith(f"（参考：{cited}）")
        en = http.post("/v1/respond", json={"text": "How much is the annual fee?"}).json()
        (cited_en,) = en["citations"]
        assert cited_en.startswith("kb-en-") and "annual fee" in articles[cited_en]["body"].lower()
        assert en["response"].endswith(f"(source: {cited_en})")
    finally:
        http.close()
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
