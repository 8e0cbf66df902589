"""The FastAPI application: OpenAI's embeddings API in front of one loaded :class:`~kvemb_rag.KVEmbedder`.

Routes: ``POST /v1/embeddings``, ``GET /v1/models``, ``GET /v1/models/{model}``, and, without the key,
``GET /health`` and ``GET /metrics`` (Prometheus). Every error is answered in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) and the server keeps serving. At most
``max_concurrent_requests`` embeddings requests are admitted at once; one more gets 429 with ``Retry-After``
(:class:`~kvemb_rag.serve.metrics.Admission`).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvemb_rag.errors import ConfigError
from kvemb_rag.serve.batcher import MicroBatcher
from kvemb_rag.serve.config import ServeLimits
from kvemb_rag.serve.metrics import Admission, ServerMetrics, render_metrics
from kvemb_rag.serve.schema import APIError, EmbeddingRequest, check_inputs, error_body

if TYPE_CHECKING:
    from kvemb_rag.engine.embedder import KVEmbedder
    from kvemb_rag.engine.inputs import TokenizedText

__all__ = ["create_app", "run_server"]

logger = logging.getLogger(__name__)


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """One readable message (and the field) from FastAPI's validation errors."""
    errors = exc.errors()
    if not errors:
        return "Invalid request body.", None
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = loc[0] if loc else None
    if first.get("type") == "json_invalid":
        return 'The request body is not valid JSON; send a JSON object such as {"model": ..., "input": ...}.', None
    given = first.get("input")
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')} (got {given!r:.60}).", param


class _Service:
    """What the routes need: the engine behind a micro-batcher, the served name, the limits and the key."""

    def __init__(self, embedder: KVEmbedder, name: str, api_key: str | None, limits: ServeLimits) -> None:
        self.embedder = embedder
        self.name = name
        self.dim = embedder.dim
        self.api_key = api_key
        self.limits = limits
        self.metrics = ServerMetrics(waiting=lambda: self.batcher.waiting)
        self.batcher: MicroBatcher[TokenizedText] = MicroBatcher(
            self._encode,
            max_batch=limits.max_batch,
            max_wait_ms=limits.max_wait_ms,
            max_batch_tokens=limits.max_batch_tokens,
            observe=self.metrics.observe_batch,
        )
        self.tokens = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvemb-tokens")
        self.model_card = {"id": name, "object": "model", "created": int(time.time()), "owned_by": "kvemb-rag"}

    def _encode(self, inputs: list[TokenizedText], side: str) -> np.ndarray:
        # The ids the request's validation made: nothing is tokenised again. (n, dim) float32, unit rows.
        return self.embedder.encode_tokenized(inputs, show_progress_bar=False)

    async def authorize(self, request: Request) -> None:
        """Refuse a ``/v1`` request without the server's key (when it has one)."""
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not given.strip():
            raise APIError(
                401,
                "Missing API key: send the header 'Authorization: Bearer <key>' (the server was started with "
                "--api-key; the openai client sends api_key=... this way).",
                code="invalid_api_key",
                type="authentication_error",
            )
        if not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided.", code="invalid_api_key", type="authentication_error")

    def check_model(self, model: str, *, listed: bool) -> None:
        """Refuse a model name this server does not serve (404, as OpenAI)."""
        if model == self.name:
            return
        message = (
            f"The model {model!r} does not exist; this server serves {self.name!r}."
            if listed
            else f"The model {model!r} does not exist on this server; it serves {self.name!r} (GET /v1/models). "
            f"Pass model={self.name!r}."
        )
        raise APIError(
            404,
            message,
            param="model",
            code="model_not_found",
        )

    async def embed(self, body: EmbeddingRequest) -> dict[str, Any]:
        """The response body of ``POST /v1/embeddings``."""
        self.check_model(body.model, listed=False)
        if body.dimensions is not None and body.dimensions != self.dim:
            raise APIError(
                400,
                f"dimensions={body.dimensions} is not available: {self.name!r} gives {self.dim}-dimensional vectors "
                f"and this server does not shorten them; omit 'dimensions' or pass {self.dim}.",
                param="dimensions",
                code="unsupported_dimensions",
            )
        limit = self.limits.max_tokens_per_input
        texts = check_inputs(body.input, max_inputs=self.limits.max_inputs)
        side = body.input_type or "document"
        inputs = await asyncio.get_running_loop().run_in_executor(self.tokens, self.embedder.tokenize, texts, side)
        counts = [len(item.ids) for item in inputs]  # with the template, special tokens included
        too_long = [(i, n) for i, n in enumerate(counts) if n > limit]
        if too_long:
            i, n = too_long[0]
            others = f" ({len(too_long) - 1} more inputs are too long as well)" if len(too_long) > 1 else ""
            raise APIError(
                400,
                f"input[{i}] has {n} tokens (with its {side} template); the limit is {limit} tokens per input "
                f"(--max-tokens-per-input){others}. Inputs are never truncated: shorten or split it (whole "
                "documents belong to `kvemb index`, which chunks them).",
                param="input",
                code="input_too_long",
            )
        vectors = await self.batcher.embed(inputs, side, counts)  # (n, dim); the counts fill the token budget
        if body.encoding_format == "base64":
            encoded: list[Any] = [
                base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii") for v in vectors
            ]
        else:
            encoded = [v.tolist() for v in vectors]
        total = sum(counts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
            "model": self.name,
            "usage": {"prompt_tokens": total, "total_tokens": total},
        }


