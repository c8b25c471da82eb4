"""Service metrics in the Prometheus text exposition format (version 0.0.4), thread-safe.

Request counts by route template (never by raw path, so session ids stay out of
label values), a latency histogram, hand-offs by reason, model reloads and the
version being served. A gray release (``release_router.py``) adds, per model version and role
(champion, challenger, shadow): understood turns, hand-offs, low-confidence turns, errors and a turn latency
histogram; for a shadow, its agreement (intent, state) with the model that answered, its errors and the
copies dropped because its queue was full; the plan (``findial_release_info``, the challenger's share) and
the automatic rollbacks.
"""

from __future__ import annotations

import threading
from collections import defaultdict

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    esc = (
        f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(10), "").replace(chr(34), chr(92) + chr(34))}"'
        for k, v in pairs
    )
    return "{" + ",".join(esc) + "}"


class Metrics:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self._lock = threading.Lock()
        self.buckets = buckets
        self.requests: dict[tuple, int] = defaultdict(int)  # (method, route, status) -> count
        self.latency: dict[str, list[float]] = {}  # route -> [bucket counts..., sum, count]
        self.handoffs: dict[str, int] = defaultdict(int)  # reason -> count
        self.reloads: dict[str, int] = defaultdict(int)  # success|failure -> count
        self.batch_items = 0
        self.batches = 0
        self.model: tuple[str, str, str] | None = None  # (name, version, ref)
        self.sessions = 0
        self.in_flight = 0  # HTTP requests being served (event loop only)
        self.turns: dict[tuple[str, str], list[int]] = {}  # (version, role) -> [turns, handoffs, low_conf, errors]
        self.turn_latency: dict[tuple[str, str], list[float]] = {}
        self.shadow: dict[tuple[str, str], list[int]] = {}  # (shadow, answering version) -> [turns, intent, state]
        self.shadow_latency: dict[tuple[str, str], list[float]] = {}
        self.shadow_errors: dict[str, int] = defaultdict(int)
        self.shadow_dropped = 0
        self.release: dict | None = None  # the plan in use (release.ReleasePlan.summary)
        self.rollbacks = 0

    def _observe(self, hists: dict, key, seconds: float) -> None:
        h = hists.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i, b in enumerate(self.buckets):
            if seconds <= b:
                h[i] += 1
        h[-2] += seconds
        h[-1] += 1

    def observe_turn(self, version: str | None, role: str, handoff: bool, low_confidence: bool, seconds: float):
        with self._lock:
            key = (version or "", role)
            row = self.turns.setdefault(key, [0, 0, 0, 0])
            row[0] += 1
            row[1] += bool(handoff)
            row[2] += bool(low_confidence)
            self._observe(self.turn_latency, key, seconds)

    def count_model_error(self, version: str | None, role: str) -> None:
        with self._lock:
            row = self.turns.setdefault((version or "", role), [0, 0, 0, 0])
            row[3] += 1

    def observe_shadow(self, version: str, against: str, intent: bool, state: bool, seconds: float) -> None:
        with self._lock:
            row = self.shadow.setdefault((version, against or ""), [0, 0, 0])
            row[0] += 1
            row[1] += bool(intent)
            row[2] += bool(state)
            self._observe(self.shadow_latency, (version, "shadow"), seconds)

    def count_shadow_error(self, version: str) -> None:
        with self._lock:
            self.shadow_errors[version or ""] += 1

    def count_shadow_dropped(self) -> None:
        with self._lock:
            self.shadow_dropped += 1

    def set_release(self, plan: dict | None) -> None:
        with self._lock:
            self.release = plan

    def count_rollback(self) -> None:
        with self._lock:
            self.rollbacks += 1

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            self._observe(self.latency, route, seconds)

    def count_handoff(self, reasons: list[str]) -> None:
        with self._lock:
            for r in reasons:
                self.handoffs[r] += 1

    def count_reload(self, ok: bool) -> None:
        with self._lock:
            self.reloads["success" if ok else "failure"] += 1

    def count_batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batch_items += size

    def set_model(self, name: str | None, version: str | None, ref: str) -> None:
        with self._lock:
            self.model = (name or "", version or "", ref)

    def set_sessions(self, n: int) -> None:
        with self._lock:
            self.sessions = n

    def render(self) -> str:
        with self._lock:
            out = [
                "# HELP findial_http_requests_total HTTP requests by method, route template and status.",
                "# TYPE findial_http_requests_total counter",
            ]
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f"findial_http_requests_total{_labels((('method', m), ('route', r), ('status', s)))} {n}")
            out += [
                "# HELP findial_http_request_duration_seconds Request latency by route template.",
                "# TYPE findial_http_request_duration_seconds histogram",
            ]
            for route, h in sorted(self.latency.items()):
                for b, count in zip(self.buckets, h):
                    out.append(
                        f"findial_http_request_duration_seconds_bucket"
                        f"{_labels((('route', route), ('le', repr(b))))} {int(count)}"
                    )
                out.append(
                    f"findial_http_request_duration_seconds_bucket{_labels((('route', route), ('le', '+Inf')))}"
                    f" {int(h[-1])}"
                )
                out.append(f"findial_http_request_duration_seconds_sum{_labels((('route', route),))} {h[-2]:.6f}")
                out.append(f"findial_http_request_duration_seconds_count{_labels((('route', route),))} {int(h[-1])}")
            out += [
                "# HELP findial_handoffs_total Turns handed to a human agent, by reason.",
                "# TYPE findial_handoffs_total counter",
            ]
            out += [f"findial_handoffs_total{_labels((('reason', r),))} {n}" for r, n in sorted(self.handoffs.items())]
            out += [
                "# HELP findial_model_reloads_total Loads of a newly promoted model version, by result.",
                "# TYPE findial_model_reloads_total counter",
            ]
            out += [
                f"findial_model_reloads_total{_labels((('result', r),))} {self.reloads.get(r, 0)}"
                for r in ("success", "failure")
            ]
            out += [
                "# HELP findial_model_info The model version being served (1 when loaded).",
                "# TYPE findial_model_info gauge",
            ]
            if self.model:
                name, version, ref = self.model
                out.append(f"findial_model_info{_labels((('name', name), ('version', version), ('ref', ref)))} 1")
            out += [
                "# HELP findial_model_loaded Whether a model is loaded (readiness).",
                "# TYPE findial_model_loaded gauge",
                f"findial_model_loaded {1 if self.model else 0}",
                "# HELP findial_inference_batches_total Forward passes run by the local batcher.",
                "# TYPE findial_inference_batches_total counter",
                f"findial_inference_batches_total {self.batches}",
                "# HELP findial_inference_batch_items_total Turns understood by those passes.",
                "# TYPE findial_inference_batch_items_total counter",
                f"findial_inference_batch_items_total {self.batch_items}",
                "# HELP findial_http_requests_in_flight HTTP requests being served.",
                "# TYPE findial_http_requests_in_flight gauge",
                f"findial_http_requests_in_flight {self.in_flight}",
                "# HELP findial_sessions Open dialogue sessions.",
                "# TYPE findial_sessions gauge",
                f"findial_sessions {self.sessions}",
            ]
            out += self._render_release()
            return "\n".join(out) + "\n"

    def _histogram(self, name: str, hists: dict, label_names: tuple[str, ...]) -> list[str]:
        out = []
        for key, h in sorted(hists.items()):
            pairs = tuple(zip(label_names, key))
            for b, n in zip(self.buckets, h):
                out.append(f"{name}_bucket{_labels(pairs + (('le', repr(b)),))} {int(n)}")
            out.append(f"{name}_bucket{_labels(pairs + (('le', '+Inf'),))} {int(h[-1])}")
            out.append(f"{name}_sum{_labels(pairs)} {h[-2]:.6f}")
            out.append(f"{name}_count{_labels(pairs)} {int(h[-1])}")
        return out

    def _render_release(self) -> list[str]:
        """The per-version figures (caller holds the lock)."""
        out = []
        for i, (name, help_) in enumerate(
            (
                ("findial_model_turns_total", "Turns understood, by model version and release role."),
                ("findial_model_handoffs_total", "Turns handed to a human, by model version and release role."),
                ("findial_model_low_confidence_total", "Turns below handoff.min_confidence, by version and role."),
                ("findial_model_errors_total", "Turns whose understanding failed, by model version and role."),
            )
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out += [
                f"{name}{_labels((('version', v), ('role', r)))} {row[i]}" for (v, r), row in sorted(self.turns.items())
            ]
        out += [
            "# HELP findial_model_turn_duration_seconds Turn latency by model version and release role.",
            "# TYPE findial_model_turn_duration_seconds histogram",
        ]
        out += self._histogram("findial_model_turn_duration_seconds", self.turn_latency, ("version", "role"))
        for i, (name, help_) in enumerate(
            (
                ("findial_shadow_turns_total", "Turns the shadow model scored, by shadow and answering version."),
                ("findial_shadow_intent_agreements_total", "Shadow turns with the answering model's intent."),
                ("findial_shadow_state_agreements_total", "Shadow turns with the answering model's state."),
            )
        ):
            out += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
            out += [
                f"{name}{_labels((('version', v), ('answered_by', a)))} {row[i]}"
                for (v, a), row in sorted(self.shadow.items())
            ]
        out += [
            "# HELP findial_shadow_duration_seconds Shadow scoring latency (off the reply path), by shadow version.",
            "# TYPE findial_shadow_duration_seconds histogram",
        ]
        out += self._histogram("findial_shadow_duration_seconds", self.shadow_latency, ("version", "role"))
        out += [
            "# HELP findial_shadow_errors_total Shadow scorings that failed, by shadow version.",
            "# TYPE findial_shadow_errors_total counter",
        ]
        out += [
            f"findial_shadow_errors_total{_labels((('version', v),))} {n}"
            for v, n in sorted(self.shadow_errors.items())
        ]
        out += [
            "# HELP findial_shadow_dropped_total Turn copies not shadowed because the shadow queue was full.",
            "# TYPE findial_shadow_dropped_total counter",
            f"findial_shadow_dropped_total {self.shadow_dropped}",
            "# HELP findial_release_rollbacks_total Challengers this server rolled back automatically.",
            "# TYPE findial_release_rollbacks_total counter",
            f"findial_release_rollbacks_total {self.rollbacks}",
        ]
        if self.release is not None:
            r = self.release
            labels = tuple((k, r.get(k) or "") for k in ("model_name", "champion", "challenger", "shadow"))
            out += [
                "# HELP findial_release_info The release plan in use (1).",
                "# TYPE findial_release_info gauge",
                f"findial_release_info{_labels(labels)} 1",
                "# HELP findial_release_challenger_share The challenger's share of sessions (0 without one).",
                "# TYPE findial_release_challenger_share gauge",
                f"findial_release_challenger_share {float(r.get('share') or 0.0) if r.get('challenger') else 0.0}",
            ]
        return out
