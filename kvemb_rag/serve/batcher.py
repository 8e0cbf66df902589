"""Dynamic batching by a token budget: concurrent requests' texts coalesced into engine calls.

Each request puts its texts in one FIFO queue (one future per text, with the token count the request's
validation already made). The batcher never tokenises: it hands the engine each text as the request queued it,
which in the server is the token ids its validation made, so a text is tokenised once. A background asyncio
task takes the first waiting text, then collects more, in arrival order, for up to ``max_wait_ms`` while the
sum of their token counts stays within ``max_batch_tokens`` (and the call holds at most ``max_batch`` texts);
the first text that would overflow the budget stays at the head of the queue and starts the next call, so no
text is overtaken and none starves. A single text larger than the budget runs alone: it is never refused or
truncated for that. The collected texts are grouped by side (query / document), one engine call per side runs
in a single worker thread (torch releases the GIL, so the event loop keeps accepting requests) and the futures
are resolved. Texts arriving while the engine runs wait in the queue and form the next call. Nothing is
dropped: every text's future gets its vector or the engine's exception, and a request gathers its own futures
in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from kvemb_rag.errors import ConfigError

__all__ = ["BatchObserver", "BatcherStats", "MicroBatcher"]

logger = logging.getLogger(__name__)

#: What a request queues for one text: the text, or what the engine embeds of it (the server: its token ids).
Input = TypeVar("Input")
#: ``encode(inputs, side) -> (len(inputs), dim)`` float32 array; ``side`` is ``"query"`` or ``"document"``.
EncodeFn = Callable[[list[Input], str], np.ndarray]
#: ``observe(texts, tokens, seconds)`` after each successful engine call (on the event loop's thread).
BatchObserver = Callable[[int, int, float], None]


@dataclass
class BatcherStats:
    """Counts since start: engine calls, texts and tokens embedded (texts / calls = the mean batch)."""

    calls: int = 0
    texts: int = 0
    tokens: int = 0


@dataclass
class _Item(Generic[Input]):
    input: Input
    side: str
    tokens: int
    future: asyncio.Future[np.ndarray]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1; got {value!r}.")
    return value


class MicroBatcher(Generic[Input]):
    """Coalesces concurrent embedding requests into engine calls of at most ``max_batch_tokens`` tokens.

    Args:
        encode: The engine call on a list of queued inputs and their side (runs in the batcher's one worker
            thread, never concurrently).
        max_batch: Most texts per engine call.
        max_wait_ms: Longest wait for more texts after the first one arrives.
        max_batch_tokens: Token budget per engine call; a single larger text runs alone.
        observe: Called after each successful engine call with its texts, tokens and seconds (metrics).

    Example:
        >>> encode = lambda inputs, side: emb.encode_tokenized(inputs)  # doctest: +SKIP
        >>> batcher = MicroBatcher(encode, max_batch_tokens=16384, max_wait_ms=5)  # doctest: +SKIP
        >>> await batcher.start()  # doctest: +SKIP
        >>> inputs = emb.tokenize(["a text"], "document")  # doctest: +SKIP
        >>> vectors = await batcher.embed(inputs, "document", [len(t.ids) for t in inputs])  # doctest: +SKIP
    """

    def __init__(
        self,
        encode: EncodeFn[Input],
        *,
        max_batch: int = 64,
        max_wait_ms: float = 5.0,
        max_batch_tokens: int = 16384,
        observe: BatchObserver | None = None,
    ) -> None:
        self.max_batch = _positive_int("max_batch", max_batch)
        self.max_batch_tokens = _positive_int("max_batch_tokens", max_batch_tokens)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or not max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be a number >= 0; got {max_wait_ms!r}.")
        self._encode = encode
        self._observe = observe
        self.max_wait = max_wait_ms / 1000.0
        self.stats = BatcherStats()
        self._waiting: deque[_Item[Input]] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        """Whether the background task is running."""
        return self._task is not None and not self._task.done()

    @property
    def waiting(self) -> int:
        """Texts queued for a later engine call (not those of the call running now)."""
        return len(self._waiting)

    async def start(self) -> None:
        """Start the background task on the running event loop."""
        if self.running:
            return
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvemb-engine")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="kvemb-batcher")

    async def close(self) -> None:
        """Stop the task; texts still waiting get a ``RuntimeError`` (the server is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._waiting:
            item = self._waiting.popleft()
            if not item.future.done():
                item.future.set_exception(RuntimeError("The embedding server is shutting down."))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def embed(self, texts: Sequence[Input], side: str, tokens: Sequence[int]) -> np.ndarray:
        """Embed ``texts`` on ``side``; returns ``(len(texts), dim)`` rows in the order given.

        Args:
            texts: The inputs, one per text, as ``encode`` takes them (the server: tokenised texts).
            side: ``"query"`` or ``"document"``.
            tokens: Each text's token count with its template (what the request's validation counted): the
                batcher fills engine calls up to ``max_batch_tokens`` with these, it does not tokenise.

        Raises:
            RuntimeError: The batcher is not running.
            ValueError: ``tokens`` does not hold one positive count per text.
            Exception: Whatever the engine raised for the call these texts were in.
        """
        if self._arrived is None or not self.running:
            raise RuntimeError("The batcher is not running; call `await batcher.start()` first.")
        if len(tokens) != len(texts) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in tokens):
            raise ValueError(
                f"tokens must hold one int >= 1 per text ({len(texts)} texts); got {list(tokens)[:8]!r}"
                f"{'...' if len(tokens) > 8 else ''} ({len(tokens)} counts)."
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[np.ndarray]] = []
        for text, count in zip(texts, tokens, strict=True):
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._waiting.append(_Item(text, side, count, future))
            futures.append(future)
        self._arrived.set()
        rows = await asyncio.gather(*futures)
        return np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)

    def _head(self) -> _Item[Input] | None:
        """The first queued text whose request still waits (a cancelled request's texts are dropped)."""
        while self._waiting and self._waiting[0].future.done():
            self._waiting.popleft()
        return self._waiting[0] if self._waiting else None

    async def _next_arrival(self, timeout: float | None) -> bool:
        """Wait for ``embed`` to queue something; False when ``timeout`` seconds passed first."""
        assert self._arrived is not None
        self._arrived.clear()
        if timeout is None:
            await self._arrived.wait()
            return True
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _collect(self) -> list[_Item[Input]]:
        """One engine call's texts: FIFO, within the token budget and the text cap (a lone text may exceed it)."""
        loop = asyncio.get_running_loop()
        while (first := self._head()) is None:
            await self._next_arrival(None)
        batch = [self._waiting.popleft()]
        total = first.tokens
        deadline = loop.time() + self.max_wait
        while len(batch) < self.max_batch and total < self.max_batch_tokens:
            head = self._head()
            if head is not None:
                if total + head.tokens > self.max_batch_tokens:
                    break  # it starts the next call; nothing behind it overtakes it
                batch.append(self._waiting.popleft())
                total += head.tokens
                continue
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._next_arrival(remaining):
                break
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._process(batch)
            except asyncio.CancelledError:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(RuntimeError("The embedding server is shutting down."))
                raise

    async def _process(self, batch: list[_Item[Input]]) -> None:
        loop = asyncio.get_running_loop()
        sides: dict[str, list[_Item[Input]]] = {}
        for item in batch:
            sides.setdefault(item.side, []).append(item)
        for side, items in sides.items():
            texts = [item.input for item in items]
            tokens = sum(item.tokens for item in items)
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, texts, side)
            except Exception as exc:
                logger.exception("Engine call on %d %s text(s) (%d tokens) failed", len(texts), side, tokens)
                for item in items:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            seconds = time.perf_counter() - started
            self.stats.calls += 1
            self.stats.texts += len(texts)
            self.stats.tokens += tokens
            if self._observe is not None:
                try:
                    self._observe(len(texts), tokens, seconds)
                except Exception:  # metrics must never cost a request its vectors
                    logger.exception("The batch observer failed")
            for item, vector in zip(items, vectors, strict=True):
                if not item.future.done():
                    item.future.set_result(vector)
