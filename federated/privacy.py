"""Differential privacy for the federation: Flower's clipping/noise mods and wrappers, and the budget.

Modes (``privacy.mode`` in ``configs/fed.yaml``; a branch's own mode comes from its node config, see
``config.py``):

- ``central``: every branch clips its update u to ||u|| <= C = ``clipping_norm`` (Flower's
  ``fixedclipping_mod``) and the server adds Gaussian noise to the uniform mean of the n updates it
  received (Flower's ``DifferentialPrivacyClientSideFixedClipping``). Only averaging aggregators
  (``fedavg``, ``fedprox``: the server step is the plain mean) are accepted: the wrapper noises what
  ``aggregate_train`` returns, and FedAdam's adaptive step on the clean mean has no bounded sensitivity,
  so its noise would not give the reported epsilon (Flower's own accountant refuses such strategies too).
- ``local``: every branch clips its update to C and adds its own noise before it leaves the branch
  (Flower's ``LocalDpMod`` with sensitivity 2C), so the server never sees a clean update.

Noise multiplier of a round (what is accounted), derived from Flower's code:

- central: the wrapper adds N(0, s^2) to every coordinate of the mean with
  ``s = compute_stdv(z, C, m) = z * C / m`` (``flwr.supercore.differential_privacy``), where z is
  ``noise_multiplier`` and m = ``num_sampled_clients`` = ``sampling.min_train_clients``. The mean is over
  the n >= m replies actually received (fewer and the round is not applied). One branch's influence on a
  mean of n updates of norm <= C: replace-one, ||(u - u')/n|| <= 2C/n; add/remove-one,
  mean_n - mean_(n-1) = (u - mean_(n-1))/n and ||u - mean_(n-1)|| <= 2C, so again 2C/n. The round is a
  Gaussian mechanism of sensitivity 2C/n and std z*C/m, i.e. of noise multiplier
  ``z_eff = (z*C/m) / (2C/n) = z * n / (2m)`` (z/2 at n = m). Each applied round is accounted with the
  z_eff of its n; the check before a round (``privacy.max_epsilon``) uses the worst case n = m.
- local: ``LocalDpMod`` adds std ``s = 2C * sqrt(2 ln(1.25/delta0)) / epsilon0`` to each branch's
  clipped update; its sensitivity is 2C (two clipped updates differ by at most 2C), so every round is a
  release of noise multiplier ``z = sqrt(2 ln(1.25/delta0)) / epsilon0`` for the branch. A branch's noisy
  update reaches the server when it replies, applied or not, so every round in which branches were asked
  to train is accounted. In deployment each branch sets its own epsilon0/delta0: the server's figure is
  that of a branch configured like the server's ``privacy.local_*``.

Budget: branch-level (epsilon, delta) over those releases, by the exact composition of Gaussian
mechanisms under Gaussian differential privacy (Dong, Roth & Su 2019, "Gaussian Differential Privacy",
Cor. 3.3 and Thm. 2.7): releases with noise multipliers z_i are mu-GDP with mu^2 = sum 1/z_i^2 (T equal
ones: mu = sqrt(T) / z), and mu-GDP implies (epsilon, delta(epsilon))-DP with

    delta(epsilon) = Phi(-epsilon/mu + mu/2) - exp(epsilon) * Phi(-epsilon/mu - mu/2).

No amplification by sampling is claimed (every available branch trains every round). An RDP bound
(Mironov 2017) over the same releases is computed beside it as a cross-check: it must never be smaller
(``tests/test_federated_privacy.py`` also checks both against Flower's ``RdpAccountant``).

What epsilon does not cover: only the adapter/head tensors are protected. Everything else a branch sends
travels in clear and is outside the budget: its MetricRecords (training loss and accuracy per round, the
federated evaluation's per-branch accuracy, F1 and their support counts), its number of examples
(``num-examples``, user turns), whether and when it replied (participation, failures, timing, message
sizes), and its identity (branch name, node id). The server logs all of these to MLflow.

Secure aggregation: Flower 1.41 implements SecAgg+ only as ``flwr.server.workflow.SecAggPlusWorkflow``
(which requires the legacy ``LegacyContext`` and legacy ``flwr.server.strategy`` strategies) and the
client ``flwr.client.mod.secaggplus_mod`` (which reads and writes the legacy ``fitres.*`` record layout).
Neither works with the Message API strategies (``flwr.serverapp.strategy``) used here, and the Message
API mods (``flwr.clientapp.mod``) offer none. ``secure_aggregation: true`` is therefore refused with this
explanation (``tests/test_federated_privacy.py`` checks that the reasons still hold).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.serverapp import GaussianPrivacyEvent, PrivacySpent
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from .records import number

MODES = ("none", "central", "local")
AVERAGING = ("fedavg", "fedprox")  # aggregators whose server step is the plain mean: central DP holds for them
SECAGG_UNAVAILABLE = (
    "secure_aggregation=true: SecAgg+ in flwr 1.41 exists only for the legacy API "
    "(flwr.server.workflow.SecAggPlusWorkflow needs a LegacyContext and a flwr.server.strategy strategy; "
    "flwr.client.mod.secaggplus_mod reads the legacy fitres.* records), not for the Message API strategies "
    "findial uses. Use privacy.mode=local to keep clean updates from the server instead."
)
NOT_COVERED = (
    "metrics (MetricRecords: per-branch training and evaluation metrics and their support counts), "
    "example counts, participation, timing and message sizes travel in clear"
)


def central_aggregation_error(name: str) -> str:
    return (
        f"privacy.mode=central with aggregation.name={name!r}: Flower's central-DP wrapper adds its noise "
        f"after the strategy's aggregate_train, and {name}'s server step is not the plain mean (FedAdam "
        f"applies an adaptive Adam step to it, whose sensitivity is unbounded), so the reported epsilon would "
        f"not hold; Flower's own accountant refuses such strategies too. Use federated=fedavg or "
        f"federated=fedprox with central DP, or privacy.mode=local (noise before the server step)."
    )


# --------------------------------------------------------------------------- accounting


def _log_phi(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # asymptotic series: Phi(x) ~ phi(x)/|x| * (1 - 1/x^2 + 3/x^4)
    return -0.5 * x * x - math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / x**2 + 3 / x**4)


def gdp_delta(epsilon: float, mu: float) -> float:
    """The exact delta(epsilon) of a mu-GDP mechanism."""
    a = _log_phi(-epsilon / mu + mu / 2)
    b = epsilon + _log_phi(-epsilon / mu - mu / 2)
    return max(0.0, math.exp(a) - math.exp(b))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon with delta(epsilon) <= delta for a mu-GDP mechanism (bisection; delta is decreasing)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta}: must be in (0, 1)")
    if mu <= 0:
        return 0.0
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while gdp_delta(hi, mu) > delta:
        hi *= 2
        if hi > 1e6:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if gdp_delta(mid, mu) > delta:
            lo = mid
        else:
            hi = mid
    return hi


RDP_ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + list(range(11, 64)) + [128, 256, 512, 1024])


def rdp_bound(mu_squared: float, delta: float) -> float:
    """Upper bound from Renyi DP: Gaussian releases z_i have RDP alpha * sum(1/z_i^2) / 2 = alpha * mu^2 / 2;
    eps = min over alpha of rdp + log(1/delta)/(alpha-1)."""
    if mu_squared == 0:
        return 0.0
    return min(a * mu_squared / 2 + math.log(1 / delta) / (a - 1) for a in RDP_ORDERS)


def rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """The RDP bound of T Gaussian releases of noise multiplier z."""
    return rdp_bound(releases / noise_multiplier**2, delta)


def classic_noise_multiplier(epsilon: float, delta: float) -> float:
    """z of the classic Gaussian mechanism, sigma = Delta * sqrt(2 ln(1.25/delta)) / epsilon (Flower's LocalDpMod)."""
    return math.sqrt(2 * math.log(1.25 / delta)) / epsilon


class GaussianAccountant:
    """Composition of Gaussian releases (Flower's GaussianPrivacyEvent), reported as Flower's PrivacySpent.

    Events may have different noise multipliers: mu-GDP composes as mu^2 = sum of T_i / z_i^2.
    """

    def __init__(self, target_delta: float):
        if not 0 < target_delta < 1:
            raise ValueError(f"privacy.target_delta={target_delta}: must be in (0, 1)")
        self.target_delta = target_delta
        self.mu_squared = 0.0
        self.num_releases = 0
        self.noise_multipliers: list[float] = []

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        self.mu_squared += count / event.noise_multiplier**2
        self.num_releases += count
        self.noise_multipliers += [event.noise_multiplier] * count

    @property
    def mu(self) -> float:
        return math.sqrt(self.mu_squared)

    def get_epsilon(self, delta: float | None = None) -> float:
        return gdp_epsilon(self.mu, self.target_delta if delta is None else delta)

    def get_delta(self, epsilon: float) -> float:
        return gdp_delta(epsilon, self.mu) if self.mu > 0 else 0.0

    def would_exceed(self, event: GaussianPrivacyEvent, max_epsilon: float) -> bool:
        mu = math.sqrt(self.mu_squared + 1 / event.noise_multiplier**2)
        return gdp_epsilon(mu, self.target_delta) > max_epsilon

    def get_privacy_spent(self) -> PrivacySpent:
        return PrivacySpent(
            epsilon=self.get_epsilon(),
            delta=self.target_delta,
            num_releases=self.num_releases,
            accounting_method="gdp-exact",
        )


@dataclass
class PrivacyPlan:
    """What one configured privacy mode means per round, and the budget spent so far."""

    mode: str
    clipping_norm: float = 0.0
    noise_multiplier: float = 0.0  # per release, relative to the clipping norm
    target_delta: float = 1e-5
    max_epsilon: float | None = None
    local_epsilon: float | None = None
    local_delta: float | None = None
    min_train_clients: int = 1  # m: central noise is calibrated to it (Flower's num_sampled_clients)

    @classmethod
    def from_config(
        cls, privacy, secure_aggregation: bool = False, aggregation: str | None = None, min_train_clients: int = 1
    ) -> "PrivacyPlan":
        if secure_aggregation:
            raise ValueError(SECAGG_UNAVAILABLE)
        mode = str(privacy.get("mode", "none"))
        if mode not in MODES:
            raise ValueError(f"privacy.mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode == "none":
            return cls("none")
        if mode == "central" and aggregation is not None and aggregation not in AVERAGING:
            raise ValueError(central_aggregation_error(aggregation))
        clip = float(privacy.clipping_norm)
        if clip <= 0:
            raise ValueError(f"privacy.clipping_norm={clip}: must be > 0")
        common: dict[str, Any] = dict(
            clipping_norm=clip,
            target_delta=float(privacy.target_delta),
            max_epsilon=None if privacy.get("max_epsilon") is None else float(privacy.max_epsilon),
            min_train_clients=max(1, int(min_train_clients)),
        )
        if mode == "central":
            z = float(privacy.noise_multiplier)
            if z <= 0:
                raise ValueError(f"privacy.noise_multiplier={z}: must be > 0 in central mode")
            return cls("central", noise_multiplier=z, **common)
        eps0, delta0 = float(privacy.local_epsilon), float(privacy.local_delta)
        if eps0 <= 0 or not 0 < delta0 < 1:
            raise ValueError(f"privacy.local_epsilon={eps0}, local_delta={delta0}: need epsilon > 0 and 0 < delta < 1")
        return cls(
            "local",
            noise_multiplier=classic_noise_multiplier(eps0, delta0),
            local_epsilon=eps0,
            local_delta=delta0,
            **common,
        )

    @classmethod
    def for_federation(cls, cfg) -> "PrivacyPlan":
        """The server's plan from the whole ``fed`` config (refuses central DP with a non-averaging aggregator)."""
        return cls.from_config(
            cfg.privacy,
            bool(cfg.get("secure_aggregation", False)),
            aggregation=str(cfg.aggregation.name),
            min_train_clients=int(cfg.sampling.min_train_clients),
        )

    @property
    def noise_std(self) -> float:
        """Std of the noise per coordinate: central z*C/m on the mean (Flower's compute_stdv), local 2C*z per update."""
        if self.mode == "central":
            return self.noise_multiplier * self.clipping_norm / self.min_train_clients
        return self.noise_multiplier * 2 * self.clipping_norm if self.mode == "local" else 0.0

    def accountant(self) -> GaussianAccountant | None:
        return GaussianAccountant(self.target_delta) if self.mode != "none" else None

    def event(self, replies: int | None = None) -> GaussianPrivacyEvent:
        """The release of a round aggregating ``replies`` updates; None: the worst case an applied round can be.

        central: z_eff = z * n / (2m) (noise z*C/m on a mean of sensitivity 2C/n; worst case n = m);
        local: every branch's own release has z, whatever n.
        """
        n = max(1, self.min_train_clients if replies is None else int(replies))
        z = (
            self.noise_multiplier * n / (2 * self.min_train_clients)
            if self.mode == "central"
            else self.noise_multiplier
        )
        return GaussianPrivacyEvent(noise_multiplier=z, sample_size=n, population_size=n)

    def released(self, asked: int, replies: int, applied: bool) -> GaussianPrivacyEvent | None:
        """What a round released, to account: central, the noisy mean of an applied round; local, the noisy
        updates of the branches asked to train (they left the branches whether or not the round was applied)."""
        if self.mode == "central" and applied:
            return self.event(replies)
        if self.mode == "local" and asked > 0:
            return self.event(asked)
        return None

    def summary(self, accountant: GaussianAccountant | None) -> dict:
        if self.mode == "none" or accountant is None:
            return {"mode": self.mode}
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out.update(
            epsilon=accountant.get_epsilon(),
            delta=self.target_delta,
            releases=accountant.num_releases,
            mu=accountant.mu,
            noise_std=self.noise_std,
            noise_multipliers_accounted=accountant.noise_multipliers,
            accounting="gdp-exact (Dong, Roth & Su 2019), no sampling amplification",
            epsilon_rdp_bound=rdp_bound(accountant.mu_squared, self.target_delta),
            not_covered=NOT_COVERED,
        )
        return out


# --------------------------------------------------------------------------- client side


def privacy_mod(plan_for):
    """A ClientApp mod applying the branch's configured mode with Flower's own mods.

    ``plan_for(context)`` returns the PrivacyPlan of this branch: the mode comes from the branch's own
    configuration, not from the server's message, so a server cannot switch local noise off. The server
    may ask for more, never less: a clipping norm in its message (Flower's central-DP wrapper sends one)
    is applied when it is tighter than the branch's own, or when the branch has none.
    """

    def mod(msg: Message, ctxt: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        plan = plan_for(ctxt)
        config = next(iter(msg.content.config_records.values()), None)
        asked = config.get(KEY_CLIPPING_NORM) if config is not None else None
        norms = ([plan.clipping_norm] if plan.mode != "none" else []) + (
            [number(asked, KEY_CLIPPING_NORM)] if asked is not None else []
        )
        if not norms:
            return call_next(msg, ctxt)
        if plan.mode == "local":  # sensitivity of a clipped update: 2C (replace-one)
            return LocalDpMod(min(norms), 2 * plan.clipping_norm, plan.local_epsilon, plan.local_delta)(
                msg, ctxt, call_next
            )
        if config is not None:
            config[KEY_CLIPPING_NORM] = min(norms)
        return fixedclipping_mod(msg, ctxt, call_next)

    return mod


# --------------------------------------------------------------------------- server side


def wrap_strategy(strategy, plan: PrivacyPlan, min_train_clients: int):
    """Central mode: Flower's client-side fixed-clipping wrapper (server noise, clients clip).

    Only a strategy whose ``aggregate_train`` is FedAvg's (the plain mean) is accepted, as Flower's own
    accountant requires: the wrapper noises whatever ``aggregate_train`` returns.
    """
    if plan.mode != "central":
        return strategy
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, FedAvg

    if not isinstance(strategy, FedAvg) or type(strategy).aggregate_train is not FedAvg.aggregate_train:
        raise ValueError(central_aggregation_error(type(strategy).__name__.lower()))
    if max(1, min_train_clients) != plan.min_train_clients:  # the noise and its accounting must use the same m
        raise ValueError(
            f"sampling.min_train_clients={min_train_clients}, but the privacy plan is calibrated to "
            f"{plan.min_train_clients} (build it with PrivacyPlan.for_federation)"
        )
    return DifferentialPrivacyClientSideFixedClipping(
        strategy, plan.noise_multiplier, plan.clipping_norm, num_sampled_clients=plan.min_train_clients
    )
