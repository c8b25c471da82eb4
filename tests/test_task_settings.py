"""Task configs become typed settings before any data or model is loaded; a bad key is named."""

import pytest

from findial.training.tasks import TASKS, IntentTask, NERTask, TaskConfigError, task_settings


def test_the_shipped_task_configs_are_typed(compose):
    intent = task_settings(compose("train", ["task=intent"]).task)
    ner = task_settings(compose("train", ["task=ner"]).task)
    member = task_settings(compose("train", ["task=intent_member"]).task)
    assert isinstance(intent, IntentTask) and isinstance(ner, NERTask) and set(TASKS) == {"intent", "ner"}
    assert intent.pooling == "turn_and_all" and intent.non_task_intents and intent.context_turns is None
    assert member.turns == "own_task" and member.context_turns == 0 and member.pooling == "mean"
    assert ner.stand_head.enabled is False and ner.weight_averaging.start == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("task.pooling=max", "task.pooling: 'max' is not one of mean, turn_and_all"),
        ("task.max_length=0", "task.max_length: must be >= 1"),
        ("task.epochs=two", "task.epochs: expected int"),
        ("task.label_smoothing=1.5", "task.label_smoothing: must be in [0, 1)"),
        ("+task.poolng=mean", "task: unknown key(s) poolng"),
        ("~task.pooling", "task: missing key(s) pooling"),
        ("task.weight_averaging.every_n_steps=x", "task.weight_averaging.every_n_steps: expected int"),
        ("task.non_task_intents=5", "task.non_task_intents: expected tuple"),
    ],
)
def test_a_bad_intent_setting_names_the_key(compose, override, message):
    with pytest.raises(TaskConfigError) as info:
        task_settings(compose("train", ["task=intent", override]).task)
    assert message in str(info.value)


def test_a_bad_ner_setting_names_the_key(compose):
    with pytest.raises(TaskConfigError, match="task.term_matching: 'bogus' is not one of"):
        task_settings(compose("train", ["task=ner", "task.term_matching=bogus"]).task)
    with pytest.raises(TaskConfigError, match=r"task.stand_head.threshold: must be in \[0, 1\]"):
        task_settings(compose("train", ["task=ner", "task.stand_head.threshold=2"]).task)
    with pytest.raises(TaskConfigError, match="task.name: 'response' is not an understanding task"):
        task_settings({"name": "response"})


def test_findial_run_checks_every_task_before_training(tmp_path, monkeypatch, capsys):
    """A bad NER setting stops `findial run` at once, not after the intent model's hour of training."""
    from findial.cli import main

    monkeypatch.setenv("FINDIAL_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["run", "experiment=smoke", "tasks.ner.term_matching=bogus"])
    assert info.value.code == 1 and "tasks.ner.term_matching: 'bogus' is not one of" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # nothing trained, nothing tracked


def test_the_registry_names_each_tasks_data_module_and_predictor():
    from findial.training.datamodule import TurnDataModule
    from findial.training.inference import EntityPredictor, IntentPredictor

    assert TASKS["intent"].datamodule is TurnDataModule and TASKS["ner"].datamodule is TurnDataModule
    assert TASKS["intent"].predictor_class() is IntentPredictor
    assert TASKS["ner"].predictor_class() is EntityPredictor
