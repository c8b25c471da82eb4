"""The corpus generator (data/generator): determinism, template splits, coverage, spans,
state carry-over and synthetic personal data."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

import pytest

from findial.data.generator.build import SPLITS, Builder, generate_corpus
from findial.data.generator.fillers import id_ok, luhn_ok
from findial.data.generator.markup import Matcher, parse
from findial.data.labelbook import Glossary, LabelBook, fold


@pytest.fixture(scope="module")
def labelbook():
    return LabelBook.load()


@pytest.fixture(scope="module")
def glossary():
    return Glossary.load()


@pytest.fixture(scope="module")
def built():
    """A full-size build (the bundled corpus recipe) with its template bookkeeping."""
    b = Builder(seed=13, scale=1.0)
    return b, b.build()


def _users(dialogues):
    return [t for d in dialogues for t in d["turns"] if t["speaker"] == "user"]


def _edit(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_same_seed_same_bytes(tmp_path):
    a = generate_corpus(tmp_path / "a", seed=7, scale=0.08)
    b = generate_corpus(tmp_path / "b", seed=7, scale=0.08)
    assert a == b
    for split in SPLITS:
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    c = generate_corpus(tmp_path / "c", seed=8, scale=0.08)
    assert (tmp_path / "c" / "train.jsonl").read_bytes() != (tmp_path / "a" / "train.jsonl").read_bytes()
    assert not list((tmp_path / "a").glob(".*"))  # no temp files left behind
    assert c["splits"]["train"]["dialogues"] > 0


def test_splits_share_no_template(built):
    b, _ = built
    used = b.used_templates
    for x in SPLITS:
        for y in SPLITS:
            if x < y:
                assert not used[x] & used[y], (x, y)
    # every template belongs to exactly one split and the text of a template is not reused elsewhere
    texts = Counter((key[0], key[2], t.text) for key, temps in b.pools.items() for t in temps)
    assert max(texts.values()) == 1, [k for k, n in texts.items() if n > 1][:5]
    # stratified: every intent has templates in all three splits, in both languages
    for intent in b.intents:
        for lang in ("zh", "en"):
            splits = {t.split for t in b.pools[("intent", intent, lang)]}
            assert splits == set(SPLITS), (intent, lang)
            assert len(b.pools[("intent", intent, lang)]) >= 8, (intent, lang)


def test_coverage(built, labelbook, glossary):
    b, splits = built
    train = _users(splits["train"])
    assert {t["intent"] for t in train} == set(labelbook.intents)
    assert {e["label"] for t in train for e in t["entities"]} == set(labelbook.entities)
    assert {t["emotion"] for t in train} == set(labelbook.emotions)
    for split in ("validation", "test"):
        assert {t["intent"] for t in _users(splits[split])} == set(labelbook.intents), split
    terms = Counter(e["term_id"] for t in train for e in t["entities"] if "term_id" in e)
    missing = set(glossary.terms) - set(terms)
    assert not missing, sorted(missing)
    n_users = sum(len(_users(splits[s])) for s in SPLITS)
    assert 3800 + 2800 * b.supplement_share <= n_users <= 5500 + 3600 * b.supplement_share  # ~3,200 per 1x
    multi = [d for s in SPLITS for d in splits[s] if len(_users([d])) > 1]
    assert 0.3 <= len(multi) / sum(len(splits[s]) for s in SPLITS) <= 0.5
    assert all(2 <= len(_users([d])) <= 5 for d in multi)
    branches = Counter(d["branch"] for d in splits["train"])
    assert len(branches) == 4


def test_spans_and_labels(built, labelbook, glossary):
    _, splits = built
    ids = set()
    for split in SPLITS:
        for d in splits[split]:
            assert d["id"] not in ids and d["lang"] in ("zh", "en")
            ids.add(d["id"])
            for t in d["turns"]:
                assert t["speaker"] in ("user", "agent") and t["text"].strip()
                if t["speaker"] == "agent":
                    continue
                assert t["intent"] in labelbook.intents and t["emotion"] in labelbook.emotions
                end = 0
                for e in t["entities"]:
                    surface = t["text"][e["start"] : e["end"]]
                    assert surface and surface == surface.strip() and e["start"] >= end, (t, e)
                    end = e["end"]
                    assert e["label"] in labelbook.entities
                    if e["label"] in labelbook.terminology_labels:
                        tid = e["term_id"]
                        assert glossary.label_of(tid) == e["label"]
                        if glossary.lookup(surface) != tid:  # a deliberate misspelt / homophone form
                            forms = [fold(f) for f in glossary.terms[tid].surface_forms]
                            assert min(_edit(fold(surface), f) for f in forms) <= 2, (surface, tid)
                    else:
                        assert "term_id" not in e


def test_loader_accepts_bundle(built, tmp_path, labelbook, glossary):
    corpus = pytest.importorskip("findial.data.corpus")
    summary = generate_corpus(tmp_path, seed=13, scale=0.1)
    for split in SPLITS:
        assert (
            len(corpus.load_corpus(tmp_path / f"{split}.jsonl", labelbook, glossary))
            == summary["splits"][split]["dialogues"]
        )


def test_every_glossary_form_in_text_is_tagged(built, glossary):
    """No untagged mention: every glossary form found in a user turn is exactly a tagged span."""
    b, splits = built
    matcher = Matcher(glossary)
    for split in SPLITS:
        for t in _users(splits[split]):
            spans = {(e["start"], e["end"]): e.get("term_id") for e in t["entities"]}
            others = [(e["start"], e["end"]) for e in t["entities"] if "term_id" not in e]
            for a, z, tid in matcher.find(t["text"]):
                if fold(t["text"][a:z]) in b.not_mentions or any(x <= a and z <= y for x, y in others):
                    continue
                assert spans.get((a, z)) == tid, (t["text"], t["text"][a:z], tid)


def test_state_carries_over(built, labelbook):
    _, splits = built
    carried = corrected = 0
    for split in SPLITS:
        for d in splits[split]:
            state: dict = {}
            for t in d["turns"]:
                if t["speaker"] != "user":
                    continue
                before = dict(state)
                for e in sorted(t["entities"], key=lambda e: e["start"]):
                    for slot, label in labelbook.state_slots.items():
                        if e["label"] == label:
                            state[slot] = e.get("term_id") or t["text"][e["start"] : e["end"]]
                assert t["state"] == state, (d["id"], t)
                if before and not t["entities"] and t["state"] == before:
                    carried += 1
                if before and any(before.get(k) not in (None, v) for k, v in state.items()):
                    corrected += 1
    assert carried > 300 and corrected > 100


def test_supply_turn_keeps_task_intent_and_correction_tags_standing_value(built):
    b, splits = built
    supply_texts = {("zh", "我叫"), ("en", "My name is")}
    seen = 0
    for d in splits["train"]:
        users = _users([d])
        for prev, cur in zip(users, users[1:]):
            if any(d["lang"] == lang and cur["text"].startswith(p) for lang, p in supply_texts) and [
                e["label"] for e in cur["entities"]
            ] == ["PERSON"]:  # only the name: a supply turn
                assert cur["intent"] == prev["intent"] or prev["intent"] in (
                    "affirm",
                    "deny",
                    "greeting",
                    "thanks",
                    "request_human_agent",
                )
                seen += 1
    assert seen > 0
    # a correction template tags only the new value; the retracted one stays plain text
    tmpl = next(t for t in b.pools[("correct", "amount", "zh")] if "{~amount}" in t.text)
    segs, _ = b.render(tmpl, "zh", prev={"amount": "一万"}, avoid={"amount": "一万"})
    tagged = [s.text for s in segs if s.label == "AMOUNT"]
    assert len(tagged) == 1 and tagged[0] != "一万" and "一万" in "".join(s.text for s in segs)


def test_personal_data_is_synthetic(built):
    _, splits = built
    counts = Counter()
    for split in SPLITS:
        for t in _users(splits[split]):
            for e in t["entities"]:
                s = unicodedata.normalize("NFKC", t["text"][e["start"] : e["end"]])
                if e["label"] == "CARD_NUMBER":
                    digits = re.sub(r"[ -]", "", s)
                    assert digits.isdigit() and 16 <= len(digits) <= 19 and luhn_ok(digits), s
                elif e["label"] == "ID_NUMBER":
                    assert id_ok(s) or re.fullmatch(r"[EGP]\d{8}", s), s
                elif e["label"] == "EMAIL":
                    assert re.fullmatch(r"[\w.]+@(mail\.)?example\.(com|org|net)", s), s
                elif e["label"] == "PHONE":
                    assert re.fullmatch(r"[+()\d][\d +()-]{7,}", s), s
                counts[e["label"]] += 1
            # masked numbers are never tagged
            for m in re.finditer(r"(尾号|ending in )(\d{4})", t["text"]):
                assert not any(e["start"] <= m.start(2) < e["end"] for e in t["entities"])
    assert min(counts[k] for k in ("CARD_NUMBER", "PHONE", "ID_NUMBER", "PERSON", "EMAIL")) >= 30


def test_markup_parse():
    emotion, toks = parse(
        "@angry 我的[信用卡](PRODUCT:credit_card){date:past}{丢了|不见了}<check>{~amount}", {"date", "amount"}
    )
    assert emotion == "angry"
    assert toks == [
        ("text", "我的"),
        ("lit", "信用卡", "PRODUCT", "credit_card"),
        ("slot", "date", "past", True),
        ("alt", ["丢了", "不见了"]),
        ("esc", "check"),
        ("slot", "amount", None, False),
    ]


def _supplement(tmp_path, monkeypatch, intents: str, followups: str = ""):
    import findial.data.generator.build as build

    d = tmp_path / "train_only"
    d.mkdir()
    (d / "templates_zh.yaml").write_text(intents, encoding="utf-8")
    if followups:
        (d / "dialogue_en.yaml").write_text(followups, encoding="utf-8")
    monkeypatch.setattr(build, "SUPPLEMENT_DIR", d)
    return d


def test_train_supplement_widens_train_only(tmp_path, monkeypatch):
    """Train-only templates reach train through the supplement, never validation or test, and
    adding them leaves validation and test byte-identical."""
    base = generate_corpus(tmp_path / "base", seed=7, scale=0.08, train_supplement=0)
    _supplement(
        tmp_path,
        monkeypatch,
        "card_lost_report:\n  user:\n    - 钱包被偷了，{product:ccard}得赶紧挂失\n",
        "supply:\n  phone: ['Reach me on {phone} please']\n",
    )
    sup = generate_corpus(tmp_path / "sup", seed=7, scale=0.08, train_supplement=2.0)
    for split in ("validation", "test"):
        assert (tmp_path / "sup" / f"{split}.jsonl").read_bytes() == (tmp_path / "base" / f"{split}.jsonl").read_bytes()
    n = base["splits"]["train"]["dialogues"]
    assert sup["supplement_dialogues"] == 2 * n and sup["splits"]["train"]["dialogues"] == 3 * n
    train = (tmp_path / "sup" / "train.jsonl").read_text(encoding="utf-8")
    assert train.startswith((tmp_path / "base" / "train.jsonl").read_text(encoding="utf-8"))  # appended

    b = Builder(seed=7, scale=0.08, train_supplement=2.0)
    b.build()
    supplement = {t.key for temps in b.pools.values() for t in temps if t.supplement}
    assert len(supplement) == 2
    assert supplement & b.used_templates["train"]
    assert not supplement & (b.used_templates["validation"] | b.used_templates["test"])


def test_bad_supplement_file_is_named(tmp_path, monkeypatch):
    d = _supplement(tmp_path, monkeypatch, "no_such_intent:\n  user: [你好]\n")
    with pytest.raises(ValueError, match=r"templates_zh\.yaml.*no_such_intent"):
        Builder(seed=7, scale=0.08)
    (d / "templates_zh.yaml").write_text("greeting:\n  user: 你好\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"templates_zh\.yaml.*greeting"):
        Builder(seed=7, scale=0.08)


def _out_of_scope_turns(corpus: dict) -> int:
    return sum(t.get("intent") == "out_of_scope" for d in corpus["train"] for t in d["turns"])


def test_supplement_weights_boost_train_only():
    """corpus.yaml supplement_weights multiply an intent's weight in the train supplement only:
    validation and test stay identical, train gets more of the boosted intent."""
    runs = {}
    for boost in (1.0, 8.0):
        b = Builder(seed=7, scale=0.08, train_supplement=2.0)
        b.supplement_weights = {"out_of_scope": boost}
        runs[boost] = b.build()
    c1, c8 = runs[1.0], runs[8.0]
    assert c1["validation"] == c8["validation"] and c1["test"] == c8["test"]
    assert _out_of_scope_turns(c8) >= 2 * _out_of_scope_turns(c1)


def test_supplement_weights_unknown_intent_is_named(monkeypatch):
    import findial.data.generator.build as build

    real = build._yaml
    monkeypatch.setattr(
        build,
        "_yaml",
        lambda name: {**real(name), "supplement_weights": {"no_such": 2.0}} if name == "corpus.yaml" else real(name),
    )
    with pytest.raises(ValueError, match=r"corpus\.yaml.*supplement_weights.*no_such"):
        Builder(seed=7, scale=0.08)