def _answer_errors_as_openai(app: FastAPI) -> None:
    """Every error in OpenAI's ``{"error": {...}}`` shape, the server kept serving."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return _json(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        return _json(error_body(message, param=param, code="invalid_value"), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            path = request.url.path
            message = f"No route {request.method} {path}; this server has POST /v1/embeddings and GET /v1/models."
        else:
            message = str(exc.detail)
        return _json(error_body(message, code=None), exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        logger.exception("Request %s %s failed", request.method, request.url.path)
        body = error_body(f"Internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")
        return JSONResponse(body, status_code=500)


def create_app(
    embedder: KVEmbedder,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
) -> FastAPI:
    """An OpenAI-compatible embedding API serving ``embedder``.

    Args:
        embedder: The loaded engine; every request's texts are tokenised once with it (``tokenize``, which
            the limits are checked on) and embedded from those ids (``encode_tokenized``, unit float32 vectors),
            through a :class:`~kvemb_rag.serve.batcher.MicroBatcher`.
        model_name: The name requests must give as ``model`` (and ``/v1/models`` lists); default the
            embedder's model argument (e.g. ``"smollm2-135m-instruct"``).
        api_key: When set, every ``/v1`` request needs ``Authorization: Bearer <api_key>`` (else 401).
        limits: Request limits, admission and batching; default :class:`ServeLimits()`.

    Returns:
        The application (serve it with uvicorn, or :func:`run_server`).
    """
    limits = limits or ServeLimits()
    name = model_name or embedder.config.model
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model_name must be a non-empty str; got {model_name!r}.")
    if api_key is not None and not api_key:
        raise ConfigError("api_key is empty; give a non-empty key, or None for no authentication.")
    service = _Service(embedder, name, api_key, limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.batcher.start()
        logger.info("Serving %s (%d dimensions) as %r", embedder, service.dim, name)
        try:
            yield
        finally:
            await service.batcher.close()
            service.tokens.shutdown(wait=False)

    app = FastAPI(title="kvemb-rag embeddings", summary="OpenAI-compatible KV-Embedding API", lifespan=lifespan)
    app.state.batcher = service.batcher
    app.state.metrics = service.metrics
    app.state.model_name = name
    app.state.limits = limits
    _answer_errors_as_openai(app)
    app.add_middleware(Admission, limit=limits.max_concurrent_requests, metrics=service.metrics)
    keyed = [Depends(service.authorize)]

    @app.get("/health")
    async def health() -> Response:
        return _json({"status": "ok", "model": name, "dimensions": service.dim})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        body, content_type = render_metrics(service.metrics, request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> Response:
        return _json({"object": "list", "data": [service.model_card]})

    @app.get("/v1/models/{model:path}", dependencies=keyed)
    async def model(model: str) -> Response:
        service.check_model(model, listed=True)
        return _json(service.model_card)

    @app.post("/v1/embeddings", dependencies=keyed)
    async def embeddings(body: EmbeddingRequest) -> Response:
        return _json(await service.embed(body))

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_server(
    embedder: KVEmbedder,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    api_key: str | None = None,
    limits: ServeLimits | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``embedder`` with uvicorn until interrupted (one process, the model loaded once).

    Args:
        embedder: The loaded engine.
        host: Interface to bind; the loopback interface unless told otherwise.
        port: TCP port.
        model_name: As in :func:`create_app`.
        api_key: As in :func:`create_app`.
        limits: As in :func:`create_app`.
        log_level: uvicorn's log level.
    """
    import uvicorn

    if not _is_loopback(host) and api_key is None:
        logger.warning("Serving on %s without --api-key: anyone who can reach this address can use the model.", host)
    app = create_app(embedder, model_name=model_name, api_key=api_key, limits=limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
