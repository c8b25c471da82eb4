"""Aggregation strategies from the config: Flower's FedAvg, FedProx, FedAdam (Message API), DP-wrapped by mode.

Central DP is accepted only with fedavg and fedprox (the server step is the plain mean; see ``privacy.py``).
"""

from __future__ import annotations

from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from .privacy import AVERAGING, PrivacyPlan, central_aggregation_error, wrap_strategy
from .records import number

NAMES = ("fedavg", "fedprox", "fedadam")
# bookkeeping keys a client sends beside its metrics; never averaged
BOOKKEEPING = {"num-examples", "unit-weight", "branch-index"}


def _metrics(record: RecordDict) -> MetricRecord:
    return next(iter(record.metric_records.values()))


def _metric(record: RecordDict, key: str) -> float:
    return number(_metrics(record)[key], key)


def _examples(records: list[RecordDict]) -> int:
    return int(sum(_metric(r, "num-examples") for r in records))


def mean_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Weighted mean of every training metric; the example count is summed."""
    weights = [_metric(r, weight_key) for r in records]
    total = sum(weights) or 1.0
    out: dict[str, MetricRecordValues] = {"num-examples": _examples(records)}
    for key in _metrics(records[0]).keys():
        if key not in BOOKKEEPING:
            out[key] = sum(_metric(r, key) * w for r, w in zip(records, weights)) / total
    return MetricRecord(out)


def mean_eval_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Each metric weighted by its own support ``<metric>.n`` (a branch without support does not count)."""
    first = _metrics(records[0])
    out: dict[str, MetricRecordValues] = {"num-examples": _examples(records)}
    for key in first.keys():
        if key in BOOKKEEPING or key.endswith(".n") or f"{key}.n" not in first:
            continue
        support = [_metric(r, f"{key}.n") for r in records]
        if sum(support) > 0:
            out[key] = sum(_metric(r, key) * n for r, n in zip(records, support)) / sum(support)
    return MetricRecord(out)


def build_strategy(cfg, plan: PrivacyPlan):
    agg, sampling = cfg.aggregation, cfg.sampling
    name = str(agg.name)
    if name not in NAMES:
        raise ValueError(f"aggregation.name={name!r}: expected one of {', '.join(NAMES)} (configs/federated/)")
    if plan.mode == "central" and name not in AVERAGING:
        raise ValueError(central_aggregation_error(name))
    uniform = plan.mode == "central" or not bool(sampling.weighted)
    common: dict[str, Any] = dict(
        fraction_train=float(sampling.fraction_train),
        fraction_evaluate=1.0,
        min_train_nodes=int(sampling.min_train_clients),
        min_evaluate_nodes=1,
        min_available_nodes=int(sampling.min_available_clients),
        weighted_by_key="unit-weight" if uniform else "num-examples",
        train_metrics_aggr_fn=mean_train_metrics,
        evaluate_metrics_aggr_fn=mean_eval_metrics,
    )
    if name == "fedavg":
        base = FedAvg(**common)
    elif name == "fedprox":
        base = FedProx(proximal_mu=float(agg.proximal_mu), **common)
    else:
        base = FedAdam(
            eta=float(agg.eta),
            eta_l=float(agg.eta_l),
            beta_1=float(agg.beta_1),
            beta_2=float(agg.beta_2),
            tau=float(agg.tau),
            **common,
        )
    return wrap_strategy(base, plan, int(sampling.min_train_clients))
