"""The promotion policy file: its bundled evaluation sets are bound to the bundled data, bad entries are named."""

from pathlib import Path

import pytest

from findial import policy
from findial.data.corpus import fingerprint, load_corpus
from findial.data.kb.load import load_kb, load_queries
from findial.data.labelbook import Glossary, LabelBook
from findial.evaluation.grounded import queries_fingerprint
from findial.gates import Gate

REPO = Path(__file__).resolve().parents[1]


def test_the_bundled_eval_sets_are_bound_to_the_bundled_files():
    p = policy.load()
    spec = REPO / "data" / "spec"
    lb, gl = LabelBook.load(spec / "ontology.yaml"), Glossary.load(spec / "glossary.yaml")
    natural = load_corpus(REPO / "data" / "natural" / "test.jsonl", lb, gl)
    generated = load_corpus(REPO / "data" / "corpus" / "test.jsonl", lb, gl)
    # the NLU fingerprint covers the label book the bundle carries (evaluation.evaluate.predict)
    assert p.eval_sets["nlu"]["bundled-test"] == fingerprint(natural, spec / "ontology.yaml", spec / "glossary.yaml")
    assert p.eval_sets["nlu"]["generated-test"] == fingerprint(
        generated, spec / "ontology.yaml", spec / "glossary.yaml"
    )
    assert p.eval_sets["response"]["dialogues-test"] == fingerprint(natural)
    articles = load_kb()
    assert p.eval_sets["response"]["bundled-test"] == queries_fingerprint(
        articles, load_queries(articles=articles, split="test")
    )


def test_the_policy_holds_the_spec_gates():
    gates = policy.load().gates_for("nlu")
    assert gates["terminology_f1"].minimum == 0.90 and gates["multi_turn_accuracy"].minimum == 0.85


@pytest.mark.parametrize(
    "text, where",
    [
        ("nlu:\n  gates:\n    terminology_f1: {min: 0.9}\n", "nlu.gates.terminology_f1"),
        ("nlu:\n  gates:\n    terminology_f1: {minimum: high}\n", "nlu.gates.terminology_f1"),
        ("nlu:\n  gates: {}\n", "nlu.gates"),
        ("nlu:\n  gates: {f1: 0.9}\n  eval_sets: {bundled-test: null}\n", "nlu.eval_sets.bundled-test"),
        ("nlx:\n  gates: {f1: 0.9}\n", "nlx"),
    ],
)
def test_a_bad_policy_names_the_key(tmp_path, text, where):
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(policy.PolicyError, match=str(path)) as info:
        policy.load(path)
    assert where in str(info.value)


def test_recording_another_file_under_a_bound_name_is_refused():
    p = policy.Policy.of({"nlu": {"f1": Gate("f1", 0.9)}}, {"nlu": {"bundled-test": "abc"}})
    p.check_recordable("nlu", "bundled-test", "abc", "test.jsonl")
    p.check_recordable("nlu", "my-set", "xyz", "mine.jsonl")  # not a policy set: recorded, never counts
    with pytest.raises(policy.EvalSetMismatch, match="binds it to data fingerprint abc; mine.jsonl gives xyz"):
        p.check_recordable("nlu", "bundled-test", "xyz", "mine.jsonl")
