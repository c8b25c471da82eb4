"""Differential privacy of the federation: the budget arithmetic, Flower's clipping/noise as wired, SecAgg+."""
import math
import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import GaussianPrivacyEvent
from omegaconf import OmegaConf

from findial.federated.privacy import (SECAGG_UNAVAILABLE, GaussianAccountant, PrivacyPlan, classic_noise_multiplier,
                                       gdp_delta, gdp_epsilon, privacy_mod, rdp_epsilon, wrap_strategy)


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


def _plan(**privacy):
    base = {"mode": "none", "clipping_norm": 1.0, "noise_multiplier": 1.0, "local_epsilon": 1.0,
            "local_delta": 1e-5, "target_delta": 1e-5, "max_epsilon": None}
    return PrivacyPlan.from_config(OmegaConf.create({**base, **privacy}))


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


def _train_message(arrays: ArrayRecord, config: dict) -> Message:
    meta = Metadata(run_id=1, message_id="m", src_node_id=0, dst_node_id=5, reply_to_message_id="", group_id="1",
                    created_at=time.time(), ttl=3600, message_type=MessageType.TRAIN)
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
    sent = ArrayRecord({"intent/a": Array(np.zeros(400, dtype=np.float32)),
                        "ner/b": Array(np.zeros((10, 10), dtype=np.float32))})
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    reply = _client_with(_plan(mode="central", clipping_norm=0.5), 1.0)(
        _train_message(sent, {"clipping_norm": 0.5}), ctx)
    assert np.linalg.norm(_update_of(reply, sent)) == pytest.approx(0.5, rel=1e-5)
    # mode none leaves the update alone (same app, same update: the clipping above is the mod's doing)
    clean = _client_with(_plan(mode="none"), 1.0)(_train_message(sent, {}), ctx)
    assert np.linalg.norm(_update_of(clean, sent)) == pytest.approx(math.sqrt(500), rel=1e-5)


def test_local_mode_clips_and_adds_the_configured_noise():
    sent = ArrayRecord({"intent/a": Array(np.zeros(20000, dtype=np.float32))})
    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    nearly_exact = _client_with(_plan(mode="local", clipping_norm=2.0, local_epsilon=1e6), 3.0)(
        _train_message(sent, {}), ctx)
    assert np.linalg.norm(_update_of(nearly_exact, sent)) == pytest.approx(2.0, rel=1e-3)
    plan = _plan(mode="local", clipping_norm=2.0, local_epsilon=1.0, local_delta=1e-5)
    noisy = _update_of(_client_with(plan, 3.0)(_train_message(sent, {}), ctx), sent)
    clipped = 2.0 / math.sqrt(20000)  # each coordinate of the clipped update
    assert np.std(noisy - clipped) == pytest.approx(plan.noise_multiplier * 2.0, rel=0.03)


def test_central_mode_server_noise_is_calibrated_to_the_minimum_replies():
    from flwr.serverapp.strategy import FedAvg

    plan = _plan(mode="central", clipping_norm=1.0, noise_multiplier=0.8)
    strategy = wrap_strategy(FedAvg(weighted_by_key="unit-weight"), plan, min_train_clients=2)
    request = _train_message(ArrayRecord({"intent/a": Array(np.zeros(1, dtype=np.float32))}), {})
    replies = [Message(RecordDict({"arrays": ArrayRecord({"intent/a": Array(np.full(20000, v, dtype=np.float32))}),
                                   "metrics": MetricRecord({"unit-weight": 1})}), reply_to=request) for v in (1.0, 3.0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    noise = arrays["intent/a"].numpy() - 2.0
    assert np.std(noise) == pytest.approx(0.8 * 1.0 / 2, rel=0.03)
    assert abs(np.mean(noise)) < 0.02
