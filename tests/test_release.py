"""Gray release on the real server: champion / challenger routing, shadow scoring, automatic rollback.

Four tiny randomly initialised bundles of known behaviour (their heads set so that every turn gets one intent,
with confidence 1) are registered in a temporary sqlite MLflow registry:

- v1 "steady":  account_balance, no hand-off (the champion);
- v2 "handoff": request_human_agent: every turn is handed off;
- v3 "other":   card_lost_report, no hand-off (a challenger of different behaviour; a shadow that disagrees);
- v4 "broken":  v1 with a max length beyond its backbone's 512 positions: a long turn fails.

The champion alias is set directly (TEST-ONLY bypass of the gates, as tests/test_serving.py does). The release
steps run through the gates of a policy built in code, on evaluations recorded for the test (TEST-ONLY); the
shipped policy's refusal is tested through the command line in tests/test_release_cli.py.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.isolated  # run in a pytest process of its own: see the marker in pyproject.toml

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
NAME = "findial-nlu"
EVAL_SET, FINGERPRINT = "release-test", "fp-release-test"
LONG = "查询余额，" * 140  # 700 characters: beyond 512 tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_bundles(out: Path) -> dict[str, Path]:
    """The four bundles (see the module docstring), written under ``out``."""
    import torch
    from hydra import compose, initialize_config_module

    from findial.federated.models import build_task_models
    from findial.registry import make_bundle
    from findial.runtime import setup
    from findial.training.package import save_package

    setup()
    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = compose(
            "fed",
            overrides=[
                f"paths.home={out}",
                "model=tiny",
                "data=custom",
                f"data.train_file={MINI}",
                f"data.val_file={MINI}",
            ],
        )
    models = build_task_models(cfg, cache=False)
    labels = {"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary}
    intent, ner = models.modules["intent"], models.modules["ner"]
    meta_i, meta_n = models.metas["intent"], models.metas["ner"]

    def bundle(name: str, label: str, max_length: int | None = None) -> Path:
        with torch.no_grad():
            for head, names, chosen in (
                (intent.intent_head, meta_i["intents"], label),
                (intent.emotion_head, meta_i["emotions"], "neutral"),
                (ner.tag_head, meta_n["tags"], "O"),
            ):
                head.weight.zero_()
                head.bias.fill_(-10.0)
                head.bias[names.index(chosen)] = 10.0
        extra = {} if max_length is None else {"max_length": max_length}
        i = save_package(intent, {**meta_i, **extra}, out / name / "intent", files=labels)
        n = save_package(ner, {**meta_n, **extra}, out / name / "ner", files=labels)
        return make_bundle(i, n, out / name / "bundle", {"test": name})

    return {
        "steady": bundle("steady", "account_balance"),
        "handoff": bundle("handoff", "request_human_agent"),
        "other": bundle("other", "card_lost_report"),
        "broken": bundle("broken", "account_balance", max_length=4000),
    }


def mlflow_client(home: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{home}/mlflow.db"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def registry_home(tmp_path_factory):
    """A FINDIAL_HOME with v1..v4 registered, v1 the champion (TEST-ONLY alias), every version evaluated
    on EVAL_SET (TEST-ONLY evaluation tags)."""
    from findial import registry, tracking

    home = tmp_path_factory.mktemp("release-home")
    bundles = build_bundles(home / "bundles")
    tracking.configure(f"sqlite:///{home}/mlflow.db", home / "mlartifacts")
    versions = {k: registry.register(b, NAME, {"findial.backbone": "tiny"}) for k, b in bundles.items()}
    assert versions == {"steady": "1", "handoff": "2", "other": "3", "broken": "4"}
    for v in versions.values():
        registry.record_evaluation(NAME, v, EVAL_SET, {"terminology_f1": 0.95}, FINGERPRINT, "run-test")
    mlflow_client(home).set_registered_model_alias(NAME, "champion", "1")  # TEST-ONLY: no gates
    return home


def policy():
    from findial.policy import Policy

    return Policy.of({"nlu": {"terminology_f1": 0.9}}, {"nlu": {EVAL_SET: FINGERPRINT}})


@pytest.fixture()
def home(registry_home):
    """The module's home with a clean plan: v1 the champion, no challenger, no shadow, no release tag."""
    from findial import tracking

    tracking.configure(f"sqlite:///{registry_home}/mlflow.db", registry_home / "mlartifacts")
    client = mlflow_client(registry_home)
    for alias in ("challenger", "shadow"):
        client.delete_registered_model_alias(NAME, alias)
    client.set_registered_model_alias(NAME, "champion", "1")  # TEST-ONLY
    client.delete_registered_model_tag(NAME, "findial.release")
    return registry_home


