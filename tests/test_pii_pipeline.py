"""A planted ID number and card number never reach a log, an MLflow artifact, the store or a checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

from findial.data.pii import id_checksum_ok, luhn_ok

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
ID_NUMBER = "11010519491231002X"
CARD = "6222021234567890128"


def planted_corpus(tmp_path: Path) -> Path:
    text = f"我的身份证号是{ID_NUMBER}，卡号{CARD}，帮我查余额"
    s1 = text.index(ID_NUMBER)
    s2 = text.index(CARD)
    record = {
        "id": "zh-pii",
        "lang": "zh",
        "branch": "beijing",
        "turns": [
            {
                "speaker": "user",
                "text": text,
                "intent": "account_balance",
                "emotion": "neutral",
                "entities": [
                    {"start": s1, "end": s1 + len(ID_NUMBER), "label": "ID_NUMBER"},
                    {"start": s2, "end": s2 + len(CARD), "label": "CARD_NUMBER"},
                ],
                "state": {},
            },
            {"speaker": "agent", "text": f"已为尾号{CARD[-4:]}的卡查询余额。"},
        ],
    }
    out = tmp_path / "planted.jsonl"
    out.write_text(MINI.read_text(encoding="utf-8") + json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def test_planted_pii_never_stored_or_logged(tmp_path):
    assert id_checksum_ok(ID_NUMBER) and luhn_ok(CARD)
    corpus = planted_corpus(tmp_path)
    home = tmp_path / "home"
    env = {**os.environ, "FINDIAL_HOME": str(home)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "findial.cli",
            "run",
            "experiment=smoke",
            "registry.response_model_name=null",  # the grounded KB responder step: covered by tests/test_serving.py
            "data=custom",
            f"data.train_file={corpus}",
            f"data.val_file={corpus}",
            f"data.test_file={corpus}",
            # with intent and NER ensemble members (as members=gemma3 adds), on the tiny backbone: their runs too
            "+model@members.tiny.model=tiny",
            "+task@members.tiny.task=intent_member",
            "+model@members.tiny_ner.model=tiny",
            "+task@members.tiny_ner.task=ner_member",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    bundle_meta = json.loads(next(home.glob("runs/*-pipeline/bundle/intent/findial_model.json")).read_text())
    assert bundle_meta["members"] == ["tiny"]  # registered and evaluated with the members
    ner_meta = json.loads(next(home.glob("runs/*-pipeline/bundle/ner/findial_model.json")).read_text())
    assert ner_meta["members"] == ["tiny_ner"]
    assert "REFUSED" in proc.stdout or "PROMOTED" in proc.stdout
    console = proc.stdout + proc.stderr
    files = [p for p in home.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in files) and any(p.suffix == ".ckpt" for p in files)
    leaks = [str(p) for p in files if ID_NUMBER[:17].encode() in p.read_bytes() or CARD.encode() in p.read_bytes()]
    assert leaks == []
    assert ID_NUMBER[:17] not in console and CARD not in console
    # the planted turn did reach the error report, masked: the check above is not vacuous
    errors = "".join(p.read_text(encoding="utf-8") for p in files if p.name == "errors.jsonl")
    assert "[ID_NUMBER]" in errors and "[CARD_NUMBER]" in errors
