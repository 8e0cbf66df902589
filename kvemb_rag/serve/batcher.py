"""Dynamic batching: concurrent requests' texts coalesced into engine calls.

Each request puts its texts in one queue (one future per text). A background asyncio task takes the first
waiting text, then collects more for up to ``max_wait_ms`` or until ``max_batch`` texts, groups them by side
(query / document), runs one engine call per side in a single worker thread (torch releases the GIL, so the
event loop keeps accepting requests) and resolves the futures. Texts arriving while the engine runs wait in
the queue and form the next call. Nothing is dropped: every text's future gets its vector or the engine's
exception, and a request gathers its own futures in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kvemb_rag.errors import ConfigError

__all__ = ["BatcherStats", "MicroBatcher"]

logger = logging.getLogger(__name__)

#: ``encode(texts, side) -> (len(texts), dim)`` float32 array; ``side`` is ``"query"`` or ``"document"``.
EncodeFn = Callable[[list[str], str], np.ndarray]


@dataclass
class BatcherStats:
    """Counts since start: engine calls and texts embedded (texts / calls = the mean batch)."""

    calls: int = 0
    texts: int = 0


@dataclass
class _Item:
    text: str
    side: str
    future: asyncio.Future[np.ndarray]


class MicroBatcher:
    """Coalesces concurrent embedding requests into engine batches.

    Args:
        encode: The engine call (runs in the batcher's one worker thread, never concurrently).
        max_batch: Most texts per engine call.
        max_wait_ms: Longest wait for more texts after the first one arrives.

    Example:
        >>> encode = lambda texts, side: emb.encode(texts, prompt_name=side)  # doctest: +SKIP
        >>> batcher = MicroBatcher(encode, max_batch=64, max_wait_ms=5)  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> vectors = await batcher.embed(["a text"], "document")  # (1, dim)  # doctest: +SKIP
    """

    def __init__(self, encode: EncodeFn, *, max_batch: int = 64, max_wait_ms: float = 5.0) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ConfigError(f"max_batch must be an int >= 1; got {max_batch!r}.")
        if not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0; got {max_wait_ms!r}.")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the background task is running."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the background task on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvemb-engine")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kvemb-batcher")

    async def close(self) -> None:
        """Stop the task; texts still waiting get a ``RuntimeError`` (the server is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if not item.future.done():
                    item.future.set_exception(RuntimeError("The embedding server is shutting down."))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def embed(self, texts: Sequence[str], side: str) -> np.ndarray:
        """Embed ``texts`` on ``side``; returns ``(len(texts), dim)`` rows in the order given.

        Raises:
            RuntimeError: The batcher is not running.
            Exception: Whatever the engine raised for the batch these texts were in.
        """
        if self._queue is None or not self.running:
            raise RuntimeError("The batcher is not running; call `await batcher.start()` first.")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        for text in texts:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.put_nowait(_Item(text, side, future))
            futures.append(future)
        rows = await asyncio.gather(*futures)
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    async def _collect(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return [item for item in batch if not item.future.done()]  # a cancelled request's texts are skipped

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = await self._collect(self._queue)
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("The embedding server is shutting down."))
                raise

    async def _process(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        sides: dict[str, list[_Item]] = {}
        for item in batch:
            sides.setdefault(item.side, []).append(item)
        for side, items in sides.items():
            texts = [item.text for item in items]
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts, side)
            except Exception as exc:
                logger.exception("Engine call on %d %s text(s) failed", len(texts), side)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            self.stats.calls += 1
            self.stats.texts += len(texts)
            for item, vector in zip(items, vectors, strict=True):
                if not item.future.done():
                    item.future.set_result(vector)