def settings_for(home: Path, tmp_path: Path, name: str, *overrides: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from findial.serving.settings import ServeSettings

    with initialize_config_module("findial.configs", version_base="1.3"):
        cfg = compose(
            "serve",
            overrides=[
                f"paths.home={home}",
                f"audit.path={tmp_path}/{name}-audit.jsonl",
                f"download_dir={tmp_path}/{name}-models",
                "poll_interval_s=0.3",
                "release.monitor_interval_s=0.3",
                "handoff.min_confidence=0.5",
                "batching.max_wait_ms=2",
                *overrides,
            ],
        )
    return ServeSettings.from_mapping(OmegaConf.to_container(cfg, resolve=True))


@contextmanager
def serving(settings):
    """``findial serve``'s app (``server.build_local_app``) under uvicorn on a loopback port, in a thread."""
    import uvicorn

    from findial.serving.server import build_local_app

    app = build_local_app(settings)
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on", ws="none"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:
        wait_for(lambda: _ready(http), 120, "the server did not get ready")
        yield http
    finally:
        http.close()
        srv.should_exit = True
        thread.join(timeout=60)


def _ready(http) -> bool:
    try:
        return http.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def wait_for(predicate, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(message)


def loaded(http, role: str) -> str | None:
    return http.get("/healthz").json()["release"]["roles"][role]["loaded"]


def plan_share(http) -> float:
    return http.get("/healthz").json()["release"]["share"]


def start(home: Path, version: str, share: float, **rules):
    """``findial release start`` in process, with the test's policy; no rules: auto-rollback off."""
    from findial.serving import release_steps
    from findial.serving.release import AutoRollback

    rules = AutoRollback(**rules) if rules else AutoRollback(enabled=False)
    result = release_steps.start(NAME, version, EVAL_SET, share, home / "audit" / "promotions.jsonl", rules, policy())
    assert result.applied, result.text
    return result


def metric_samples(http) -> dict[str, float]:
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def audit_records(settings) -> list[dict]:
    path = Path(settings.audit.path)
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


# ------------------------------------------------------------------------------------ the plan, without a server
def test_the_bucket_is_stable_and_the_share_is_kept_over_many_ids():
    from findial.serving.release import ReleasePlan, bucket

    import hashlib

    assert bucket("call-1") == int.from_bytes(hashlib.sha256(b"call-1").digest()[:8], "big") % 10000
    plan = ReleasePlan(NAME, champion="1", challenger="2", share=0.1)
    n = 20000
    share = sum(plan.assign(f"session-{i}") == "challenger" for i in range(n)) / n
    assert abs(share - 0.1) < 0.01  # 5 standard deviations: a hash that ignored the share would fail
    assert plan.with_(share=0.0).assign("session-1") == "champion"
    assert ReleasePlan(NAME, champion="1", share=1.0).assign("x") == "champion"  # no challenger, no share


def test_a_bad_release_tag_is_refused_naming_the_field():
    from findial.serving.release import ReleaseError, parse_tag

    for raw, field in (
        ('{"share": 1.5}', "share: must be within [0, 1]"),
        ('{"share": 0.1, "auto_rollback": {"min_sample": 0}}', "auto_rollback.min_sample"),
        ('{"shares": 0.1}', "unknown key(s) shares"),
        ("not json", "not JSON"),
    ):
        with pytest.raises(ReleaseError, match=re.escape(field)):
            parse_tag(raw)


def test_the_two_proportion_test_and_the_rollback_rule():
    from findial.serving.release import AutoRollback
    from findial.serving.release_stats import Counts, two_proportion, verdict

    same = two_proportion(50, 500, 50, 500)
    assert same["z"] == 0 and same["p_value"] == pytest.approx(1.0)
    far = two_proportion(50, 500, 100, 500)  # 10% against 20%
    assert far["z"] == pytest.approx(4.428, abs=0.001) and far["p_value"] < 1e-4
    champion, challenger = Counts(), Counts()
    for i in range(100):
        champion.answer(i % 10 == 0, False)
        challenger.answer(i % 4 == 0, False)  # 25% against 10% hand-offs
    rules = AutoRollback(handoff_margin=0.1, min_sample=100)
    assert verdict(champion, challenger, rules)["failures"] == ["handoff_rate_excess: 0.1500 > 0.1"]
    assert verdict(champion, challenger, AutoRollback(handoff_margin=0.2, min_sample=100))["failures"] == []
    assert not verdict(champion, challenger, AutoRollback(min_sample=101))["decided"]


# ------------------------------------------------------------------------------------------------- routing
def test_the_split_is_within_tolerance_sticky_and_the_same_on_every_replica(home, tmp_path):
    from findial.serving.release import BUCKETS, bucket

    start(home, "3", 0.3)
    a_settings = settings_for(home, tmp_path, "a")
    with serving(a_settings) as a, serving(settings_for(home, tmp_path, "b")) as b:
        for http in (a, b):
            wait_for(lambda: loaded(http, "challenger") == "3", 60, "the challenger was not loaded")
        sessions = [f"split-{i}" for i in range(300)]

        def version(http, sid, text="我的信用卡丢了"):
            r = http.post(f"/v1/dialogue/{sid}", json={"text": text})
            assert r.status_code == 200, r.text
            return r.json()

        first = {sid: version(a, sid) for sid in sessions}
        versions = {sid: u["model"]["version"] for sid, u in first.items()}
        expected = {sid: "3" if bucket(sid) < 0.3 * BUCKETS else "1" for sid in sessions}
        assert versions == expected  # the documented hash rule, exactly
        share = sum(v == "3" for v in versions.values()) / len(sessions)
        assert abs(share - 0.3) < 0.08, share  # 3 standard deviations of a binomial share over 300
        assert {u["intent"] for sid, u in first.items() if versions[sid] == "3"} == {"card_lost_report"}
        assert all(
            u["model"]["ref"] == f"models:/{NAME}@challenger" for u in first.values() if u["model"]["version"] == "3"
        )
        # another replica assigns the same sessions the same way
        assert {sid: version(b, sid)["model"]["version"] for sid in sessions[:60]} == {
            s: versions[s] for s in sessions[:60]
        }
        # sticky: the next turns of a session stay on its version
        assert {sid: version(a, sid, "年费多少")["model"]["version"] for sid in sessions} == versions
        # a stateless call is keyed by its text: the same text, the same version; the share holds over texts
        stateless = [a.post("/v1/understand", json={"text": f"查询余额 {i}"}).json() for i in range(200)]
        again = [a.post("/v1/understand", json={"text": f"查询余额 {i}"}).json() for i in range(200)]
        assert [u["model"]["version"] for u in stateless] == [u["model"]["version"] for u in again]
        assert abs(sum(u["model"]["version"] == "3" for u in stateless) / 200 - 0.3) < 0.11
        # a ramp to 60%: sessions keep their version, new sessions follow the new share
        start(home, "3", 0.6)
        wait_for(lambda: plan_share(a) == 0.6, 30, "the new share was not read")
        assert {sid: version(a, sid, "谢谢")["model"]["version"] for sid in sessions} == versions
        fresh = [f"ramp-{i}" for i in range(200)]
        got = {sid: version(a, sid)["model"]["version"] for sid in fresh}
        assert got == {sid: "3" if bucket(sid) < 0.6 * BUCKETS else "1" for sid in fresh}
        metrics = metric_samples(a)
    records = [r for r in audit_records(a_settings) if r["event"] == "dialogue"]
    assert all(r["release"]["version"] == r["model"]["version"] for r in records)
    assert {r["release"]["role"] for r in records} == {"champion", "challenger"}
    assert metrics['findial_model_turns_total{version="3",role="challenger"}'] >= 100
    assert metrics['findial_model_turns_total{version="1",role="champion"}'] >= 100
    assert metrics['findial_model_handoffs_total{version="3",role="challenger"}'] == 0
    assert metrics['findial_model_turn_duration_seconds_count{version="3",role="challenger"}'] >= 100
    assert metrics["findial_release_challenger_share"] == 0.6


# -------------------------------------------------------------------------------------------------- shadow
def _conversation(http, prefix: str) -> list[dict]:
    out = []
    for i in range(10):
        for text in ("我想办一张信用卡", "年费多少钱", "I lost my card"):
            r = http.post(f"/v1/dialogue/{prefix}-{i}", json={"text": text})
            assert r.status_code == 200, r.text
            out.append(r.json())
        r = http.post("/v1/understand", json={"text": f"what is my balance {i}"})
        assert r.status_code == 200
        out.append(r.json())
    return [{k: v for k, v in u.items() if k not in ("request_id", "session_id")} for u in out]


def test_shadow_scoring_never_changes_a_reply_and_reports_agreement(home, tmp_path):
    from findial.serving import release_steps

    settings = settings_for(home, tmp_path, "shadow")
    with serving(settings) as http:
        without = _conversation(http, "plain")
        release_steps.set_shadow(NAME, "3", home / "audit" / "promotions.jsonl")
        wait_for(lambda: loaded(http, "shadow") == "3", 60, "the shadow was not loaded")
        wait_for(lambda: http.get("/healthz").json()["release"]["shadow"] == "3", 30, "plan not read")
        with_shadow = _conversation(http, "shadowed")
        assert with_shadow == without  # the same replies, word for word
        n = len(with_shadow)
        key = 'findial_shadow_turns_total{version="3",answered_by="1"}'
        wait_for(lambda: metric_samples(http).get(key) == n, 60, "the shadow did not score every turn")
        samples = metric_samples(http)
    assert samples['findial_shadow_intent_agreements_total{version="3",answered_by="1"}'] == 0  # v3: another intent
    assert samples['findial_shadow_state_agreements_total{version="3",answered_by="1"}'] == n  # the same NER
    assert samples["findial_shadow_dropped_total"] == 0
    shadow = [r for r in audit_records(settings) if r["event"] == "shadow"]
    assert len(shadow) == n and {r["intent"] for r in shadow} == {"card_lost_report"}
    assert all(
        r["release"] == {"role": "shadow", "version": "3"} and r["answered_by"]["version"] == "1" for r in shadow
    )
    assert all(r["agree"] == {"intent": False, "state": True} for r in shadow)


def test_a_full_shadow_queue_drops_copies_and_a_failing_shadow_fails_no_reply(home, tmp_path):
    from findial.serving import release_steps

    release_steps.set_shadow(NAME, "4", home / "audit" / "promotions.jsonl")  # v4 fails on long turns
    settings = settings_for(home, tmp_path, "queue", "release.shadow_queue=1")
    with serving(settings) as http:
        wait_for(lambda: loaded(http, "shadow") == "4", 60, "the shadow was not loaded")
        statuses, lock = [], threading.Lock()

        def fire(i):
            with httpx.Client(base_url=str(http.base_url), timeout=60) as c:
                for j in range(8):
                    r = c.post("/v1/understand", json={"text": LONG if j % 2 else f"balance {i} {j}"})
                    with lock:
                        statuses.append((r.status_code, r.json()["model"]["version"] if r.status_code == 200 else None))

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [(200, "1")] * 64
        for _ in range(3):  # one at a time: the queue has room, and v4 fails on each of these
            assert http.post("/v1/understand", json={"text": LONG}).json()["model"]["version"] == "1"
            time.sleep(0.3)
        key = 'findial_shadow_errors_total{version="4"}'
        wait_for(lambda: metric_samples(http).get(key, 0) >= 3, 30, "the shadow's failures were not counted")
        samples = metric_samples(http)
    assert samples["findial_shadow_dropped_total"] > 0  # 8 concurrent clients, a queue of 1


# ---------------------------------------------------------------------------------------- automatic rollback
def _load(http, stop: threading.Event, out: list, prefix: str, text: str = "我的信用卡丢了"):
    """New sessions, one turn each, until ``stop``: (status, version) per request."""
    with httpx.Client(base_url=str(http.base_url), timeout=60) as c:
        i = 0
        while not stop.is_set():
            r = c.post(f"/v1/dialogue/{prefix}-{i}", json={"text": text})
            out.append((r.status_code, r.json().get("model", {}).get("version") if r.status_code == 200 else r.text))
            i += 1


def _rolled_back(home, timeout: float = 120):
    client = mlflow_client(home)
    wait_for(
        lambda: "challenger" not in client.get_registered_model(NAME).aliases, timeout, "no automatic rollback happened"
    )


def test_a_challenger_that_hands_off_too_much_is_rolled_back_automatically(home, tmp_path):
    from findial import audit, registry

    start(home, "2", 0.5, handoff_margin=0.2, min_sample=15)
    settings = settings_for(home, tmp_path, "auto")
    with serving(settings) as http:
        wait_for(lambda: loaded(http, "challenger") == "2", 60, "the challenger was not loaded")
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=_load, args=(http, stop, results, f"auto{k}")) for k in range(3)]
        for w in workers:
            w.start()
        try:
            _rolled_back(home)
            n = len(results)
            wait_for(lambda: len(results) > n + 30, 60, "no traffic after the rollback")
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        health = http.get("/healthz").json()["release"]
        after = [v for _, v in results[n + 10 :]]
        samples = metric_samples(http)
    assert {s for s, _ in results} == {200}, [r for r in results if r[0] != 200][:3]  # no request failed
    assert {v for _, v in results} == {"1", "2"} and set(after) == {"1"}  # traffic is back on the champion
    assert health["challenger"] is None and health["rollbacks"][0]["version"] == "2"
    assert samples["findial_release_rollbacks_total"] == 1
    log = home / "audit" / "promotions.jsonl"
    rec = [r for r in audit.records(log) if r.get("action") == "release.rollback"][-1]
    assert rec["automatic"] is True and rec["version"] == "2" and "handoff_rate_excess" in rec["reason"]
    assert rec["release"]["figures"]["challenger"]["handoff_rate"] == 1.0
    assert rec["release"]["figures"]["champion"]["handoff_rate"] == 0.0
    assert audit.verify(log, registry.audit_heads()) == []


