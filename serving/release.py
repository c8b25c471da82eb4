"""The release plan of a registered model: who answers a session (champion or challenger), and who shadows.

The plan lives in the MLflow registry, so every replica reads the same one: the aliases ``champion``,
``challenger`` and ``shadow`` of the registered model (``findial-nlu``) and its tag ``findial.release``,
a JSON object::

    {"share": 0.1,                      # the challenger's share of sessions, 0..1
     "challenger": "3",                 # the version the share was set for (the alias is what routes)
     "started": "2026-12-07T10:00:00+00:00", "started_by": "erin",
     "auto_rollback": {"enabled": true, "error_margin": 0.02, "handoff_margin": 0.05, "min_sample": 200}}

``findial release start|promote|rollback|shadow`` (``release_steps.py``) write it; serving reads it
(``release_router.py``). A session is assigned by a stable hash of its id: ``bucket(id)`` is the first
8 bytes of its SHA-256 modulo 10000, and it goes to the challenger when ``bucket < share * 10000``, so
every replica, and every restart, gives the same answer. A stateless call (no session id) is keyed by
the masked text and its context: the same request always gets the same version.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace

RELEASE_TAG = "findial.release"
ROLES = ("champion", "challenger", "shadow")
BUCKETS = 10_000


class ReleaseError(ValueError):
    """A bad release plan or step; the message names the field."""


@dataclass(frozen=True)
class AutoRollback:
    """Remove the challenger when, with at least ``min_sample`` turns on each side, its error rate or its
    hand-off rate exceeds the champion's by more than the margin."""

    enabled: bool = True
    error_margin: float = 0.02
    handoff_margin: float = 0.05
    min_sample: int = 200

    def check(self, where: str = RELEASE_TAG) -> "AutoRollback":
        for name in ("error_margin", "handoff_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ReleaseError(f"{where}: auto_rollback.{name}: must be a rate within [0, 1], got {value!r}")
        if isinstance(self.min_sample, bool) or not isinstance(self.min_sample, int) or self.min_sample < 1:
            raise ReleaseError(f"{where}: auto_rollback.min_sample: must be an integer >= 1, got {self.min_sample!r}")
        if not isinstance(self.enabled, bool):
            raise ReleaseError(f"{where}: auto_rollback.enabled: must be true or false, got {self.enabled!r}")
        return self


@dataclass(frozen=True)
class ReleasePlan:
    model_name: str
    champion: str | None = None
    challenger: str | None = None  # None also when the alias names the champion's version
    shadow: str | None = None
    share: float = 0.0
    auto_rollback: AutoRollback = field(default_factory=AutoRollback)
    started: str | None = None
    started_by: str | None = None
    planned_challenger: str | None = None  # the tag's "challenger": the version ``share`` was set for

    @property
    def active(self) -> bool:
        """A challenger takes traffic."""
        return self.challenger is not None and self.share > 0

    def role_of(self, version: str | None) -> str | None:
        if version is None:
            return None
        if version == self.champion:
            return "champion"
        if version == self.challenger:
            return "challenger"
        return "shadow" if version == self.shadow else None

    def version_of(self, role: str) -> str | None:
        return {"champion": self.champion, "challenger": self.challenger, "shadow": self.shadow}[role]

    def assign(self, key: str) -> str:
        """The role a session (or a stateless request) keyed ``key`` is served by under this plan."""
        return "challenger" if self.active and bucket(key) < round(self.share * BUCKETS) else "champion"

    def summary(self) -> dict:
        return {
            "model_name": self.model_name,
            "champion": self.champion,
            "challenger": self.challenger,
            "shadow": self.shadow,
            "share": self.share,
            "started": self.started,
            "started_by": self.started_by,
            "auto_rollback": asdict(self.auto_rollback),
        }

    def tag_value(self) -> str:
        """The ``findial.release`` tag for this plan (the aliases are set separately)."""
        return json.dumps(
            {
                "share": self.share,
                "challenger": self.challenger,
                "started": self.started,
                "started_by": self.started_by,
                "auto_rollback": asdict(self.auto_rollback),
            },
            sort_keys=True,
        )

    def with_(self, **changes) -> "ReleasePlan":
        return replace(self, **changes)


def bucket(key: str) -> int:
    """A stable bucket in [0, 10000) for a session id: the same on every replica and every run."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:8], "big") % BUCKETS


def stateless_key(text: str, history: tuple[tuple[str, str], ...] = ()) -> str:
    """The routing key of a call without a session id: its masked text and context."""
    return json.dumps([text, [list(t) for t in history]], ensure_ascii=False)


def check_share(share, where: str = "share") -> float:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share):
        raise ReleaseError(f"{where}: must be a number within [0, 1], got {share!r}")
    if not 0.0 <= float(share) <= 1.0:
        raise ReleaseError(f"{where}: must be within [0, 1] (a share of sessions, 0.1 = 10%), got {share!r}")
    return float(share)


def parse_tag(raw: str | None, where: str = RELEASE_TAG) -> dict:
    """The ``findial.release`` tag as checked values (an absent tag: no share, default auto-rollback)."""
    if not raw:
        return {"share": 0.0, "auto_rollback": AutoRollback()}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ReleaseError(f"{where}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ReleaseError(f"{where}: expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {"share", "challenger", "started", "started_by", "auto_rollback"})
    if unknown:
        raise ReleaseError(f"{where}: unknown key(s) {', '.join(unknown)}")
    rules = data.get("auto_rollback") or {}
    if not isinstance(rules, dict) or set(rules) - set(AutoRollback.__dataclass_fields__):
        raise ReleaseError(
            f"{where}: auto_rollback: expected an object with {', '.join(AutoRollback.__dataclass_fields__)}, "
            f"got {rules!r}"
        )
    return {
        "share": check_share(data.get("share", 0.0), f"{where}: share"),
        "planned_challenger": None if data.get("challenger") is None else str(data["challenger"]),
        "started": data.get("started"),
        "started_by": data.get("started_by"),
        "auto_rollback": AutoRollback(**rules).check(where),
    }


def from_registered_model(model) -> ReleasePlan:
    """The plan of an MLflow ``RegisteredModel`` (one read gives its aliases and tags together)."""
    aliases = {k: str(v) for k, v in (getattr(model, "aliases", None) or {}).items()}
    parsed = parse_tag((model.tags or {}).get(RELEASE_TAG), f"{model.name}: tag {RELEASE_TAG}")
    champion = aliases.get("champion")
    challenger = aliases.get("challenger")
    shadow = aliases.get("shadow")
    return ReleasePlan(
        model_name=model.name,
        champion=champion,
        challenger=None if challenger == champion else challenger,
        shadow=None if shadow in (champion, None) else shadow,
        **parsed,
    )


def read_plan(model_name: str, client=None) -> ReleasePlan:
    """The plan in the registry now (``MlflowClient`` on the configured store unless given)."""
    if client is None:
        from mlflow import MlflowClient

        client = MlflowClient()
    return from_registered_model(client.get_registered_model(model_name))
