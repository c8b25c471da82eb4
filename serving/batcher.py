"""The in-process understander: a model holder, a request batcher and one inference thread.

Requests wait on an ``asyncio`` queue; a batching task takes what is waiting (up
to ``max_batch_size``, giving the first one ``max_wait_ms`` to get company) and
runs one ``understand_batch`` in a single worker thread, so the event loop never
blocks on a forward pass, and the tokenizers and torch never see two batches at
once. While a batch runs, the next one gathers: under load, batches grow by themselves.
The first request of a batch waits for company only while other HTTP requests are in flight
that have not reached the batcher yet (so a lone request never waits). Each batch takes
``holder.current`` once, so a hot swap never splits a batch. When a batch's forward pass raises, its items
are run again one by one (``understand_each``): an item the model cannot take fails
alone, with a 500, and the others in its batch get their answers.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from .metrics import Metrics
from .model_store import ModelHolder
from .understanding import TurnInput, understand_batch

log = logging.getLogger("findial.serving")


class ModelNotReady(RuntimeError):
    """No model is loaded yet (or none could be)."""


def understand_each(pipeline, items: list[TurnInput]) -> list:
    """``understand_batch``; when the batch raises, each item on its own: a result or the exception, per item."""
    try:
        return understand_batch(pipeline, items)
    except Exception as exc:
        if len(items) == 1:
            return [exc]
        log.warning(
            "inference failed on a batch of %d (%s): running its items one by one", len(items), type(exc).__name__
        )
    out: list[dict | Exception] = []
    for item in items:
        try:
            out.append(understand_batch(pipeline, [item])[0])
        except Exception as exc:
            log.error("inference failed on an item: %s", type(exc).__name__, exc_info=exc)
            out.append(exc)
    return out


class LocalUnderstander:
    def __init__(
        self, holder: ModelHolder, max_batch_size: int = 16, max_wait_ms: float = 2.0, metrics: Metrics | None = None
    ):
        self.holder = holder
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="findial-infer")
        self._outstanding = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="findial-batcher")
        self.holder.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)
        await asyncio.to_thread(self.holder.stop)

    async def status(self) -> dict:
        return {"ready": self.holder.current is not None, **self.holder.info()}

    def _started_queue(self) -> asyncio.Queue:
        if self._queue is None:
            raise RuntimeError("LocalUnderstander is not started (await start() first)")
        return self._queue

    async def understand(self, item: TurnInput) -> tuple[dict, dict]:
        """(result, model info) for one turn; raises ModelNotReady when no model is loaded."""
        if self.holder.current is None:
            raise ModelNotReady(self.holder.last_error or "the model is still loading")
        fut = asyncio.get_running_loop().create_future()
        self._outstanding += 1
        try:
            await self._started_queue().put((item, fut))
            return await fut
        finally:
            self._outstanding -= 1

    def _arriving(self) -> int:
        """Requests in flight over HTTP that have not reached the batcher yet (an upper bound)."""
        if self.metrics is None:
            return 1  # unknown: wait the full max_wait_ms
        return self.metrics.in_flight - self._outstanding

    async def _gather(self) -> list:
        queue = self._started_queue()
        batch = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self._arriving() <= 0:  # nobody else is coming: no point waiting
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [(item, fut) for item, fut in batch if not fut.done()]  # drop requests whose client went away

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            model = self.holder.current
            try:
                if model is None:
                    raise ModelNotReady(self.holder.last_error or "the model is still loading")
                results = await loop.run_in_executor(
                    self._executor, understand_each, model.pipeline, [item for item, _ in batch]
                )
            except asyncio.CancelledError:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(ModelNotReady("the server is shutting down"))
                raise
            except Exception as exc:  # one bad batch must not stop the loop
                if not isinstance(exc, ModelNotReady):
                    log.exception("inference failed on a batch of %d", len(batch))
                results = [exc] * len(batch)
            if self.metrics and model is not None:
                self.metrics.count_batch(len(batch))
            info = model.info() if model is not None else {}
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result((res, info))