def test_an_erroring_challenger_fails_no_request_and_is_rolled_back(home, tmp_path):
    start(home, "4", 0.5, error_margin=0.05, handoff_margin=1.0, min_sample=10)
    settings = settings_for(home, tmp_path, "errors")
    with serving(settings) as http:
        wait_for(lambda: loaded(http, "challenger") == "4", 60, "the challenger was not loaded")
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=_load, args=(http, stop, results, f"err{k}", LONG)) for k in range(2)]
        for w in workers:
            w.start()
        try:
            _rolled_back(home)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
        samples = metric_samples(http)
    assert results and {s for s, _ in results} == {200}  # every turn v4 failed on was answered by v1
    assert {v for _, v in results} == {"1"}
    errors = [r for r in audit_records(settings) if r["event"] == "model_error"]
    assert errors and all(r["release"] == {"role": "challenger", "version": "4"} for r in errors)
    assert samples['findial_model_errors_total{version="4",role="challenger"}'] == len(errors)


# --------------------------------------------------------------------------------- no failed request in a switch
def test_no_request_fails_while_a_release_starts_ramps_is_promoted_and_rolled_back(home, tmp_path):
    from findial import audit
    from findial.serving import release_steps

    log = home / "audit" / "promotions.jsonl"
    settings = settings_for(home, tmp_path, "switch")
    with serving(settings) as http:
        stop, results = threading.Event(), []
        workers = [threading.Thread(target=_load, args=(http, stop, results, f"sw{k}")) for k in range(3)]
        for w in workers:
            w.start()
        try:
            time.sleep(1.0)
            start(home, "3", 0.3, min_sample=5, handoff_margin=0.5)
            wait_for(lambda: loaded(http, "challenger") == "3", 60, "the challenger was not loaded")
            start(home, "3", 0.8, min_sample=5, handoff_margin=0.5)
            wait_for(lambda: sum(v == "3" for _, v in results) > 20, 60, "the challenger got no traffic")
            promoted = release_steps.promote(NAME, EVAL_SET, log, [settings.audit.path], policy())
            assert promoted.applied, promoted.text
            wait_for(lambda: http.get("/healthz").json()["model"]["version"] == "3", 60, "v3 is not the champion")
            n = len(results)
            wait_for(lambda: len(results) > n + 20, 60, "no traffic after the promotion")
            after_promotion = [v for _, v in results[n:]]
            start(home, "1", 0.5)  # the old champion as a challenger, then rolled back by hand
            wait_for(lambda: loaded(http, "challenger") == "1", 60, "the challenger was not loaded")
            wait_for(lambda: any(v == "1" for _, v in results[n + 20 :]), 60, "v1 got no traffic as challenger")
            assert release_steps.rollback(NAME, log, "test").applied
            wait_for(lambda: loaded(http, "challenger") is None, 60, "the challenger was not unloaded")
            m = len(results)
            wait_for(lambda: len(results) > m + 20, 60, "no traffic after the rollback")
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=60)
    assert {s for s, _ in results} == {200}, [r for r in results if r[0] != 200][:3]
    assert set(after_promotion) <= {"1", "3"} and after_promotion[-1] == "3"
    assert {v for _, v in results[m + 5 :]} == {"3"}
    actions = [r.get("action") for r in audit.records(log)][-5:]
    assert actions == ["release.start", "release.start", "release.promote", "release.start", "release.rollback"]


