"""The embedding server's limits and batching settings."""

from __future__ import annotations

from dataclasses import dataclass

from kvemb_rag.errors import ConfigError

__all__ = ["ServeLimits"]


@dataclass(frozen=True)
class ServeLimits:
    """Request limits, admission and dynamic-batching settings of :func:`kvemb_rag.serve.create_app`.

    Attributes:
        max_inputs: Most strings in one request (OpenAI: 2,048).
        max_tokens_per_input: Most tokens of one input, counted as the engine counts them (the text inside
            its template, special tokens included); longer inputs are refused, never truncated (OpenAI:
            8,192). Whole documents belong to ``kvemb index``, which chunks them.
        max_batch: Most texts in one engine call (a cap on top of ``max_batch_tokens``, which is what bounds
            a call of mixed lengths; this one bounds a call of many short texts).
        max_wait_ms: How long the batcher waits for more texts after the first one arrives before it runs
            the engine (requests arriving while the engine runs join the next call without waiting).
        max_batch_tokens: Token budget of one engine call (text-embeddings-inference's
            ``--max-batch-tokens``, same default): queued texts are collected, in arrival order, while the
            sum of their token counts stays within it. A single text larger than the budget runs alone; it is
            never refused or truncated for that.
        max_concurrent_requests: Most ``POST /v1/embeddings`` requests admitted and not yet answered
            (text-embeddings-inference's ``--max-concurrent-requests``, same default); one more is answered
            429 with ``Retry-After`` before its body is read. Admitted requests always get an answer.

    Raises:
        ConfigError: A limit that is not a positive int, or a wait outside [0, 10000] ms (a ``ValueError``).
    """

    max_inputs: int = 2048
    max_tokens_per_input: int = 8192
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512

    def __post_init__(self) -> None:
        hints = {
            "max_batch_tokens": " (tokens per engine call; text-embeddings-inference's default is 16384)",
            "max_concurrent_requests": " (requests admitted at once; text-embeddings-inference's default is 512)",
        }
        names = ("max_inputs", "max_tokens_per_input", "max_batch", "max_batch_tokens", "max_concurrent_requests")
        for name in names:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"ServeLimits.{name} must be an int >= 1; got {value!r}{hints.get(name, '')}.")
        wait = self.max_wait_ms
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 10_000:
            raise ConfigError(
                f"ServeLimits.max_wait_ms must be a number of milliseconds in [0, 10000]; got {wait!r} "
                "(a few ms is typical: 0 runs each engine call as soon as the previous one ends)."
            )
