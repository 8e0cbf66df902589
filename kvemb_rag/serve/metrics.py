"""Load control and observability: admission of ``POST /v1/embeddings`` (429 when full) and ``GET /metrics``.

:class:`Admission` is a pure ASGI middleware: it decides before the request body is read (so before any JSON
parsing, tokenisation or engine work) whether one more embeddings request fits under
``max_concurrent_requests``; when it does not, the answer is 429 with ``Retry-After`` and OpenAI's error body.
An admitted request holds its slot until its response is handed over (released in a ``finally`` too).

:class:`ServerMetrics` holds one app's Prometheus metrics in its own ``CollectorRegistry`` (never the global
one, so several apps in one process do not collide); ``GET /metrics`` renders them in the text format the
scraper asks for.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from kvemb_rag.serve.schema import error_body

__all__ = ["Admission", "ServerMetrics", "render_metrics"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Seconds a refused client is told to wait (``Retry-After``): about one engine call on a busy server.
RETRY_AFTER_S = 1
#: Engine-call sizes in tokens: powers of two up to 2**17 (above the default 16,384-token budget).
TOKEN_BUCKETS = tuple(float(2**k) for k in range(4, 18))
#: Request latency in seconds, from a short text on a GPU to a queue of long ones on a CPU.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    """One app's Prometheus metrics (names prefixed ``kvemb_``) in a registry of its own.

    Attributes:
        registry: The app's ``CollectorRegistry`` (``GET /metrics`` renders it).
        queue_texts: Gauge: texts waiting for an engine call (read at scrape time from the batcher).
        in_flight: Gauge: embeddings requests admitted and not yet answered.
        batch_tokens: Histogram: tokens per engine call.
        embedded_tokens: Counter ``kvemb_embedded_tokens_total``: tokens embedded (``rate()`` of it is tokens/s).
        request_seconds: Histogram: latency of embeddings requests answered 200, admission to response.
        responses: Counter ``kvemb_responses_total{code, class}``: ``/v1`` responses by status.
        rejected: Counter ``kvemb_rejected_requests_total``: embeddings requests refused with 429.
    """

    def __init__(self, waiting: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.queue_texts = Gauge("kvemb_queue_texts", "Texts waiting for an engine call.", registry=registry)
        self.queue_texts.set_function(waiting)
        self.in_flight = Gauge(
            "kvemb_requests_in_flight", "POST /v1/embeddings requests admitted and not yet answered.", registry=registry
        )
        self.batch_tokens = Histogram(
            "kvemb_batch_tokens", "Tokens per engine call (templates included).", buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.embedded_tokens = Counter(
            "kvemb_embedded_tokens", "Tokens embedded (templates included); tokens/s is rate() of it.",
            registry=registry,
        )
        self.request_seconds = Histogram(
            "kvemb_request_duration_seconds",
            "Latency of POST /v1/embeddings requests answered 200, from admission to the response sent.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.responses = Counter(
            "kvemb_responses", "Responses to /v1 requests by HTTP status.", ["code", "class"], registry=registry
        )
        self.rejected = Counter(
            "kvemb_rejected_requests",
            "POST /v1/embeddings requests refused with 429 (--max-concurrent-requests reached).",
            registry=registry,
        )

    def observe_batch(self, texts: int, tokens: int, seconds: float) -> None:
        """After an engine call: its token count (the batcher's ``observe`` hook)."""
        self.batch_tokens.observe(tokens)
        self.embedded_tokens.inc(tokens)

    def count_response(self, status: int) -> None:
        """One ``/v1`` response with HTTP ``status``."""
        self.responses.labels(code=str(status), **{"class": f"{status // 100}xx"}).inc()


def render_metrics(metrics: ServerMetrics, accept: str) -> tuple[bytes, str]:
    """The registry in the exposition format ``accept`` asks for (Prometheus text by default).

    Returns:
        ``(body, content_type)``.
    """
    encoder, content_type = choose_encoder(accept)
    return encoder(metrics.registry), content_type


class Admission:
    """ASGI middleware: at most ``limit`` ``POST /v1/embeddings`` requests admitted at once, 429 beyond.

    Args:
        app: The wrapped ASGI application.
        limit: ``max_concurrent_requests``.
        metrics: Where the in-flight gauge, rejections, statuses and latencies are counted.

    The decision reads one counter on the event loop's thread (no ``await`` between the check and the
    increment), so it needs no lock. The slot is released as the response's last bytes are handed over, and in
    a ``finally`` whatever else happens (an error, a client gone), once.
    """

    PATH = "/v1/embeddings"

    def __init__(self, app: ASGIApp, *, limit: int, metrics: ServerMetrics) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Admit (or refuse) an embeddings request; count every ``/v1`` response; pass the rest through."""
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        guarded = scope["path"] == self.PATH and scope.get("method") == "POST"
        if guarded and self.in_flight >= self.limit:
            self.metrics.rejected.inc()
            self.metrics.count_response(429)
            await self._refuse(send)
            return
        status = 500  # what the client gets if the application raises past its handlers
        counted = released = False
        started = time.perf_counter()

        def release() -> None:
            nonlocal released
            if guarded and not released:
                released = True
                self.in_flight -= 1
                self.metrics.in_flight.dec()

        async def send_counted(message: Message) -> None:
            # Counted before the last bytes go out, so a client that has its answer sees it in /metrics.
            nonlocal status, counted
            if message["type"] == "http.response.start":
                status, counted = int(message["status"]), True
                self.metrics.count_response(status)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                if guarded and status == 200:
                    self.metrics.request_seconds.observe(time.perf_counter() - started)
                release()
            await send(message)

        if guarded:
            self.in_flight += 1
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_counted)
        finally:
            release()  # whatever happened (an error, a client gone), the slot is given back once
            if not counted:
                self.metrics.count_response(status)

    async def _refuse(self, send: Send) -> None:
        message = (
            f"The server is busy: {self.limit} embedding requests are in flight, its limit "
            f"(--max-concurrent-requests). Retry after {RETRY_AFTER_S} s (the Retry-After header; the openai "
            "client does so by itself when max_retries > 0), send fewer requests at once, or raise the limit."
        )
        body = json.dumps(
            error_body(message, code="server_overloaded", type="rate_limit_error"), separators=(",", ":")
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(RETRY_AFTER_S).encode()),
        ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})