# --------------------------------------------------------------------------------------------------- Ray Serve
@pytest.mark.slow
def test_ray_serve_routes_the_same_plan_by_the_same_hash(home, tmp_path):
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile

    from findial.serving import release_steps
    from findial.serving.release import BUCKETS, bucket

    start(home, "3", 0.4)
    release_steps.set_shadow(NAME, "2", home / "audit" / "promotions.jsonl")
    ray_tmp = tempfile.mkdtemp(prefix="fdrel-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    log = tmp_path / "ray-serve.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "serve",
            "backend=ray",
            "replicas=1",
            f"port={port}",
            "poll_interval_s=0.5",
            "handoff.min_confidence=0.5",
            "responder.model_ref=null",
            f"ray.temp_dir={ray_tmp}",
            f"audit.path={tmp_path}/ray-audit.jsonl",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=home,
        env={**os.environ, "FINDIAL_HOME": str(home)},
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
    try:

        def challenger_loaded():
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                rel = http.get("/healthz").json()["release"]
            except (httpx.TransportError, ValueError, KeyError, TypeError):
                return False
            return rel["roles"]["challenger"]["loaded"] == "3" and rel["roles"]["shadow"]["loaded"] == "2"

        wait_for(challenger_loaded, 500, "the Ray deployments did not load the plan")
        sessions = [f"ray-{i}" for i in range(60)]
        got = {sid: http.post(f"/v1/dialogue/{sid}", json={"text": "我的信用卡丢了"}).json() for sid in sessions}
        assert {s: u["model"]["version"] for s, u in got.items()} == {
            s: "3" if bucket(s) < 0.4 * BUCKETS else "1" for s in sessions
        }
        again = {
            sid: http.post(f"/v1/dialogue/{sid}", json={"text": "年费"}).json()["model"]["version"] for sid in sessions
        }
        assert again == {s: u["model"]["version"] for s, u in got.items()}
        key = 'findial_shadow_turns_total{version="2",answered_by="1"}'
        wait_for(lambda: metric_samples(http).get(key, 0) > 0, 60, "no shadow scoring under Ray")
        assert release_steps.rollback(NAME, home / "audit" / "promotions.jsonl", "test") is not None
        wait_for(lambda: http.get("/healthz").json()["release"]["challenger"] is None, 60, "the rollback was not read")
        assert {http.post(f"/v1/dialogue/{s}", json={"text": "谢谢"}).json()["model"]["version"] for s in sessions} == {
            "1"
        }
    finally:
        http.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
