"""Federated training: what a branch sends, how the server aggregates, how the federation is configured."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.common.serde import message_to_proto

from findial.data.pii import id_checksum_ok, luhn_ok

MINI = Path(__file__).parent / "fixtures" / "mini.jsonl"
ID_NUMBER = "11010519491231002X"
CARD = "6222021234567890128"
PHONE = "13912345678"


def planted_corpus(tmp_path: Path, branch: str = "shanghai") -> Path:
    """mini.jsonl plus one dialogue of ``branch`` carrying an ID number, a card number and a phone number."""
    text = f"我的身份证号是{ID_NUMBER}，卡号{CARD}，电话{PHONE}，帮我查余额"
    s1, s2 = text.index(ID_NUMBER), text.index(CARD)
    record = {
        "id": "zh-pii",
        "lang": "zh",
        "branch": branch,
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


def fed_overrides(corpus: Path, *extra: str) -> list[str]:
    return [
        "model=tiny",
        "data=custom",
        f"data.train_file={corpus}",
        f"data.val_file={corpus}",
        "branches=[shanghai,beijing,shenzhen]",
        *extra,
    ]


def message(content: RecordDict, node: int, kind: str = MessageType.TRAIN, msg_id: str = "m1") -> Message:
    """A message as the SuperLink delivers it to a node (metadata set by the runtime)."""
    meta = Metadata(
        run_id=7,
        message_id=msg_id,
        src_node_id=0,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600,
        message_type=kind,
    )
    return Message(content, metadata=meta)


def node_context(partition: int) -> Context:
    return Context(
        run_id=7,
        node_id=100 + partition,
        node_config={"partition-id": partition, "num-partitions": 3},
        state=RecordDict(),
        run_config={},
    )


def test_branch_reply_holds_only_float_adapters_and_scalar_metrics(compose, tmp_path):
    from findial.federated.client_app import make_client_app
    from findial.federated.config import plain
    from findial.federated.models import build_task_models, to_record

    assert id_checksum_ok(ID_NUMBER) and luhn_ok(CARD)
    cfg = compose("fed", fed_overrides(planted_corpus(tmp_path)))
    models = build_task_models(cfg, cache=False)
    sent = to_record(models)
    app = make_client_app(plain(cfg))
    ctx = node_context(0)  # partition 0 = shanghai, the branch holding the planted dialogue
    train_msg = message(
        RecordDict({"arrays": sent, "config": ConfigRecord({"server-round": 1, "local-epochs": 1})}), ctx.node_id
    )
    reply = app(train_msg, ctx)
    assert not reply.has_error(), reply.error
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics"}
    assert not content.config_records
    arrays = content["arrays"]
    assert isinstance(arrays, ArrayRecord) and list(arrays.keys()) == list(sent.keys())
    for key, array in arrays.items():
        assert re.fullmatch(r"(intent|ner)/[\w.]+", key), key
        assert array.numpy().dtype == np.float32 and array.shape == sent[key].shape
    # the branch really trained: its adapters moved away from the global ones
    assert any(not np.array_equal(arrays[k].numpy(), sent[k].numpy()) for k in sent.keys())
    # only the trainable tensors travel (LoRA adapters, head norm, heads): no embedding or frozen encoder weight
    trainable = {f"{t}/{n}" for t, m in models.modules.items() for n, p in m.named_parameters() if p.requires_grad}
    assert set(arrays.keys()) == trainable and any("lora_" in k for k in trainable)
    assert not any("embeddings" in k or "base_layer" in k for k in arrays.keys())
    metrics = content["metrics"]
    assert isinstance(metrics, MetricRecord)
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert metrics["branch-index"] == 0 and metrics["num-examples"] == 6  # 5 user turns in mini + the planted one
    wire = message_to_proto(reply).SerializeToString()
    for secret in (ID_NUMBER, ID_NUMBER[:17], CARD, PHONE, "身份证"):
        assert secret.encode() not in wire and secret.encode("utf-16-le") not in wire

    eval_msg = message(
        RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}),
        ctx.node_id,
        MessageType.EVALUATE,
        "m2",
    )
    ev = app(eval_msg, ctx)
    assert not ev.has_error(), ev.error
    assert set(ev.content.keys()) == {"metrics"}
    assert all(isinstance(v, (int, float)) for v in ev.content["metrics"].values())
    assert ev.content["metrics"]["num-examples"] == 6
    wire = message_to_proto(ev).SerializeToString()
    assert CARD.encode() not in wire and ID_NUMBER[:17].encode() not in wire


def test_a_node_of_an_unknown_branch_is_refused(compose, tmp_path):
    from findial.federated.partition import branch_of

    assert branch_of({"partition-id": 2}, ["a", "b", "c"]) == "c"
    assert branch_of({"branch": "b", "partition-id": 0}, ["a", "b"]) == "b"
    with pytest.raises(ValueError, match="branch='x' is not one of the run's branches"):
        branch_of({"branch": "x"}, ["a", "b"])
    with pytest.raises(ValueError, match="partition-id=3"):
        branch_of({"partition-id": 3}, ["a", "b", "c"])


def _reply(values: dict[str, np.ndarray], metrics: dict, node: int) -> Message:
    request = message(RecordDict({"config": ConfigRecord({})}), node, msg_id=f"q{node}")
    content = RecordDict(
        {"arrays": ArrayRecord({k: Array(v) for k, v in values.items()}), "metrics": MetricRecord(metrics)}
    )
    return Message(content, reply_to=request)


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_aggregation_of_known_arrays_is_the_weighted_mean(compose, tmp_path, name):
    from findial.federated.privacy import PrivacyPlan
    from findial.federated.strategies import build_strategy

    a = {"intent/w": np.array([1.0, 2.0], dtype=np.float32), "ner/b": np.array([[0.0]], dtype=np.float32)}
    b = {"intent/w": np.array([5.0, -2.0], dtype=np.float32), "ner/b": np.array([[4.0]], dtype=np.float32)}

    def metrics(n, i):
        return {"num-examples": n, "unit-weight": 1, "branch-index": i, "intent_train_loss": float(n)}

    replies = [_reply(a, metrics(1, 0), 1), _reply(b, metrics(3, 1), 2)]

    cfg = compose("fed", [f"federated={name}"])
    strategy = build_strategy(cfg, PrivacyPlan.from_config(cfg.privacy))
    arrays, agg = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["intent/w"].numpy(), [(1 * 1 + 3 * 5) / 4, (1 * 2 + 3 * -2) / 4])
    np.testing.assert_allclose(arrays["ner/b"].numpy(), [[3.0]])
    assert agg["num-examples"] == 4 and agg["intent_train_loss"] == pytest.approx((1 * 1 + 3 * 3) / 4)
    assert "branch-index" not in agg

    uniform = build_strategy(compose("fed", ["sampling.weighted=false"]), PrivacyPlan("none"))
    arrays, _ = uniform.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["intent/w"].numpy(), [3.0, 0.0])


def test_fedadam_moves_from_the_global_model_towards_the_mean(compose):
    from findial.federated.privacy import PrivacyPlan
    from findial.federated.strategies import build_strategy

    cfg = compose("fed", ["federated=fedadam", "aggregation.eta=0.5"])
    strategy = build_strategy(cfg, PrivacyPlan.from_config(cfg.privacy))
    current = ArrayRecord({"intent/w": Array(np.zeros(3, dtype=np.float32))})

    class TwoNodes:  # what configure_train asks of a Grid: the connected node ids
        def get_node_ids(self):
            return [1, 2]

    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    list(strategy.configure_train(1, current, ConfigRecord({}), TwoNodes()))
    m = {"num-examples": 1, "unit-weight": 1, "branch-index": 0}
    replies = [
        _reply({"intent/w": np.ones(3, dtype=np.float32)}, m, 1),
        _reply({"intent/w": np.ones(3, dtype=np.float32)}, {**m, "branch-index": 1}, 2),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    w = arrays["intent/w"].numpy()
    # Adam's first step is about eta * sign(delta): towards the branches' mean (1.0), not all the way
    assert np.all(w > 0.3) and np.all(w < 1.0)


def test_support_weighted_federated_evaluation():
    from findial.federated.strategies import mean_eval_metrics

    def rec(acc, n, multi, n_multi):
        return RecordDict(
            {
                "m": MetricRecord(
                    {
                        "num-examples": n,
                        "unit-weight": 1,
                        "branch-index": 0,
                        "intent_accuracy": acc,
                        "intent_accuracy.n": n,
                        "multi_turn_accuracy": multi,
                        "multi_turn_accuracy.n": n_multi,
                    }
                )
            }
        )

    out = mean_eval_metrics([rec(1.0, 2, 0.0, 0), rec(0.5, 6, 0.25, 4)], "num-examples")
    assert out["intent_accuracy"] == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)
    assert out["multi_turn_accuracy"] == pytest.approx(0.25)  # the branch without multi-turn dialogues does not count
    assert out["num-examples"] == 8


def test_fed_config_composes_with_the_training_groups(compose):
    cfg = compose("fed", ["model=tiny", "federated=fedprox", "rounds=2", "branches=[a,b]"])
    assert cfg.model.name == "tiny" and cfg.tasks.intent.name == "intent" and cfg.tasks.ner.name == "ner"
    assert cfg.aggregation.name == "fedprox" and cfg.aggregation.proximal_mu > 0
    assert list(cfg.branches) == ["a", "b"] and cfg.rounds == 2


def test_branch_list_overrides_are_rewritten_for_hydra():
    from findial.federated.config import normalize_overrides

    assert normalize_overrides(["branches=shanghai,beijing", "rounds=2"]) == ["branches=[shanghai,beijing]", "rounds=2"]
    assert normalize_overrides(["branches=[a,b]", "x=1"]) == ["branches=[a,b]", "x=1"]


def test_unknown_aggregation_is_a_clear_error(compose):
    from findial.federated.privacy import PrivacyPlan
    from findial.federated.strategies import build_strategy

    cfg = compose("fed", ["aggregation.name=fedsgd"])
    with pytest.raises(ValueError, match="aggregation.name='fedsgd'"):
        build_strategy(cfg, PrivacyPlan("none"))


def test_only_adapters_travel_a_fraction_of_the_model(compose):
    from findial.federated.models import build_task_models, exchange_sizes, to_record

    models = build_task_models(compose("fed", ["model=tiny"]), cache=False)
    sizes = exchange_sizes(models)
    record = to_record(models)
    assert sum(a.numpy().nbytes for a in record.values()) == sizes["adapter_bytes"]
    assert sizes["full_model_bytes"] > 10 * sizes["adapter_bytes"]


def test_fed_help(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "findial.cli", "fed", "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0 and "findial fed simulate" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "findial.cli", "fed", "simulat"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert bad.returncode == 2 and "unknown action 'simulat'" in bad.stderr


def test_warm_start_loads_a_bundles_adapters_and_refuses_another_model(compose, tmp_path):
    """The server can start the federation from a trained bundle (the champion) instead of fresh adapters."""
    import torch

    from findial.federated.models import build_task_models, to_record, warm_start
    from findial.registry import make_bundle
    from findial.training.package import save_package

    cfg = compose("fed", fed_overrides(MINI))
    trained = build_task_models(cfg, cache=False)
    with torch.no_grad():
        for module in trained.modules.values():
            for p in module.parameters():
                if p.requires_grad:
                    p.add_(0.5)  # "trained": anything but the fresh initialisation
    labels = {"ontology.yaml": cfg.labels.ontology, "glossary.yaml": cfg.labels.glossary}
    packages = {
        t: save_package(trained.modules[t], trained.metas[t], tmp_path / t, files=labels) for t in ("intent", "ner")
    }
    bundle = make_bundle(packages["intent"], packages["ner"], tmp_path / "bundle", {})

    fresh = build_task_models(cfg, cache=False)
    assert not all(
        (a.numpy() == b.numpy()).all() for a, b in zip(to_record(fresh).values(), to_record(trained).values())
    )
    assert warm_start(fresh, str(bundle)) == {"findial.federated.warm_start": str(bundle)}
    assert all((a.numpy() == b.numpy()).all() for a, b in zip(to_record(fresh).values(), to_record(trained).values()))

    other = build_task_models(compose("fed", fed_overrides(MINI, "model.lora.r=8")), cache=False)
    with pytest.raises(ValueError, match=r"warm_start=.*: intent.lora differs"):
        warm_start(other, str(bundle))
