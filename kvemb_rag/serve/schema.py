"""The OpenAI embeddings API's request body and error shape, and the validation of inputs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

__all__ = ["APIError", "EmbeddingRequest", "check_inputs", "error_body"]


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's body, plus the extension ``input_type``.

    Attributes:
        model: Must be the served model's name (``GET /v1/models``).
        input: A string or a list of strings (checked by :func:`check_inputs` for clear errors).
        encoding_format: ``"float"`` (default) or ``"base64"`` (little-endian float32 bytes, what the
            official ``openai`` client asks for by default).
        dimensions: Only the model's own size is valid (vectors are not truncated).
        user: Accepted and ignored.
        input_type: ``"document"`` (default) or ``"query"``: which template wraps the text.
    """

    model_config = ConfigDict(extra="allow")

    model: str
    input: Any = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None
    input_type: Literal["document", "query"] | None = None


class APIError(Exception):
    """A request error answered with OpenAI's error body.

    Args:
        status: HTTP status (400, 401, 404...).
        message: What was given, what is valid, how to fix it.
        param: The request field at fault, if any.
        code: A machine-readable code (e.g. ``"model_not_found"``).
        type: OpenAI's error type.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, param=self.param, code=self.code, type=self.type)


def error_body(
    message: str, *, param: str | None = None, code: str | None = None, type: str = "invalid_request_error"
) -> dict[str, Any]:
    """OpenAI's error response body."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_inputs(value: Any, *, max_inputs: int) -> list[str]:
    """The request's ``input`` as a list of non-empty strings.

    Args:
        value: The ``input`` field as sent.
        max_inputs: The most strings one request may hold.

    Returns:
        The strings, in order (a single string becomes a list of one).

    Raises:
        APIError: A missing or empty input, an empty or whitespace-only string, a non-string item (token-id
            arrays included) or too many items; the message names the index.
    """
    if value is None:
        raise APIError(
            400, "Missing 'input': send a string or a list of strings to embed.", param="input", code="invalid_input"
        )
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise APIError(
            400,
            f"'input' must be a string or a list of strings; got a {type(value).__name__}: {_shown(value)}.",
            param="input",
            code="invalid_input",
        )
    if not texts:
        raise APIError(400, "'input' is an empty list; send at least one string.", param="input", code="empty_input")
    if len(texts) > max_inputs:
        raise APIError(
            400,
            f"'input' has {len(texts)} items; this server accepts at most {max_inputs} per request "
            "(--max-inputs). Split the request.",
            param="input",
            code="too_many_inputs",
        )
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise APIError(
                400,
                f"input[{i}] is a {type(text).__name__} ({_shown(text)}), not a string; this server embeds text "
                "only (token-id arrays are not supported): send strings.",
                param="input",
                code="invalid_input",
            )
        if not text.strip():
            raise APIError(
                400,
                f"input[{i}] is empty or whitespace-only ({text!r}); there is nothing to embed. Remove it.",
                param="input",
                code="empty_input",
            )
    return texts
