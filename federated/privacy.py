"""Differential privacy for the federation: Flower's clipping/noise mods and wrappers, and the budget.

Modes (``privacy.mode`` in ``configs/fed.yaml``):

- ``central``: every branch clips its update to ``clipping_norm`` (Flower's ``fixedclipping_mod``) and
  the server adds Gaussian noise to the mean (Flower's ``DifferentialPrivacyClientSideFixedClipping``
  wrapper). The noise is calibrated to ``min_train_clients`` (m): with n >= m replies the effective noise
  multiplier is ``noise_multiplier * n / m`` >= ``noise_multiplier``, and a round with fewer than m
  replies is not applied, so accounting with ``noise_multiplier`` is conservative. Updates are
  averaged uniformly (an example-weighted mean would let a large branch exceed the clipping bound).
- ``local``: every branch clips its update and adds its own noise before it leaves the branch (Flower's
  ``LocalDpMod``, std = C * sqrt(2 ln(1.25/delta0)) / epsilon0), so the server never sees a clean update.

Budget: branch-level (epsilon, delta) over the rounds actually released, by the exact composition of
Gaussian mechanisms under Gaussian differential privacy (Dong, Roth & Su 2019, "Gaussian Differential
Privacy", Cor. 3.3 and Thm. 2.7): T releases with noise multiplier z are mu-GDP with mu = sqrt(T) / z, and
mu-GDP implies (epsilon, delta(epsilon))-DP with

    delta(epsilon) = Phi(-epsilon/mu + mu/2) - exp(epsilon) * Phi(-epsilon/mu - mu/2).

No amplification by sampling is claimed (every available branch trains every round). An RDP bound
(Mironov 2017) is computed beside it as a cross-check: it must never be smaller.

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

from flwr.app import Context, Message, MessageType
from flwr.clientapp.mod import LocalDpMod, fixedclipping_mod
from flwr.serverapp import GaussianPrivacyEvent, PrivacySpent

MODES = ("none", "central", "local")
SECAGG_UNAVAILABLE = (
    "secure_aggregation=true: SecAgg+ in flwr 1.41 exists only for the legacy API "
    "(flwr.server.workflow.SecAggPlusWorkflow needs a LegacyContext and a flwr.server.strategy strategy; "
    "flwr.client.mod.secaggplus_mod reads the legacy fitres.* records), not for the Message API strategies "
    "findial uses. Use privacy.mode=local to keep clean updates from the server instead.")


# --------------------------------------------------------------------------- accounting

def _log_phi(x: float) -> float:
    """log of the standard normal CDF, accurate far into the lower tail."""
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # asymptotic series: Phi(x) ~ phi(x)/|x| * (1 - 1/x^2 + 3/x^4)
    return -0.5 * x * x - math.log(-x) - 0.5 * math.log(2 * math.pi) + math.log1p(-1 / x ** 2 + 3 / x ** 4)


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


def rdp_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Upper bound from Renyi DP: T Gaussian releases have RDP T*alpha/(2 z^2); eps = min rdp + log(1/delta)/(alpha-1)."""
    if releases == 0:
        return 0.0
    return min(releases * a / (2 * noise_multiplier ** 2) + math.log(1 / delta) / (a - 1) for a in RDP_ORDERS)


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
        self.mu_squared += count / event.noise_multiplier ** 2
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
        mu = math.sqrt(self.mu_squared + 1 / event.noise_multiplier ** 2)
        return gdp_epsilon(mu, self.target_delta) > max_epsilon

    def get_privacy_spent(self) -> PrivacySpent:
        return PrivacySpent(epsilon=self.get_epsilon(), delta=self.target_delta, num_releases=self.num_releases,
                            accounting_method="gdp-exact")


@dataclass
class PrivacyPlan:
    """What one configured privacy mode means per round, and the budget spent so far."""

    mode: str
    clipping_norm: float = 0.0
    noise_multiplier: float = 0.0   # per release, relative to the clipping norm
    target_delta: float = 1e-5
    max_epsilon: float | None = None
    local_epsilon: float | None = None
    local_delta: float | None = None

    @classmethod
    def from_config(cls, privacy, secure_aggregation: bool = False) -> "PrivacyPlan":
        if secure_aggregation:
            raise ValueError(SECAGG_UNAVAILABLE)
        mode = str(privacy.get("mode", "none"))
        if mode not in MODES:
            raise ValueError(f"privacy.mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode == "none":
            return cls("none")
        clip = float(privacy.clipping_norm)
        if clip <= 0:
            raise ValueError(f"privacy.clipping_norm={clip}: must be > 0")
        common = dict(clipping_norm=clip, target_delta=float(privacy.target_delta),
                      max_epsilon=None if privacy.get("max_epsilon") is None else float(privacy.max_epsilon))
        if mode == "central":
            z = float(privacy.noise_multiplier)
            if z <= 0:
                raise ValueError(f"privacy.noise_multiplier={z}: must be > 0 in central mode")
            return cls("central", noise_multiplier=z, **common)
        eps0, delta0 = float(privacy.local_epsilon), float(privacy.local_delta)
        if eps0 <= 0 or not 0 < delta0 < 1:
            raise ValueError(f"privacy.local_epsilon={eps0}, local_delta={delta0}: need epsilon > 0 and 0 < delta < 1")
        return cls("local", noise_multiplier=classic_noise_multiplier(eps0, delta0), local_epsilon=eps0,
                   local_delta=delta0, **common)

    def accountant(self) -> GaussianAccountant | None:
        return GaussianAccountant(self.target_delta) if self.mode != "none" else None

    def event(self, participants: int) -> GaussianPrivacyEvent:
        return GaussianPrivacyEvent(noise_multiplier=self.noise_multiplier, sample_size=max(1, participants),
                                    population_size=max(1, participants))

    def summary(self, accountant: GaussianAccountant | None) -> dict:
        if self.mode == "none" or accountant is None:
            return {"mode": self.mode}
        out = {k: v for k, v in asdict(self).items() if v is not None}
        out.update(epsilon=accountant.get_epsilon(), delta=self.target_delta, releases=accountant.num_releases,
                   mu=accountant.mu, accounting="gdp-exact (Dong, Roth & Su 2019), no sampling amplification",
                   epsilon_rdp_bound=rdp_epsilon(self.noise_multiplier, accountant.num_releases, self.target_delta))
        return out


# --------------------------------------------------------------------------- client side

def privacy_mod(plan_for):
    """A ClientApp mod applying the branch's configured mode with Flower's own mods.

    ``plan_for(context)`` returns the PrivacyPlan of this branch: the mode comes from the branch's own
    configuration, not from the server's message, so a server cannot switch local noise off.
    """

    def mod(msg: Message, ctxt: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        plan = plan_for(ctxt)
        if plan.mode == "central":
            return fixedclipping_mod(msg, ctxt, call_next)
        if plan.mode == "local":
            return LocalDpMod(plan.clipping_norm, plan.clipping_norm, plan.local_epsilon,
                              plan.local_delta)(msg, ctxt, call_next)
        return call_next(msg, ctxt)

    return mod


# --------------------------------------------------------------------------- server side

def wrap_strategy(strategy, plan: PrivacyPlan, min_train_clients: int):
    """Central mode: Flower's client-side fixed-clipping wrapper (server noise, clients clip)."""
    if plan.mode != "central":
        return strategy
    from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping

    return DifferentialPrivacyClientSideFixedClipping(strategy, plan.noise_multiplier, plan.clipping_norm,
                                                      num_sampled_clients=max(1, min_train_clients))
