"""The branch's trust boundary in deployment: what it accepts from the server's run config, what is its own."""

import math
import shlex
import tomllib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from findial.federated.config import RefusedOverride, branch_config, check_branch_overrides
from test_federated import message


def deployment_context(branch_overrides: str, **node) -> Context:
    return Context(
        run_id=7,
        node_id=101,
        node_config={"branch": "beijing", **node},
        state=RecordDict(),
        run_config={"overrides": "privacy.mode=none data=custom paths.home=/srv", "branch-overrides": branch_overrides},
    )


def test_a_branch_accepts_the_federation_keys_from_the_server():
    accepted = [
        "branches=shanghai,beijing",
        "rounds=3",
        "local_epochs=2",
        "seed=7",
        "model=tiny",
        "model.lora.r=8",
        "model.optim.lr=0.01",
        "task@tasks.intent=intent",
        "tasks.ner.batch_size=8",
        "federated=fedprox",
        "aggregation.proximal_mu=0.1",
        "sampling.min_train_clients=2",
        "+sampling.extra=1",
    ]
    assert check_branch_overrides(accepted) == accepted


@pytest.mark.parametrize(
    "override, key",
    [
        ("privacy.mode=none", "privacy.mode"),
        ("~privacy", "privacy"),
        ("privacy=off", "privacy"),
        ("data=custom", "data"),
        ("data.train_file=/srv/all.jsonl", "data.train_file"),
        ("paths.home=/srv", "paths.home"),
        ("labels.ontology=/x.yaml", "labels.ontology"),
        ("+faults.beijing=1", "faults.beijing"),
        ("faults={}", "faults"),
        ("model.backbone._target_=os.system", "model.backbone._target_"),
        ("tasks.intent.pooling={_target_:os.system,_args_:[id]}", "tasks.intent.pooling"),
        ("tasks.intent.name=${oc.env:HOME}", "tasks.intent.name"),
        ("model.backbone.path=/x", "model.backbone.path"),
        ("trainer.accelerator=cpu", "trainer.accelerator"),
        ("experiment=smoke", "experiment"),
        ("hydra.run.dir=/x", "hydra.run.dir"),
        ("secure_aggregation=true", "secure_aggregation"),
        ("model@tasks=tiny", "model@tasks"),
        ("tasks@privacy=x", "tasks@privacy"),
        ("data@tasks=custom", "data@tasks"),
        ("registry.register=true", "registry.register"),
    ],
)
def test_a_branch_refuses_everything_else_naming_the_key(override, key):
    with pytest.raises(RefusedOverride, match=f"key '{key}'"):
        check_branch_overrides(["rounds=2", override])


def test_a_refused_run_config_is_an_error_reply_and_nothing_trains(monkeypatch):
    from findial.federated import client_app

    called = []
    monkeypatch.setattr(client_app, "handle_train", lambda *a: called.append("train"))
    monkeypatch.setattr(client_app, "handle_evaluate", lambda *a: called.append("evaluate"))
    app = client_app.make_client_app()
    arrays = ArrayRecord({"intent/a": Array(np.zeros(3, dtype=np.float32))})
    for overrides, key in [
        ("rounds=2 privacy.mode=none", "privacy.mode"),
        ("model.backbone._target_=os.system", "model.backbone._target_"),
    ]:
        ctx = deployment_context(overrides)
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            msg = message(
                RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})}), ctx.node_id, kind
            )
            reply = app(msg, ctx)
            assert reply.has_error() and f"key '{key}'" in reply.error.reason
    assert called == []


