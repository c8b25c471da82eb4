"""Differential privacy of the federation: the budget arithmetic, Flower's clipping/noise as wired, SecAgg+."""

import math
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import GaussianPrivacyEvent
from omegaconf import OmegaConf

from findial.federated.privacy import (
    SECAGG_UNAVAILABLE,
    GaussianAccountant,
    PrivacyPlan,
    classic_noise_multiplier,
    gdp_delta,
    gdp_epsilon,
    privacy_mod,
    rdp_epsilon,
    wrap_strategy,
)


def independent_gdp_epsilon(mu: float, delta: float) -> float:
    """epsilon of a mu-GDP mechanism at delta from scipy's normal CDF and root finder, not findial's code."""
    stats, optimize = pytest.importorskip("scipy.stats"), pytest.importorskip("scipy.optimize")

    def excess(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return optimize.brentq(excess, 0.0, 200.0, xtol=1e-13)


def test_gdp_delta_matches_an_independent_normal_cdf():
    norm = pytest.importorskip("scipy.stats").norm
    for mu, eps in [(0.5, 0.1), (1.0, 1.0), (1.0, 4.0), (2.0, 3.0), (0.2, 1.5)]:
        expected = norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2)
        assert gdp_delta(eps, mu) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_epsilon_is_the_inverse_of_delta_and_composition_is_exact():
    for mu in (0.1, 0.5, 1.0, 3.0):
        eps = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(eps, mu) == pytest.approx(1e-5, rel=1e-6)
    # T releases with noise multiplier z == one release with z / sqrt(T)
    acc = GaussianAccountant(1e-5)
    for _ in range(9):
        acc.compose(GaussianPrivacyEvent(noise_multiplier=3.0, sample_size=3, population_size=3))
    assert acc.num_releases == 9 and acc.mu == pytest.approx(1.0)
    assert acc.get_epsilon() == pytest.approx(gdp_epsilon(1.0, 1e-5))
    assert acc.get_privacy_spent().epsilon == pytest.approx(acc.get_epsilon())
    # more rounds spend more; the exact GDP figure is never above the RDP bound
    eps = [gdp_epsilon(math.sqrt(t) / 1.1, 1e-5) for t in (1, 2, 5, 20)]
    assert eps == sorted(eps) and len(set(eps)) == 4
    for t in (1, 5, 50):
        assert gdp_epsilon(math.sqrt(t) / 1.1, 1e-5) <= rdp_epsilon(1.1, t, 1e-5)


def test_one_classic_gaussian_release_is_within_its_nominal_budget():
    for eps0, delta0 in [(0.5, 1e-5), (1.0, 1e-6)]:
        z = classic_noise_multiplier(eps0, delta0)
        assert gdp_epsilon(1 / z, delta0) <= eps0


def test_max_epsilon_stops_before_the_budget_is_exceeded():
    acc = GaussianAccountant(1e-5)
    event = GaussianPrivacyEvent(noise_multiplier=1.0, sample_size=2, population_size=2)
    limit = gdp_epsilon(math.sqrt(3), 1e-5) + 1e-6  # exactly three releases fit
    for _ in range(3):
        assert not acc.would_exceed(event, limit)
        acc.compose(event)
    assert acc.would_exceed(event, limit)


def _plan(min_train_clients: int = 1, **privacy):
    base = {
        "mode": "none",
        "clipping_norm": 1.0,
        "noise_multiplier": 1.0,
        "local_epsilon": 1.0,
        "local_delta": 1e-5,
        "target_delta": 1e-5,
        "max_epsilon": None,
    }
    return PrivacyPlan.from_config(OmegaConf.create({**base, **privacy}), min_train_clients=min_train_clients)


