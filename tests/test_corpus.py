"""The corpus loader: every rule of corpus-format.md, with file, line and field in the error."""

import json
from pathlib import Path

import pytest

from findial.data.corpus import CorpusError, fingerprint, load_corpus, to_dataset, turn_records
from findial.data.labelbook import Glossary, LabelBook

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"


@pytest.fixture(scope="module")
def labels():
    return LabelBook.load(), Glossary.load()


def good():
    return {
        "id": "d1",
        "lang": "zh",
        "branch": "shanghai",
        "turns": [
            {
                "speaker": "user",
                "text": "我的信用卡昨天丢了",
                "intent": "card_lost_report",
                "emotion": "anxious",
                "entities": [
                    {"start": 2, "end": 5, "label": "PRODUCT", "term_id": "credit_card"},
                    {"start": 5, "end": 7, "label": "DATE"},
                ],
                "state": {"product": "credit_card", "date": "昨天"},
            },
            {"speaker": "agent", "text": "已为您临时挂失。"},
        ],
    }


def write(tmp_path, records, name="c.jsonl"):
    p = tmp_path / name
    p.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return p


def problems(tmp_path, labels, records):
    with pytest.raises(CorpusError) as info:
        load_corpus(write(tmp_path, records), *labels)
    return info.value.problems


def test_bundled_fixture_loads(labels):
    dialogues = load_corpus(MINI, *labels)
    assert len(dialogues) == 12
    assert dialogues[0]["turns"][0]["entities"][0]["term_id"] == "credit_card"


@pytest.mark.parametrize(
    "mutate, field, words",
    [
        (lambda d: d["turns"][0].update(intent="fly_to_mars"), "turns[0].intent", "unknown intent"),
        (lambda d: d["turns"][0].update(emotion="ecstatic"), "turns[0].emotion", "unknown emotion"),
        (lambda d: d["turns"][0]["entities"][0].update(label="PLANET"), "turns[0].entities[0].label", "unknown entity"),
        (
            lambda d: d["turns"][0]["entities"][0].update(term_id="warp_drive"),
            "turns[0].entities[0].term_id",
            "unknown glossary term",
        ),
        (
            lambda d: d["turns"][0]["entities"][0].update(term_id="annual_fee"),
            "turns[0].entities[0].term_id",
            "is a TERM, not a PRODUCT",
        ),
        (lambda d: d["turns"][0]["entities"][0].pop("term_id"), "turns[0].entities[0].term_id", "required"),
        (lambda d: d["turns"][0]["entities"][1].update(start=4), "turns[0].entities[1]", "overlaps"),
        (lambda d: d["turns"][0]["entities"][1].update(start=7, end=7), "turns[0].entities[1]", "non-empty range"),
        (lambda d: d["turns"][0]["entities"][1].update(end=99), "turns[0].entities[1]", "inside the text"),
        (lambda d: d["turns"][0].pop("intent"), "turns[0].intent", "required"),
        (lambda d: d["turns"][0].pop("entities"), "turns[0].entities", "required"),
        (lambda d: d["turns"][0]["state"].update(product="warp_drive"), "turns[0].state.product", "unknown glossary"),
        (lambda d: d["turns"][0]["state"].update(colour="red"), "turns[0].state.colour", "unknown state slot"),
        (lambda d: d["turns"][1].update(speaker="bot"), "turns[1].speaker", "'user' or 'agent'"),
        (lambda d: d["turns"][1].update(text=""), "turns[1].text", "non-empty"),
        (lambda d: d.update(lang="fr"), "lang", "not one of"),
        (lambda d: d.update(turns=[]), "turns", "non-empty list"),
        (lambda d: d.pop("id"), "id", "required"),
    ],
)
def test_each_rule_names_file_line_and_field(tmp_path, labels, mutate, field, words):
    bad = good()
    mutate(bad)
    ok = good()
    ok["id"] = "d0"
    found = problems(tmp_path, labels, [ok, bad])
    assert len(found) == 1, found
    p = found[0]
    assert (p.line, p.field) == (2, field) and words in p.message
    assert p.path.endswith("c.jsonl") and f"c.jsonl:2: {field}:" in str(p)