def test_a_branch_takes_its_privacy_from_its_node_config(tmp_path):
    cfg = branch_config(deployment_context("model=tiny rounds=2").run_config, {"branch": "beijing"})
    assert cfg.rounds == 2 and cfg.model.name == "tiny"
    assert cfg.data.name == "bundled" and cfg.privacy.mode == "none"  # the server's `overrides` are not read
    own = tmp_path / "privacy.yaml"
    own.write_text("privacy:\n  mode: local\n  clipping_norm: 0.5\n  local_delta: 1.0e-6\n", encoding="utf-8")
    node = {"branch": "beijing", "privacy-file": str(own), "privacy-local-epsilon": 3.0}
    cfg = branch_config(deployment_context("model=tiny rounds=2").run_config, node)
    assert (cfg.privacy.mode, cfg.privacy.clipping_norm, cfg.privacy.local_epsilon, cfg.privacy.local_delta) == (
        "local",
        0.5,
        3.0,
        1e-6,
    )
    with pytest.raises(ValueError, match="privacy-mod"):
        branch_config({}, {"branch": "beijing", "privacy-mod": "local"})
    with pytest.raises(FileNotFoundError, match="privacy-file"):
        branch_config({}, {"branch": "beijing", "privacy-file": str(tmp_path / "missing.yaml")})


def _moved_by(update: float):
    def train(cfg, msg, context):  # a branch whose training moved every weight by `update`
        moved = ArrayRecord({k: Array(v.numpy() + update) for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"arrays": moved, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return train


def test_the_server_cannot_switch_a_branchs_noise_off_only_ask_for_tighter_clipping(monkeypatch):
    from findial.federated import client_app
    from findial.federated.privacy import classic_noise_multiplier

    monkeypatch.setattr(client_app, "handle_train", _moved_by(3.0))
    app = client_app.make_client_app()
    sent = ArrayRecord({"intent/a": Array(np.zeros(20000, dtype=np.float32))})

    def update(ctx, config):
        reply = app(message(RecordDict({"arrays": sent, "config": ConfigRecord(config)}), ctx.node_id), ctx)
        assert not reply.has_error(), reply.error
        return reply.content["arrays"]["intent/a"].numpy()

    local = deployment_context(
        "model=tiny",
        **{
            "privacy-mode": "local",
            "privacy-clipping-norm": 2.0,
            "privacy-local-epsilon": 1.0,
            "privacy-local-delta": 1e-5,
        },
    )
    noisy = update(local, {"server-round": 1})  # the server's overrides say privacy.mode=none
    assert np.std(noisy - 2.0 / math.sqrt(20000)) == pytest.approx(4.0 * classic_noise_multiplier(1.0, 1e-5), rel=0.03)
    # a branch without its own mode still clips when the server asks (central DP); its own tighter norm wins
    assert np.linalg.norm(update(deployment_context("model=tiny"), {"clipping_norm": 0.5})) == pytest.approx(0.5, 1e-4)
    central = deployment_context("model=tiny", **{"privacy-mode": "central", "privacy-clipping-norm": 0.5})
    assert np.linalg.norm(update(central, {"clipping_norm": 5.0})) == pytest.approx(0.5, 1e-4)
    assert np.linalg.norm(update(deployment_context("model=tiny"), {})) == pytest.approx(3.0 * math.sqrt(20000), 1e-4)


def test_the_deploy_app_gives_branches_only_what_they_accept(tmp_path):
    from findial.federated.deploy import write_app

    overrides = [
        "paths.home=/srv",
        "branches=a,b",
        "model=tiny",
        "data=custom",
        "data.train_file=/d.jsonl",
        "rounds=2",
        "privacy.mode=central",
        "timeouts.round_s=5",
    ]
    app = write_app(tmp_path / "app", overrides)
    run_config = tomllib.loads((app / "run_config.toml").read_text(encoding="utf-8"))
    assert shlex.split(run_config["overrides"]) == [o.replace("a,b", "[a,b]") for o in overrides]
    assert shlex.split(run_config["branch-overrides"]) == ["branches=[a,b]", "model=tiny", "rounds=2"]
    declared = tomllib.loads((app / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert set(declared) == {"overrides", "branch-overrides"}
