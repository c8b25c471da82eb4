"""The `findial` console command as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"


def findial(*args, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "findial.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_help_lists_subcommands(tmp_path):
    out = findial("--help", cwd=tmp_path)
    assert out.returncode == 0
    for cmd in ("findial run", "findial train", "findial eval", "findial promote", "findial data validate"):
        assert cmd in out.stdout


def test_unknown_command_fails(tmp_path):
    out = findial("trian", cwd=tmp_path)
    assert out.returncode == 2 and "unknown command 'trian'" in out.stderr


def test_data_validate_reports_file_line_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = MINI.read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[1])
    record["turns"][0]["intent"] = "buy_a_yacht"
    bad.write_text("\n".join([lines[0], json.dumps(record, ensure_ascii=False)]) + "\n", encoding="utf-8")
    ok = findial("data", "validate", str(MINI), cwd=tmp_path)
    assert ok.returncode == 0 and "OK (12 dialogues)" in ok.stdout
    out = findial("data", "validate", str(bad), cwd=tmp_path)
    assert out.returncode == 1
    assert f"{bad}:2: turns[0].intent: unknown intent 'buy_a_yacht'" in out.stderr


def test_hydra_multirun_trains_each_task(tmp_path):
    out = findial(
        "train",
        "-m",
        "task=intent,ner",
        "model=tiny",
        "data=custom",
        f"data.train_file={MINI}",
        f"data.val_file={MINI}",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        cwd=tmp_path,
        env={"FINDIAL_HOME": str(tmp_path / "home")},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    packages = sorted(p.parent.name for p in (tmp_path / "home" / "multirun").rglob("findial_model.json"))
    assert packages == ["package", "package"]
    tasks = sorted(
        json.loads(p.read_text())["task"] for p in (tmp_path / "home" / "multirun").rglob("findial_model.json")
    )
    assert tasks == ["intent", "ner"]


def test_config_override_is_visible(tmp_path):
    out = findial("train", "task=ner", "model=minilm", "trainer.max_epochs=5", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "max_epochs: 5" in out.stdout and "findial.training.backbones.minilm" in out.stdout


def test_data_generate_writes_the_three_splits(tmp_path):
    from findial.data.generator.build import generate_corpus

    out = findial(
        "data",
        "generate",
        "--out",
        str(tmp_path / "c"),
        "--seed",
        "7",
        "--scale",
        "0.08",
        "--train-supplement",
        "0.5",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    generate_corpus(tmp_path / "ref", seed=7, scale=0.08, train_supplement=0.5)
    for split in ("train", "validation", "test"):
        assert (tmp_path / "c" / f"{split}.jsonl").read_bytes() == (tmp_path / "ref" / f"{split}.jsonl").read_bytes()
    assert json.loads(out.stdout)["supplement_dialogues"] > 0
