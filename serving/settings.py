"""Serving settings: ``configs/serve.yaml`` as checked, typed, picklable dataclasses.

``ServeSettings.from_mapping`` takes the resolved config (a plain dict) and names
the field of any bad value (``serve.yaml: handoff.min_confidence: ...``). The API keys
themselves are read when the server starts (``auth.ApiKeys.from_settings``), not here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any


class SettingsError(ValueError):
    """A bad value in the serving config; the message names the field."""


@dataclass(frozen=True)
class ComplianceRule:
    name: str
    pattern: str
    ignore_case: bool = False

    def compile(self) -> re.Pattern:
        return re.compile(self.pattern, re.IGNORECASE if self.ignore_case else 0)


@dataclass(frozen=True)
class HandoffSettings:
    min_confidence: float = 0.5
    intents: tuple[str, ...] = ("complaint", "request_human_agent")
    emotions: tuple[str, ...] = ("angry", "dissatisfied")
    compliance_rules: tuple[ComplianceRule, ...] = ()


@dataclass(frozen=True)
class BatchingSettings:
    max_batch_size: int = 16
    max_wait_ms: float = 10.0


@dataclass(frozen=True)
class LimitSettings:
    max_text_chars: int = 2000
    max_body_bytes: int = 262144
    max_context_turns: int = 50
    max_sessions: int = 10000
    session_ttl_s: float = 3600.0
    body_timeout_s: float = 10.0  # a request body not received within this -> 408 body_timeout


@dataclass(frozen=True)
class AuthSettings:
    keys_file: str | None = None  # one key per line, # comments
    keys_env: str | None = "FINDIAL_API_KEYS"  # comma-separated keys
    required: str | bool = "auto"  # auto: on unless host is loopback; true; false


@dataclass(frozen=True)
class AuditSettings:
    path: str = "findial-runs/serving/audit.jsonl"
    fsync: bool = False


@dataclass(frozen=True)
class ResponderSettings:
    model_ref: str | None = "models:/findial-response@champion"  # null: no response model
    target: str | None = None  # a custom "module:callable"; wins when set
    options: dict = field(default_factory=dict)
    kind: str = "model"  # model: the registered response model | grounded: the KB (serving/kb.py)
    kb: str | None = None  # grounded: the articles file (null: the bundled data/kb/articles.jsonl)
    kb_index: str = "findial-runs/kb-index"  # grounded: the index directory (built or updated at start)
    kb_encoder: str | None = None  # grounded: the embedding model directory (null: the bundled e5-small)
    kb_threshold: float | None = None  # grounded: min fused retrieval score to answer (null: the validated one)


@dataclass(frozen=True)
class ReleaseSettings:
    """Gray release (serving/release_router.py): the plan is in the registry; these are how serving follows it."""

    enabled: bool = True  # follow the release plan of model_ref's registered model (model_ref must be an alias)
    shadow_queue: int = 256  # turns waiting for the shadow model; beyond it a copy is dropped (and counted)
    monitor_interval_s: float = 5.0  # how often the auto-rollback rule is checked
    audit_log: str = "findial-runs/audit/promotions.jsonl"  # where an automatic rollback is recorded
    challenger_replicas: int = 1  # ray: replicas of the challenger deployment (the shadow has one)


@dataclass(frozen=True)
class RaySettings:
    address: str | None = None
    temp_dir: str | None = None
    num_cpus: int | None = None
    replica_num_cpus: float = 0.5
    ingress_num_cpus: float = 0.25


@dataclass(frozen=True)
class ServeSettings:
    model_ref: str = "models:/findial-nlu@champion"
    backend: str = "local"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    download_dir: str = "findial-runs/serving/models"
    poll_interval_s: float = 30.0
    torch_threads: int | None = None
    runtime: str = "torch"  # torch | onnx (training/onnx_runtime.py)
    log_level: str = "info"
    graceful_shutdown_s: float = 10.0
    tracking_uri: str | None = None
    artifact_root: str | None = None
    replicas: int = 2
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    handoff: HandoffSettings = field(default_factory=HandoffSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    responder: ResponderSettings = field(default_factory=ResponderSettings)
    ray: RaySettings = field(default_factory=RaySettings)
    release: ReleaseSettings = field(default_factory=ReleaseSettings)

    @classmethod
    def from_mapping(cls, cfg: dict[str, Any], source: str = "serve.yaml") -> "ServeSettings":
        """Build from the resolved config; ``logger.tracking_uri`` / ``logger.artifact_root`` are picked up."""
        cfg = dict(cfg)
        logger = cfg.pop("logger", None) or {}
        cfg.setdefault("tracking_uri", logger.get("tracking_uri"))
        cfg.setdefault("artifact_root", logger.get("artifact_root"))
        for ignored in ("paths", "hydra"):
            cfg.pop(ignored, None)
        handoff = dict(cfg.get("handoff") or {})
        rules = []
        for i, r in enumerate(handoff.get("compliance_rules") or []):
            where = f"{source}: handoff.compliance_rules[{i}]"
            if not isinstance(r, dict) or not r.get("name") or not r.get("pattern"):
                raise SettingsError(f"{where}: needs a name and a pattern, got {r!r}")
            rule = _build(ComplianceRule, r, where)
            try:
                rule.compile()
            except re.error as exc:
                raise SettingsError(f"{where}.pattern: invalid regular expression: {exc}") from None
            rules.append(rule)
        handoff["compliance_rules"] = tuple(rules)
        for key in ("intents", "emotions"):
            if key in handoff:
                handoff[key] = tuple(handoff[key] or ())
        nested = {
            "batching": BatchingSettings,
            "limits": LimitSettings,
            "auth": AuthSettings,
            "audit": AuditSettings,
            "responder": ResponderSettings,
            "ray": RaySettings,
            "release": ReleaseSettings,
        }
        built = {k: _build(t, cfg.get(k) or {}, f"{source}: {k}") for k, t in nested.items()}
        built["handoff"] = _build(HandoffSettings, handoff, f"{source}: handoff")
        top = {k: v for k, v in cfg.items() if k not in built}
        settings = _build(cls, {**top, **built}, source)
        settings.check(source)
        return settings

    def check(self, source: str = "serve.yaml") -> None:
        def bad(name: str, why: str):
            raise SettingsError(f"{source}: {name}: {why}")

        if self.backend not in ("local", "ray"):
            bad("backend", f"must be 'local' or 'ray', got {self.backend!r}")
        if not 0 <= self.port <= 65535:
            bad("port", f"must be 0..65535, got {self.port}")
        if not 0.0 <= self.handoff.min_confidence <= 1.0:
            bad("handoff.min_confidence", f"must be within [0, 1], got {self.handoff.min_confidence}")
        if self.poll_interval_s < 0:
            bad("poll_interval_s", "must be >= 0 (0 disables polling)")
        if self.replicas < 1:
            bad("replicas", f"must be >= 1, got {self.replicas}")
        if self.batching.max_batch_size < 1:
            bad("batching.max_batch_size", "must be >= 1")
        if self.batching.max_wait_ms < 0:
            bad("batching.max_wait_ms", "must be >= 0")
        for name in ("max_text_chars", "max_body_bytes", "max_context_turns", "max_sessions"):
            if getattr(self.limits, name) < 1:
                bad(f"limits.{name}", "must be >= 1")
        if self.limits.max_body_bytes < self.limits.max_text_chars:
            bad("limits.max_body_bytes", "must be at least limits.max_text_chars")
        if not self.limits.body_timeout_s > 0:
            bad("limits.body_timeout_s", f"must be > 0, got {self.limits.body_timeout_s}")
        if not (isinstance(self.auth.required, bool) or self.auth.required == "auto"):
            bad("auth.required", f"must be auto, true or false, got {self.auth.required!r}")
        if self.responder.kind not in ("model", "grounded"):
            bad("responder.kind", f"must be 'model' or 'grounded', got {self.responder.kind!r}")
        if self.responder.kb_threshold is not None and not 0.0 <= self.responder.kb_threshold <= 1.0:
            bad("responder.kb_threshold", f"must be within [0, 1], got {self.responder.kb_threshold}")
        if self.release.shadow_queue < 1:
            bad("release.shadow_queue", f"must be >= 1, got {self.release.shadow_queue}")
        if not self.release.monitor_interval_s > 0:
            bad("release.monitor_interval_s", f"must be > 0, got {self.release.monitor_interval_s}")
        if self.release.challenger_replicas < 1:
            bad("release.challenger_replicas", f"must be >= 1, got {self.release.challenger_replicas}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            bad("device", f"must be cpu, cuda, cuda:N or auto, got {self.device!r}")


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise SettingsError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out = {}
    for k, v in values.items():
        kind = known[k].type
        try:
            out[k] = _coerce(v, kind)
        except (TypeError, ValueError):
            raise SettingsError(f"{where}.{k}: expected {kind}, got {v!r}") from None
    return cls(**out)


def _coerce(value, kind: object):  # a field's annotation: a string under postponed evaluation
    if not isinstance(kind, str):
        return value
    base = kind.replace(" | None", "")
    if value is None:
        if base in ("int", "float", "bool", "str") and base == kind:
            raise ValueError(value)
        return value
    if base == "int":
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(value)
    if base == "float":
        if isinstance(value, bool):
            raise ValueError(value)
        return float(value)
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(value)
        return value
    if base == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(value)
        return str(value)
    return value