def test_central_round_is_accounted_with_the_noise_multiplier_of_its_replies():
    z, C, m = 1.2, 0.7, 2
    plan = _plan(mode="central", noise_multiplier=z, clipping_norm=C, min_train_clients=m)
    # noise std z*C/m on a mean of n updates of norm <= C, which one branch moves by up to 2C/n
    for n, expected in [(2, 0.6), (3, 0.9), (4, 1.2)]:
        assert plan.event(n).noise_multiplier == pytest.approx(expected)
        assert plan.event(n).noise_multiplier == pytest.approx((z * C / m) / (2 * C / n))
    assert plan.event().noise_multiplier == pytest.approx(0.6)  # the worst case an applied round can be: n = m
    acc = plan.accountant()
    for n in (2, 3, 4):
        acc.compose(plan.event(n))
    mu = math.sqrt(1 / 0.6**2 + 1 / 0.9**2 + 1 / 1.2**2)
    assert acc.mu == pytest.approx(mu) and acc.noise_multipliers == pytest.approx([0.6, 0.9, 1.2])
    assert acc.get_epsilon() == pytest.approx(independent_gdp_epsilon(mu, 1e-5), rel=1e-6)
    # T rounds of m replies: mu = sqrt(T) / (z/2), twice what accounting with z claimed
    acc = plan.accountant()
    acc.compose(plan.event(m), count=5)
    assert acc.mu == pytest.approx(math.sqrt(5) / 0.6)
    assert acc.get_epsilon() == pytest.approx(independent_gdp_epsilon(math.sqrt(5) / 0.6, 1e-5), rel=1e-6)
    assert acc.get_epsilon() > gdp_epsilon(math.sqrt(5) / z, 1e-5)


def test_the_accounted_noise_multiplier_is_derived_from_the_noise_flower_adds():
    from flwr.supercore.differential_privacy import compute_stdv

    z, C, m = 0.9, 2.5, 3
    plan = _plan(mode="central", noise_multiplier=z, clipping_norm=C, min_train_clients=m)
    assert plan.noise_std == compute_stdv(z, C, m)  # what DifferentialPrivacyClientSideFixedClipping adds
    for n in (3, 4, 7):
        assert plan.event(n).noise_multiplier == pytest.approx(compute_stdv(z, C, m) / (2 * C / n))


def test_gdp_epsilon_is_within_flowers_rdp_accountant_for_the_same_events():
    pytest.importorskip("dp_accounting", reason="Flower's RdpAccountant needs flwr[dp] (dp-accounting)")
    from flwr.serverapp import PrivacyConfig
    from flwr.supercore.privacy_accounting import NeighboringRelation, SamplingMethod
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    plan = _plan(mode="central", noise_multiplier=1.1, clipping_norm=1.0, min_train_clients=2)
    for replies in ([2] * 5, [2, 3, 4, 3], [4] * 20, [2] * 100):
        ours = plan.accountant()
        flower = RdpAccountant(
            PrivacyConfig(
                target_delta=1e-5,
                population_size=4,
                neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                sampling_method=SamplingMethod.NO_AMPLIFICATION,
            )
        )
        for n in replies:
            event = plan.event(n)
            ours.compose(event)
            flower.compose(
                GaussianPrivacyEvent(noise_multiplier=event.noise_multiplier, sample_size=n, population_size=4)
            )
        spent = flower.get_privacy_spent()
        assert spent.num_releases == ours.num_releases == len(replies)
        # exact GDP <= Flower's RDP figure <= findial's own (looser-converted) RDP bound, all from the same z_eff
        assert ours.get_epsilon() <= spent.epsilon <= plan.summary(ours)["epsilon_rdp_bound"] + 1e-9
        assert flower.get_delta(ours.get_epsilon()) >= 1e-5 * (1 - 1e-6)


def test_central_dp_is_refused_with_an_aggregator_that_is_not_the_plain_mean(compose):
    from flwr.serverapp.strategy import FedAdam

    from findial.federated.simulation import simulate
    from findial.federated.strategies import build_strategy

    cfg = compose("fed", ["federated=fedadam", "privacy.mode=central"])
    refusals = [
        lambda: build_strategy(cfg, PrivacyPlan.from_config(cfg.privacy)),
        lambda: simulate(cfg),
        lambda: wrap_strategy(FedAdam(), _plan(mode="central"), 2),
        lambda: PrivacyPlan.for_federation(cfg),
    ]
    for refused in refusals:
        with pytest.raises(
            ValueError, match=r"privacy.mode=central with aggregation.name='fedadam'.*not the plain mean"
        ):
            refused()
    for name in ("fedavg", "fedprox"):
        ok = compose("fed", [f"federated={name}", "privacy.mode=central"])
        strategy = build_strategy(ok, PrivacyPlan.for_federation(ok))
        assert type(strategy).__name__ == "DifferentialPrivacyClientSideFixedClipping"
    local = compose("fed", ["federated=fedadam", "privacy.mode=local"])  # noise before the server step: allowed
    assert isinstance(build_strategy(local, PrivacyPlan.for_federation(local)), FedAdam)


