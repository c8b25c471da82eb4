"""The branch side: a Flower ClientApp that trains on the branch's own dialogues and sends back numbers only.

A reply holds exactly two records: ``arrays`` (an ArrayRecord of float32 LoRA adapter and head tensors,
after the configured clipping/noise) and ``metrics`` (a MetricRecord of int/float scalars). No text,
no token ids, no per-example values: dialogues stay in the branch.

In deployment the branch accepts from the server's run config only the federation keys of
``config.BRANCH_KEYS`` and takes its privacy settings and data from its own node config; a refused
override is answered with an error reply naming it, before anything trains (``config.py``).
"""

from __future__ import annotations

import math

from flwr.app import Context, Error, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from .config import RefusedOverride, resolver
from .local import score_dialogues, train_local
from .models import build_task_models, load_record, to_record
from .partition import branch_dialogues, branch_of
from .privacy import PrivacyPlan, privacy_mod
from .records import number

# evaluate_dialogues metric -> the count it is a rate over (sent beside it as "<metric>.n" for aggregation)
EVAL_METRICS = {
    "intent_accuracy": "n_user_turns",
    "intent_macro_f1": "n_user_turns",
    "emotion_accuracy": "n_user_turns",
    "entity_micro_f1": "n_user_turns",
    "joint_state_accuracy": "n_user_turns",
    "multi_turn_accuracy": "n_multi_turn",
    "terminology_f1": "terminology_support",
}


class BranchDropped(RuntimeError):
    """A configured fault (``faults: {branch: round}``): the branch fails this round, as a crash would."""


def _user_turns(dialogues: list[dict]) -> int:
    return sum(1 for d in dialogues for t in d["turns"] if t["speaker"] == "user")


def handle_train(cfg, msg: Message, context: Context) -> Message:
    branches = list(cfg.branches)
    branch = branch_of(context.node_config, branches)
    config = msg.content.config_records["config"]
    rnd = int(number(config["server-round"], "server-round"))
    if cfg.get("faults") and int(cfg.faults.get(branch, -1)) == rnd:
        raise BranchDropped(f"branch {branch}: configured to fail in round {rnd}")
    models = build_task_models(cfg)
    load_record(models, msg.content.array_records["arrays"])
    dialogues = branch_dialogues(cfg, context.node_config, "train", branch)
    if not dialogues:
        raise ValueError(f"branch {branch}: no training dialogues")
    epochs = int(number(config.get("local-epochs", cfg.local_epochs), "local-epochs"))
    mu = number(config.get("proximal-mu", 0.0), "proximal-mu")
    index = branches.index(branch)
    metrics: dict[str, MetricRecordValues] = {
        **train_local(models, cfg, dialogues, epochs, seed=int(cfg.seed) + 1000 * rnd + index, proximal_mu=mu),
        "num-examples": _user_turns(dialogues),
        "unit-weight": 1,
        "branch-index": index,
    }
    return Message(RecordDict({"arrays": to_record(models), "metrics": MetricRecord(metrics)}), reply_to=msg)


def handle_evaluate(cfg, msg: Message, context: Context) -> Message:
    branches = list(cfg.branches)
    branch = branch_of(context.node_config, branches)
    models = build_task_models(cfg)
    load_record(models, msg.content.array_records["arrays"])
    dialogues = branch_dialogues(cfg, context.node_config, "val", branch)
    if not dialogues:
        raise ValueError(f"branch {branch}: no validation dialogues")
    scores = score_dialogues(models, cfg, dialogues)
    scored: dict[str, MetricRecordValues] = {
        "num-examples": _user_turns(dialogues),
        "unit-weight": 1,
        "branch-index": branches.index(branch),
    }
    for name, support in EVAL_METRICS.items():
        value = scores.get(name)
        if value is not None and not math.isnan(value):
            scored[name], scored[f"{name}.n"] = float(value), int(scores.get(support, 0))
        else:
            scored[name], scored[f"{name}.n"] = 0.0, 0
    return Message(RecordDict({"metrics": MetricRecord(scored)}), reply_to=msg)


def refusal_mod(config_for):
    """First mod: a run config the branch refuses is answered with an error reply naming the key."""

    def mod(msg: Message, ctxt: Context, call_next) -> Message:
        try:
            config_for(ctxt)
        except RefusedOverride as e:
            return Message(Error(code=ErrorCode.MOD_FAILED_PRECONDITION, reason=str(e)), reply_to=msg)
        return call_next(msg, ctxt)

    return mod


def make_client_app(bound_config: dict | None = None) -> ClientApp:
    """A ClientApp configured by ``bound_config`` (simulation) or, in deployment, by the accepted part of
    the run config and the branch's own node config (``config.branch_config``)."""
    config_for = resolver(bound_config, branch=True)

    def plan_for(context: Context) -> PrivacyPlan:
        cfg = config_for(context)
        return PrivacyPlan.from_config(cfg.privacy, bool(cfg.get("secure_aggregation", False)))

    app = ClientApp(mods=[refusal_mod(config_for), privacy_mod(plan_for)])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return handle_train(config_for(context), msg, context)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(config_for(context), msg, context)

    return app


# `flwr run` (deployment): clientapp = "findial.federated.client_app:app"
app = make_client_app()
