"""Service metrics in the Prometheus text exposition format (version 0.0.4), thread-safe.

Request counts by route template (never by raw path, so session ids stay out of
label values), a latency histogram, hand-offs by reason, model reloads and the
version being served.
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

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            h = self.latency.setdefault(route, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if seconds <= b:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

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
                for b, n in zip(self.buckets, h):
                    out.append(
                        f"findial_http_request_duration_seconds_bucket"
                        f"{_labels((('route', route), ('le', repr(b))))} {int(n)}"
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
            return "\n".join(out) + "\n"