def test_duplicate_ids_invalid_json_and_utf8(tmp_path, labels):
    p = tmp_path / "c.jsonl"
    p.write_bytes(
        json.dumps(good()).encode() + b"\n" + json.dumps(good()).encode() + b"\n" + b"{not json\n" + b"\xff\xfe\n"
    )
    with pytest.raises(CorpusError) as info:
        load_corpus(p, *labels)
    got = {(x.line, x.field) for x in info.value.problems}
    assert got == {(2, "id"), (3, "(line)"), (4, "(line)")}
    text = str(info.value)
    assert "duplicate id 'd1' (first on line 1)" in text and "not valid JSON" in text and "not valid UTF-8" in text


def test_all_problems_reported_nothing_returned(tmp_path, labels):
    records = []
    for i in range(3):
        d = good()
        d["id"] = f"d{i}"
        d["turns"][0]["intent"] = "nope"
        records.append(d)
    found = problems(tmp_path, labels, records)
    assert [p.line for p in found] == [1, 2, 3]


def test_missing_file(tmp_path, labels):
    with pytest.raises(CorpusError, match="file not found"):
        load_corpus(tmp_path / "absent.jsonl", *labels)


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path, labels):
    bad = good()
    bad["turns"][0]["intent"] = "nope"
    p = write(tmp_path, ["", json.dumps(good()), "", json.dumps({**bad, "id": "d2"})])
    with pytest.raises(CorpusError) as info:
        load_corpus(p, *labels)
    assert info.value.problems[0].line == 4


def test_fingerprint_is_stable_and_content_sensitive(labels):
    a = load_corpus(MINI, *labels)
    b = load_corpus(MINI, *labels)
    assert fingerprint(a) == fingerprint(b)
    b[0]["turns"][0]["text"] += "!"
    assert fingerprint(a) != fingerprint(b)


def test_turn_records_carry_context_and_dataset(labels):
    dialogues = load_corpus(MINI, *labels)
    rows = turn_records(dialogues, context_turns=2)
    second = [r for r in rows if r["dialogue_id"] == "zh-1"][1]
    assert second["context"] == ["user: 我的信用卡昨天丢了", "agent: 已为您临时挂失。请问需要补办新卡吗？"]
    assert second["state"] == {"product": "credit_card", "date": "昨天"}
    ds = to_dataset(dialogues)
    assert len(ds) == len(rows) == 17
    assert json.loads(ds[0]["state"]) == rows[0]["state"]


def test_an_empty_file_is_an_error_not_an_empty_corpus(tmp_path, labels):
    for content in ("", "\n\n  \n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(content, encoding="utf-8")
        with pytest.raises(CorpusError) as info:
            load_corpus(path, *labels)
        assert [(p.line, p.field) for p in info.value.problems] == [(0, "(file)")]
        assert "file is empty" in str(info.value) and str(path) in str(info.value)


def test_size_limits_name_the_line_and_field(tmp_path, labels):
    import findial.data.corpus as corpus

    long_text = good()
    long_text["turns"][1]["text"] = "x" * (corpus.MAX_TEXT_CHARS + 1)
    many_turns = good()
    many_turns["id"] = "d3"
    many_turns["turns"] = many_turns["turns"] * (corpus.MAX_TURNS // 2 + 1)
    huge = json.dumps({**good(), "id": "d2", "padding": "y" * 50_000})
    path = write(tmp_path, [long_text, huge, many_turns, {**good(), "id": "d4"}])
    problems = [(lineno, problem) for lineno, _, problem in corpus.json_lines(path, max_line_bytes=20_000)]
    assert problems[1] == (2, "line longer than 20000 bytes") and problems[3] == (4, None)  # the next line still read
    with pytest.raises(CorpusError) as info:
        load_corpus(path, *labels)
    found = {(p.line, p.field): p.message for p in info.value.problems}
    assert "at most 4000 per turn" in found[(1, "turns[1].text")]
    assert "at most 200 per dialogue" in found[(3, "turns")]


def test_deeply_nested_json_is_a_line_error(tmp_path, labels):
    path = write(tmp_path, ["[" * 100_000 + "]" * 100_000, good()])
    with pytest.raises(CorpusError) as info:
        load_corpus(path, *labels)
    assert [(p.line, p.message) for p in info.value.problems] == [(1, "not valid JSON: nested too deeply")]
