"""The promotion audit log: one record per append under concurrency, and verify finds every tampering."""

import json
import multiprocessing

import pytest

from findial import audit


def _append(args):
    path, i = args
    audit.append(path, {"model_name": "m", "version": str(i), "promoted": False})


def test_concurrent_appends_all_land_and_chain(tmp_path):
    path = tmp_path / "audit" / "promotions.jsonl"
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        pool.map(_append, [(str(path), i) for i in range(12)])
    recs = audit.records(path)
    assert sorted(int(r["version"]) for r in recs) == list(range(12))
    assert audit.verify(path) == []
    assert recs[0]["prev"] == audit.GENESIS and all(b["prev"] == a["hash"] for a, b in zip(recs, recs[1:]))


@pytest.fixture()
def log(tmp_path):
    path = tmp_path / "promotions.jsonl"
    for i in range(4):
        audit.append(path, {"model_name": "m", "version": str(i), "promoted": i % 2 == 0})
    return path


def _rewrite(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_an_edited_record_is_found(log):
    lines = log.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["promoted"] = True
    _rewrite(log, [lines[0], json.dumps(rec, sort_keys=True), *lines[2:]])
    problems = audit.verify(log)
    assert problems and ":2: record edited" in problems[0]


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_link(log):
    lines = log.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["promoted"] = True
    rec["hash"] = audit._digest(rec)
    _rewrite(log, [lines[0], json.dumps(rec, sort_keys=True), *lines[2:]])
    assert any(":3: chain broken" in p for p in audit.verify(log))


def test_a_removed_record_is_found(log):
    lines = log.read_text().splitlines()
    _rewrite(log, [lines[0], *lines[2:]])
    assert any(":2: chain broken" in p for p in audit.verify(log))
    _rewrite(log, lines[1:])  # the first one removed
    assert any(":1: chain broken" in p for p in audit.verify(log))


def test_a_removed_tail_is_found_against_the_registry_head(log):
    recs = audit.records(log)
    assert audit.verify(log, {"m": recs[-1]["hash"]}) == []
    _rewrite(log, log.read_text().splitlines()[:-1])
    assert audit.verify(log) == []  # the file alone cannot tell ...
    assert "removed from the end" in audit.verify(log, {"m": recs[-1]["hash"]})[0]  # ... the registry can


def test_append_refuses_to_extend_a_log_that_is_not_a_chain(tmp_path):
    path = tmp_path / "promotions.jsonl"
    path.write_text('{"model_name": "m", "version": "1"}\n')  # a record of the old, unchained format
    with pytest.raises(ValueError, match="audit verify"):
        audit.append(path, {"model_name": "m", "version": "2"})


def test_audit_verify_command(log, capsys):
    from findial.cli import cmd_audit

    assert cmd_audit(["verify", "--log", str(log), "--tracking-uri", "none"]) == 0
    assert "intact (4 records" in capsys.readouterr().out
    _rewrite(log, log.read_text().splitlines()[1:])
    assert cmd_audit(["verify", "--log", str(log), "--tracking-uri", "none"]) == 1
    assert "chain broken" in capsys.readouterr().err