def test_privacy_config_errors_name_the_field():
    with pytest.raises(ValueError, match="privacy.mode='centrl'"):
        _plan(mode="centrl")
    with pytest.raises(ValueError, match="privacy.noise_multiplier=0.0"):
        _plan(mode="central", noise_multiplier=0.0)
    with pytest.raises(ValueError, match="privacy.clipping_norm"):
        _plan(mode="local", clipping_norm=-1)
    with pytest.raises(ValueError, match="SecAgg"):
        PrivacyPlan.from_config(OmegaConf.create({"mode": "none"}), secure_aggregation=True)


def test_secure_aggregation_is_legacy_api_only_in_this_flower():
    """The documented reason secure_aggregation=true is refused; fails (and asks for a revisit) if Flower changes."""
    import flwr
    import flwr.clientapp.mod as message_api_mods
    from flwr.server.workflow import SecAggPlusWorkflow

    assert flwr.__version__ == "1.41.0"
    assert not [n for n in dir(message_api_mods) if "secagg" in n.lower()]
    ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(TypeError, match="LegacyContext"):
        SecAggPlusWorkflow(num_shares=3, reconstruction_threshold=2)(None, ctx)
    assert "legacy" in SECAGG_UNAVAILABLE


def _train_message(arrays: ArrayRecord, config: dict, node: int = 5) -> Message:
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=0,
        dst_node_id=node,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=3600,
        message_type=MessageType.TRAIN,
    )
    return Message(RecordDict({"arrays": arrays, "config": ConfigRecord(config)}), metadata=meta)


def _client_with(plan: PrivacyPlan, update: float) -> ClientApp:
    app = ClientApp(mods=[privacy_mod(lambda ctx: plan)])

    @app.train()
    def train(msg, ctx):  # a branch whose training moved every weight by `update`
        moved = ArrayRecord({k: Array(v.numpy() + update) for k, v in msg.content["arrays"].items()})
        return Message(RecordDict({"arrays": moved, "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    return app


def _update_of(reply: Message, sent: ArrayRecord) -> np.ndarray:
    return np.concatenate([(reply.content["arrays"][k].numpy() - sent[k].numpy()).ravel() for k in sent.keys()])


def test_central_mode_clips_each_branch_update_to_the_norm():
    sent = ArrayRecord(
        {"intent/a": Array(np.zeros(400, dtype=np.float32)), "ner/b": Array(np.zeros((10, 10), dtype=np.float32))}
    )
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    reply = _client_with(_plan(mode="central", clipping_norm=0.5), 1.0)(
        _train_message(sent, {"clipping_norm": 0.5}), ctx
    )
    assert np.linalg.norm(_update_of(reply, sent)) == pytest.approx(0.5, rel=1e-5)
    # mode none leaves the update alone (same app, same update: the clipping above is the mod's doing)
    clean = _client_with(_plan(mode="none"), 1.0)(_train_message(sent, {}), ctx)
    assert np.linalg.norm(_update_of(clean, sent)) == pytest.approx(math.sqrt(500), rel=1e-5)


def test_local_mode_clips_and_adds_the_configured_noise():
    sent = ArrayRecord({"intent/a": Array(np.zeros(20000, dtype=np.float32))})
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    nearly_exact = _client_with(_plan(mode="local", clipping_norm=2.0, local_epsilon=1e6), 3.0)(
        _train_message(sent, {}), ctx
    )
    assert np.linalg.norm(_update_of(nearly_exact, sent)) == pytest.approx(2.0, rel=1e-3)
    plan = _plan(mode="local", clipping_norm=2.0, local_epsilon=1.0, local_delta=1e-5)
    noisy = _update_of(_client_with(plan, 3.0)(_train_message(sent, {}), ctx), sent)
    clipped = 2.0 / math.sqrt(20000)  # each coordinate of the clipped update
    # the sensitivity of a clipped update is 2C (replace-one): std = 2C * sqrt(2 ln(1.25/delta)) / epsilon
    assert np.std(noisy - clipped) == pytest.approx(2 * 2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 1.0, rel=0.03)
    assert np.std(noisy - clipped) == pytest.approx(plan.noise_std, rel=0.03)
    assert plan.event(3).noise_multiplier == plan.noise_std / (2 * 2.0)  # what the accountant composes


def test_central_mode_server_noise_is_calibrated_to_the_minimum_replies():
    from flwr.serverapp.strategy import FedAvg

    plan = _plan(mode="central", clipping_norm=1.0, noise_multiplier=0.8, min_train_clients=2)
    strategy = wrap_strategy(FedAvg(weighted_by_key="unit-weight"), plan, min_train_clients=2)
    request = _train_message(ArrayRecord({"intent/a": Array(np.zeros(1, dtype=np.float32))}), {})
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({"intent/a": Array(np.full(20000, v, dtype=np.float32))}),
                    "metrics": MetricRecord({"unit-weight": 1}),
                }
            ),
            reply_to=request,
        )
        for v in (1.0, 3.0)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    noise = arrays["intent/a"].numpy() - 2.0
    assert np.std(noise) == pytest.approx(0.8 * 1.0 / 2, rel=0.03) and plan.noise_std == 0.8 * 1.0 / 2
    assert abs(np.mean(noise)) < 0.02
    with pytest.raises(ValueError, match="min_train_clients=3, but the privacy plan is calibrated to 2"):
        wrap_strategy(FedAvg(weighted_by_key="unit-weight"), plan, min_train_clients=3)


