"""Serving a release plan: which model answers a turn, the shadow scoring, and the automatic rollback.

``ReleaseRouter`` is the service's understander when ``model_ref`` is ``models:/NAME@champion`` (and
``release.enabled``). It holds one understander per role, each with its own model (``ModelHolder.for_role``:
``champion`` polls ``model_ref``; ``challenger`` and ``shadow`` the optional aliases), and reads the plan
(``release.read_plan``) every ``poll_interval_s``.

- Routing: a session keeps the version it started on while that version is the plan's champion or
  challenger; otherwise (a new session, or its version left the plan) it is assigned by ``plan.assign``
  (the hash of its id). A stateless call is keyed by its masked text and context. The challenger answers
  only once the version the plan names is loaded; until then the champion does.
- Errors: a challenger that fails on a turn (its inference raises, or it was just unloaded) is counted
  against its version and the champion answers the turn, so a switch or a broken challenger fails no
  request. A champion that fails fails the turn (``TurnFailed``, a 500), counted against its version.
- Shadow: after the answering model has answered, a copy of the turn (the same input) is put on a bounded
  queue without waiting (``release.shadow_queue``; a full queue drops the copy and counts it); a background
  task scores it with the shadow model on its own low-priority thread, compares intent and state with the
  answer, exports the agreement and writes a ``shadow`` audit record. The reply never waits for it.
- Auto-rollback: every ``release.monitor_interval_s`` the counts this server kept since the plan's
  challenger started are checked with ``release_stats.verdict``; a failing rule stops routing to the
  challenger at once and removes its alias in the registry (``release_steps.rollback``, audited), so
  every other replica follows within its poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

from .batcher import ModelNotReady, understand_each
from .metrics import Metrics
from .model_store import parse_alias
from .release import ReleaseError, ReleasePlan, read_plan
from .release_stats import Counts, verdict

log = logging.getLogger("findial.serving")


def release_model_name(settings) -> str | None:
    """The registered model whose plan serving follows: ``model_ref``'s, when it is ``@champion`` and
    ``release.enabled``; else None (a fixed version or a bundle directory: no release)."""
    alias = parse_alias(settings.model_ref)
    if not settings.release.enabled or alias is None or alias[1] != "champion":
        return None
    return alias[0]


class TurnFailed(RuntimeError):
    """The model that had to answer failed; ``failed`` lists every (role, version, error) of the turn."""

    def __init__(self, failed: list[dict], cause: BaseException):
        super().__init__(f"understanding failed: {type(cause).__name__}")
        self.failed, self.cause = failed, cause


class RoleGauge(Metrics):
    """The ``metrics`` a challenger's batcher sees: none of the HTTP requests in flight are on their way to
    it (``in_flight`` stays 0, so a lone challenger turn never waits for company), and its batches are
    counted with the others."""

    def __init__(self, metrics: Metrics):
        super().__init__()
        self._metrics = metrics

    def count_batch(self, size: int) -> None:
        self._metrics.count_batch(size)


def _lower_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: niceness is per thread), so that shadow
    scoring yields the cores to the reply path."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (OSError, AttributeError):
        pass


class LocalShadow:
    """The shadow model in process: a holder and one low-priority inference thread."""

    def __init__(self, holder):
        self.holder = holder
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="findial-shadow", initializer=_lower_priority)

    async def start(self) -> None:
        self.holder.start()

    async def stop(self) -> None:
        self._executor.shutdown(wait=True)
        await asyncio.to_thread(self.holder.stop)

    def loaded_version(self) -> str | None:
        return self.holder.current.version if self.holder.current is not None else None

    async def status(self) -> dict:
        return {"ready": self.holder.current is not None, **self.holder.info()}

    async def score(self, items: list) -> list:
        """Per item: (result, model info) or the exception."""
        model = self.holder.current
        if model is None:
            return [ModelNotReady("no shadow model loaded")] * len(items)
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(self._executor, understand_each, model.pipeline, items)
        info = model.info()
        return [r if isinstance(r, Exception) else (r, info) for r in results]


class UnderstanderShadow:
    """The shadow behind any understander (Ray: the shadow deployment)."""

    def __init__(self, understander):
        self.understander = understander
        self._version: str | None = None

    async def start(self) -> None:
        await self.understander.start()

    async def stop(self) -> None:
        await self.understander.stop()

    def loaded_version(self) -> str | None:
        return self._version

    async def status(self) -> dict:
        status = await self.understander.status()
        self._version = (status.get("model") or {}).get("version")
        return status

    async def score(self, items: list) -> list:
        return await asyncio.gather(*(self.understander.understand(i) for i in items), return_exceptions=True)


class ReleaseRouter:
    routes = True  # the service passes routing keys to ``understand``

    def __init__(
        self,
        settings,
        understanders: dict,
        metrics: Metrics,
        model_name: str,
        shadow=None,
        audit=None,
        plan_reader=read_plan,
    ):
        self.settings = settings
        self.roles = understanders  # champion (required), challenger
        self.shadow = shadow  # LocalShadow / UnderstanderShadow, or None
        self.metrics = metrics
        self.model_name = model_name
        self.audit = audit
        self.plan_reader = plan_reader
        self.plan = ReleasePlan(model_name)
        self.plan_error: str | None = None
        self._status_versions: dict[str, str | None] = {}
        self._sticky: OrderedDict[str, str] = OrderedDict()
        self._max_sticky = settings.limits.max_sessions
        self._counts: dict[str, Counts] = {}
        self._period: tuple | None = None
        self._rolled_back: set[str] = set()  # challengers this server removed: never routed to again here
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []
        self.shadow_dropped = 0
        self.rollbacks: list[dict] = []

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.settings.release.shadow_queue)
        for u in self.roles.values():
            await u.start()
        if self.shadow is not None:
            await self.shadow.start()
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._poll_loop(), name="findial-release-poll"),
            asyncio.create_task(self._monitor_loop(), name="findial-release-monitor"),
        ]
        if self.shadow is not None:
            self._tasks.append(asyncio.create_task(self._shadow_loop(), name="findial-shadow"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        if self.shadow is not None:
            await self.shadow.stop()
        for u in self.roles.values():
            await u.stop()

    # ------------------------------------------------------------------ the plan
    async def refresh(self) -> None:
        """Read the plan and what each role has loaded."""
        try:
            plan = await asyncio.to_thread(self.plan_reader, self.model_name)
            self.plan_error = None
        except ReleaseError as exc:  # a bad tag: serve the champion only until it is fixed
            plan = ReleasePlan(self.model_name, champion=self.plan.champion)
            self._note_plan_error(str(exc))
        except Exception as exc:  # no such model yet, registry unreachable: keep the plan we have
            self._note_plan_error(f"cannot read the release plan of {self.model_name}: {type(exc).__name__}: {exc}")
            plan = self.plan
        self._rolled_back &= {plan.challenger} - {None}  # forgotten once the registry no longer names it
        if plan.challenger in self._rolled_back:
            plan = plan.with_(challenger=None, share=0.0)
        self._set_plan(plan)
        for role, u in self.roles.items():
            if getattr(u, "holder", None) is None:  # a remote model (Ray): ask it what it has loaded
                try:
                    status = await u.status()
                    version = (status.get("model") or {}).get("version") if status.get("ready") else None
                except Exception as exc:  # not deployed yet, or restarting: route nothing to it meanwhile
                    log.debug("status of the %s: %s", role, exc)
                    version = None
                self._status_versions[role] = version
        if isinstance(self.shadow, UnderstanderShadow):
            try:
                await self.shadow.status()
            except Exception:
                self.shadow._version = None

    def _note_plan_error(self, message: str) -> None:
        if message != self.plan_error:
            log.warning("%s", message)
        self.plan_error = message

    def _set_plan(self, plan: ReleasePlan) -> None:
        if plan != self.plan:
            log.info(
                "release plan of %s: champion v%s, challenger %s, shadow %s",
                plan.model_name,
                plan.champion,
                f"v{plan.challenger} at {plan.share:.0%}" if plan.challenger else "none",
                f"v{plan.shadow}" if plan.shadow else "none",
            )
        self.plan = plan
        period = (plan.champion, plan.challenger, plan.started)
        if period != self._period:  # a new comparison: count from now
            self._period, self._counts = period, {}
        self.metrics.set_release(plan.summary())

    async def _poll_loop(self) -> None:
        interval = self.settings.poll_interval_s
        while True:
            await asyncio.sleep(interval if interval > 0 else 1.0)
            if interval > 0:
                await self.refresh()

    def loaded(self, role: str) -> str | None:
        u = self.roles.get(role)
        if u is None:
            return None
        holder = getattr(u, "holder", None)
        if holder is not None:
            return holder.current.version if holder.current is not None else None
        return self._status_versions.get(role)

    # ------------------------------------------------------------------ routing
    def _serving(self, version: str | None) -> str | None:
        """The understander (role) that has ``version`` loaded now: its plan role's, else the other one (in a
        promotion the challenger's model still answers until the champion's holder has loaded it)."""
        if not version:
            return None
        preferred = self.plan.role_of(version)
        for role in (preferred or "champion", "champion", "challenger"):
            if role in self.roles and self.loaded(role) == version:
                return role
        return None

    def assign(self, key: str, session_id: str | None = None, new_session: bool = False) -> str:
        """The understander (role) that answers: the session's version while the plan keeps it, else the
        hash's."""
        plan = self.plan
        if session_id is not None and not new_session:
            version = self._sticky.get(session_id)
            role = self._serving(version) if plan.role_of(version) in ("champion", "challenger") else None
            if role is not None:
                self._sticky.move_to_end(session_id)
                return role
        role = plan.assign(key)
        if role == "challenger" and (self.loaded("challenger") != plan.challenger or "challenger" not in self.roles):
            role = "champion"  # not loaded yet: the champion answers, and the session stays with it
        if session_id is not None:
            self._sticky[session_id] = self.loaded(role) or ""
            self._sticky.move_to_end(session_id)
            while len(self._sticky) > self._max_sticky:
                self._sticky.popitem(last=False)
        return role

    def forget(self, session_id: str) -> None:
        self._sticky.pop(session_id, None)

    async def understand(
        self, item, key: str | None = None, session_id: str | None = None, new_session: bool = False, tag=None
    ) -> tuple[dict, dict]:
        """(result, model info + ``role`` and ``failed``) for one turn, from the role the plan gives it."""
        role = self.assign(key if key is not None else item.text, session_id, new_session)
        failed: list[dict] = []
        if role != "champion":
            try:
                result, info = await self.roles[role].understand(item)
            except ModelNotReady:  # unloaded between the check and the call (a switch): no error
                role = "champion"
            except Exception as exc:  # a failing challenger never fails the turn: the champion answers
                version = self.loaded(role) or self.plan.version_of(role)
                log.warning(
                    "the %s (v%s) failed on a turn (%s): the champion answers", role, version, type(exc).__name__
                )
                failed.append({"role": role, "version": version, "error": type(exc).__name__})
                self._count_error(version, role)
                role = "champion"
        if role == "champion":
            try:
                result, info = await self.roles["champion"].understand(item)
            except ModelNotReady:
                raise
            except Exception as exc:
                version = self.loaded("champion")
                failed.append({"role": "champion", "version": version, "error": type(exc).__name__})
                self._count_error(version, "champion")
                raise TurnFailed(failed, exc) from exc
        info = {**info, "role": self.plan.role_of(info.get("version")) or role, "failed": failed}
        self._offer_shadow(item, result, info, tag or {})
        return result, info

    # ------------------------------------------------------------------ figures
    def _count_error(self, version: str | None, role: str) -> None:
        self.metrics.count_model_error(version, role)
        self._counts.setdefault(version or "", Counts()).fail()

    def observe(self, info: dict, reasons: list[str], seconds: float) -> None:
        """A turn the service finished: its hand-off reasons and latency, counted for the answering version."""
        version, role = info.get("version"), info.get("role", "champion")
        low = "low_confidence" in reasons
        self.metrics.observe_turn(version, role, bool(reasons), low, seconds)
        self._counts.setdefault(version or "", Counts()).answer(bool(reasons), low)

    def counts(self) -> dict[str, dict]:
        return {v: c.figures() for v, c in self._counts.items()}

    # ------------------------------------------------------------------ shadow
    def _offer_shadow(self, item, result: dict, info: dict, tag: dict) -> None:
        plan, shadow = self.plan, self.shadow
        if shadow is None or plan.shadow is None or self._queue is None:
            return
        if shadow.loaded_version() != plan.shadow or plan.shadow == info.get("version"):
            return
        answer = {"intent": result.get("intent"), "state": dict(result.get("state") or {})}
        try:
            self._queue.put_nowait((item, answer, info.get("version"), info.get("role"), dict(tag)))
        except asyncio.QueueFull:
            self.shadow_dropped += 1
            self.metrics.count_shadow_dropped()

    async def _shadow_loop(self) -> None:
        limit, queue = self.settings.batching.max_batch_size, self._queue
        assert queue is not None  # start() made it
        while True:
            batch = [await queue.get()]
            while len(batch) < limit and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._score(batch)
            except asyncio.CancelledError:
                raise
            except Exception:  # the shadow must never stop: log and go on
                log.exception("shadow scoring failed on a batch of %d", len(batch))

    async def _score(self, batch: list) -> None:
        started = time.perf_counter()
        results = await self.shadow.score([item for item, *_ in batch])
        seconds = (time.perf_counter() - started) / max(1, len(batch))
        records = []
        for (item, answer, answered_by, answered_role, tag), res in zip(batch, results):
            if isinstance(res, ModelNotReady):
                continue  # unloaded meanwhile: nothing to compare
            base = {
                "event": "shadow",
                "request_id": tag.get("request_id"),
                "session_id": tag.get("session_id"),
                "answered_by": {"version": answered_by, "role": answered_role},
            }
            if isinstance(res, BaseException):
                version = self.shadow.loaded_version() or self.plan.shadow or ""
                self.metrics.count_shadow_error(version)
                records.append({**base, "release": {"role": "shadow", "version": version}, "error": type(res).__name__})
                continue
            result, info = res
            agree = {"intent": result["intent"] == answer["intent"], "state": result["state"] == answer["state"]}
            self.metrics.observe_shadow(info.get("version"), answered_by, agree["intent"], agree["state"], seconds)
            records.append(
                {
                    **base,
                    "release": {"role": "shadow", "version": info.get("version")},
                    "intent": result["intent"],
                    "confidence": result.get("confidence"),
                    "agree": agree,
                    "latency_ms": round(seconds * 1000, 2),
                }
            )
        if self.audit is not None and records:
            await asyncio.to_thread(lambda: [self.audit.write(r) for r in records])

    # ------------------------------------------------------------------ auto-rollback
    async def _monitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.release.monitor_interval_s)
            try:
                await self.check_rollback()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "the auto-rollback check failed (it runs again in %ss)", self.settings.release.monitor_interval_s
                )

    async def check_rollback(self) -> dict | None:
        """Roll the challenger back when the rule says so; the verdict, or None without a challenger."""
        plan = self.plan
        if not plan.active or not plan.auto_rollback.enabled:
            return None
        champion = self._counts.get(plan.champion or "", Counts())
        challenger = self._counts.get(plan.challenger or "", Counts())
        decision = verdict(champion, challenger, plan.auto_rollback)
        if not decision["failures"]:
            return decision
        reason = "; ".join(decision["failures"])
        log.warning("auto-rollback of %s v%s: %s", plan.model_name, plan.challenger, reason)
        self._rolled_back.add(plan.challenger or "")
        self._set_plan(plan.with_(challenger=None, share=0.0))  # this server: back to the champion at once
        self.metrics.count_rollback()
        figures = {
            "champion": champion.figures(),
            "challenger": challenger.figures(),
            "min_sample": plan.auto_rollback.min_sample,
        }
        from .release_steps import rollback

        step = await asyncio.to_thread(
            rollback,
            plan.model_name,
            self.settings.release.audit_log,
            reason,
            True,
            figures,
            plan.challenger,
        )
        self.rollbacks.append({"version": plan.challenger, "reason": reason, "recorded": step is not None})
        return decision

    # ------------------------------------------------------------------ status
    async def status(self) -> dict:
        status = await self.roles["champion"].status()
        roles = {role: {"loaded": self.loaded(role)} for role in self.roles}
        if self.shadow is not None:
            roles["shadow"] = {"loaded": self.shadow.loaded_version()}
        return {
            **status,
            "release": {
                **self.plan.summary(),
                "roles": roles,
                "plan_error": self.plan_error,
                "counts": self.counts(),
                "shadow_queue": self._queue.qsize() if self._queue is not None else 0,
                "shadow_dropped": self.shadow_dropped,
                "rollbacks": list(self.rollbacks),
            },
        }


def local_router(settings, metrics: Metrics, model_name: str, audit=None) -> ReleaseRouter:
    """The in-process router: champion and challenger batchers, the shadow on its own thread."""
    from .batcher import LocalUnderstander
    from .model_store import ModelHolder

    b = settings.batching
    understanders = {
        "champion": LocalUnderstander(
            ModelHolder.for_role(settings, "champion"), b.max_batch_size, b.max_wait_ms, metrics
        ),
        "challenger": LocalUnderstander(
            ModelHolder.for_role(settings, "challenger"), b.max_batch_size, b.max_wait_ms, RoleGauge(metrics)
        ),
    }
    shadow = LocalShadow(ModelHolder.for_role(settings, "shadow"))
    return ReleaseRouter(settings, understanders, metrics, model_name, shadow=shadow, audit=audit)
