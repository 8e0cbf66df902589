"""A model-free encoder base for the evaluation tests: it records which side each call asked for."""

from __future__ import annotations

from typing import Any

import numpy as np


class RecordingEncoder:
    """Implements the harness's encoder protocol without a model; subclasses say how texts become vectors.

    ``calls`` holds one ``(side, texts, kwargs)`` per call, ``side`` being ``"query"`` or ``"document"``.
    """

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str], dict[str, Any]]] = []

    def _embed(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_query(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.calls.append(("query", list(texts), kwargs))
        return self._embed(texts)

    def encode_document(self, texts: list[str], **kwargs: Any) -> np.ndarray:
        self.calls.append(("document", list(texts), kwargs))
        return self._embed(texts)
