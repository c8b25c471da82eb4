"""The server's round loop: Flower strategy calls, with what the issue asks to see of every round.

Like ``Strategy.start`` (configure -> send_and_receive -> aggregate, for training then evaluation), plus:
bytes sent and received, which branches took part, which failed or timed out, a minimum number of
replies below which the round's update is not applied, the privacy budget, and a report per round.
The budget composes what each round released (``PrivacyPlan.released``: in central mode the noisy mean
of an applied round, accounted with the noise multiplier of its number of replies; see ``privacy.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from .models import message_bytes
from .privacy import GaussianAccountant, PrivacyPlan
from .records import number

log = logging.getLogger(__name__)


class FederationError(RuntimeError):
    pass


@dataclass
class RoundReport:
    round: int
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    asked: int = 0
    participants: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    applied: bool = False
    train: dict = field(default_factory=dict)
    federated_eval: dict = field(default_factory=dict)
    branch_eval: dict = field(default_factory=dict)
    global_eval: dict = field(default_factory=dict)
    epsilon: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def wait_for_nodes(grid, needed: int, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while len(nodes := list(grid.get_node_ids())) < needed:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} branch node(s) connected, {needed} needed "
                f"(sampling.min_available_clients) within {timeout_s:.0f}s (timeouts.connect_s)"
            )
        time.sleep(0.5)
    return nodes


def float32(record: ArrayRecord) -> ArrayRecord:
    """Aggregation and noise may promote to float64; what travels stays float32."""
    return ArrayRecord({k: Array(np.asarray(v.numpy(), dtype=np.float32)) for k, v in record.items()})


def _names(replies: list[Message], branches: list[str], known: dict[int, str]) -> list[str]:
    out = []
    for r in replies:
        index = int(number(next(iter(r.content.metric_records.values()))["branch-index"], "branch-index"))
        known[r.metadata.src_node_id] = branches[index]
        out.append(branches[index])
    return out


def _exchange(grid, messages: list[Message], timeout: float, report: RoundReport) -> tuple[list[Message], list[int]]:
    """Send, wait up to ``timeout``; returns (good replies, node ids that failed or never answered)."""
    report.bytes_sent += sum(message_bytes(m) for m in messages)
    replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
    good = [r for r in replies if not r.has_error()]
    report.bytes_received += sum(message_bytes(r) for r in good)
    answered = {r.metadata.src_node_id for r in good}
    for r in replies:
        if r.has_error():
            log.warning("node %s failed: %s", r.metadata.src_node_id, r.error.reason[-300:])
    return good, [m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id not in answered]


def run_rounds(
    grid,
    strategy,
    arrays: ArrayRecord,
    cfg,
    plan: PrivacyPlan,
    accountant: GaussianAccountant | None,
    global_eval: Callable[[int, ArrayRecord], dict] | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    start: int = 1,
    prior: list[RoundReport] | None = None,
    after_round: Callable[[int, ArrayRecord, list[RoundReport]], None] | None = None,
) -> tuple[ArrayRecord, list[RoundReport]]:
    """Rounds ``start``..``cfg.rounds`` from ``arrays`` (``prior``: the reports of the rounds before ``start``, a
    resumed federation's); ``after_round(round, arrays, reports)`` runs after each (the checkpoint)."""
    branches = list(cfg.branches)
    min_replies = int(cfg.sampling.min_train_clients)
    timeout = float(cfg.timeouts.round_s)
    known: dict[int, str] = {}
    reports = list(prior or [])
    arrays = float32(arrays)
    for rnd in range(start, int(cfg.rounds) + 1):
        report = RoundReport(rnd)
        t0 = time.perf_counter()
        wait_for_nodes(grid, int(cfg.sampling.min_available_clients), float(cfg.timeouts.connect_s))
        # the worst case over the rounds that could be applied (central: n = min_train_clients replies)
        if (
            accountant is not None
            and plan.max_epsilon is not None
            and accountant.would_exceed(plan.event(), plan.max_epsilon)
        ):
            log.warning("round %d not started: it would exceed privacy.max_epsilon=%s", rnd, plan.max_epsilon)
            break
        messages = list(
            strategy.configure_train(rnd, arrays, ConfigRecord({"local-epochs": int(cfg.local_epochs)}), grid)
        )
        report.asked = len(messages)
        good, failed = _exchange(grid, messages, timeout, report)
        report.participants = _names(good, branches, known)
        report.failed = [known.get(n, f"node-{n}") for n in failed]
        if len(good) >= min_replies:
            new, metrics = strategy.aggregate_train(rnd, good)
            if new is not None:
                arrays, report.applied = float32(new), True
            report.train = dict(metrics or {})
        else:
            log.warning(
                "round %d: %d of %d branches replied, fewer than sampling.min_train_clients=%d: "
                "the global model is kept",
                rnd,
                len(good),
                len(messages),
                min_replies,
            )
        if accountant is not None and (event := plan.released(len(messages), len(good), report.applied)):
            accountant.compose(event)
        eval_messages = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord({}), grid))
        good_eval, _ = _exchange(grid, eval_messages, timeout, report)
        if good_eval:
            report.federated_eval = dict(strategy.aggregate_evaluate(rnd, good_eval) or {})
            for name, r in zip(_names(good_eval, branches, known), good_eval):
                m = next(iter(r.content.metric_records.values()))
                report.branch_eval[name] = {
                    k: v for k, v in m.items() if not k.endswith(".n") and k not in ("unit-weight", "branch-index")
                }
        if global_eval is not None:
            report.global_eval = global_eval(rnd, arrays)
        report.epsilon = accountant.get_epsilon() if accountant is not None else None
        report.seconds = time.perf_counter() - t0
        log.info(
            "round %d: %s branches %s, failed %s, %.1fs, sent %d B, received %d B",
            rnd,
            "applied" if report.applied else "NOT applied",
            report.participants,
            report.failed,
            report.seconds,
            report.bytes_sent,
            report.bytes_received,
        )
        reports.append(report)
        if on_round is not None:
            on_round(report)
        if after_round is not None:
            after_round(rnd, arrays, reports)
    return arrays, reports