class _Grid:
    """Three branch nodes, of which ``answers[r]`` reply to the training request of round r + 1."""

    def __init__(self, answers: list[int]):
        self.answers, self.round = answers, 0

    def get_node_ids(self):
        return [1, 2, 3]

    def send_and_receive(self, messages, timeout):
        self.round += 1
        return [
            Message(
                RecordDict(
                    {
                        "arrays": m.content["arrays"],
                        "metrics": MetricRecord(
                            {"branch-index": m.metadata.dst_node_id - 1, "unit-weight": 1, "num-examples": 1}
                        ),
                    }
                ),
                reply_to=m,
            )
            for m in list(messages)[: self.answers[self.round - 1]]
        ]


class _Mean:
    """What run_rounds asks of a strategy (the aggregate itself does not matter here)."""

    def configure_train(self, rnd, arrays, config, grid):
        return [_train_message(arrays, {}, node) for node in grid.get_node_ids()]

    def aggregate_train(self, rnd, replies):
        return replies[0].content["arrays"], MetricRecord({})

    def configure_evaluate(self, rnd, arrays, config, grid):
        return []


def _rounds(plan: PrivacyPlan, answers: list[int]):
    from findial.federated.rounds import run_rounds

    cfg = OmegaConf.create(
        {
            "branches": ["a", "b", "c"],
            "rounds": len(answers),
            "local_epochs": 1,
            "sampling": {"min_train_clients": 2, "min_available_clients": 1},
            "timeouts": {"round_s": 1, "connect_s": 1},
        }
    )
    accountant = plan.accountant()
    _, reports = run_rounds(
        _Grid(answers), _Mean(), ArrayRecord({"intent/a": Array(np.zeros(2, np.float32))}), cfg, plan, accountant
    )
    return reports, accountant


def test_rounds_account_what_each_round_released():
    # central: only applied rounds, each with z_eff = z * n / (2m); 1 reply of 3 (< m = 2) releases nothing
    z = 1.0
    reports, acc = _rounds(_plan(mode="central", noise_multiplier=z, min_train_clients=2), [3, 2, 1, 3])
    assert [r.applied for r in reports] == [True, True, False, True]
    assert acc.noise_multipliers == pytest.approx([0.75, 0.5, 0.75])
    mu = math.sqrt(2 / 0.75**2 + 1 / 0.5**2)
    assert reports[-1].epsilon == pytest.approx(independent_gdp_epsilon(mu, 1e-5), rel=1e-6)
    # local: a branch's noisy update reached the server whether or not its round was applied
    local = _plan(mode="local", local_epsilon=2.0, local_delta=1e-5, min_train_clients=2)
    reports, acc = _rounds(local, [3, 2, 1, 3])
    assert acc.num_releases == 4 and acc.mu == pytest.approx(2 / classic_noise_multiplier(2.0, 1e-5))


def test_max_epsilon_is_checked_against_the_worst_case_round():
    # after a round of 3 replies (z_eff 0.75) a round of 3 more would fit the limit, one of m = 2 (z_eff 0.5) not
    fits = gdp_epsilon(math.sqrt(2 / 0.75**2), 1e-5)
    worst = gdp_epsilon(math.sqrt(1 / 0.75**2 + 1 / 0.5**2), 1e-5)
    plan = _plan(mode="central", noise_multiplier=1.0, min_train_clients=2, max_epsilon=(fits + worst) / 2)
    reports, acc = _rounds(plan, [3, 3, 3])
    assert len(reports) == 1 and acc.num_releases == 1 and reports[0].epsilon < plan.max_epsilon
