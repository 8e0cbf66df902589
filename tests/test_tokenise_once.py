"""Tokenise once: on the index path and the serve path, every text reaches the tokenizer once (the tiny model).

The tokenizer is the tiny model's real one, wrapped to record the texts it is called on; the model is real.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.config import Settings

from kvemb_rag import KVEmbedder
from kvemb_rag.engine.loader import load_causal_lm
from kvemb_rag.store import Document, KVStore

SHORT = "The cat sat on the mat. The dog ran fast to catch the red ball."
SENTENCES = [
    "Lily went to the park with her mom.",
    "The dog ran fast to catch the red ball.",
    "Tom was sad because his toy was broken.",
    "Once upon a time there was a little bird.",
]
LONG = "\n\n".join(" ".join(SENTENCES[i:] + SENTENCES[:i]) for i in range(4)) * 3  # several chunks of 64 tokens


class _Counting:
    """Records every call's texts (``calls``); the tokenizer it is mixed into does the work."""

    calls: list[list[str]]

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append([text] if isinstance(text, str) else list(text))
        return super().__call__(text, *args, **kwargs)  # type: ignore[misc]


@pytest.fixture(scope="module")
def counting(tiny_model_path: Path, kvemb_cache_dir: Path) -> KVEmbedder:
    """An embedder on the tiny model whose tokenizer records its calls (``embedder.tokenizer.calls``)."""
    llm, tokenizer = load_causal_lm(str(tiny_model_path))
    tokenizer.__class__ = type("Counting", (_Counting, type(tokenizer)), {})
    tokenizer.calls = []
    embedder = KVEmbedder.from_model(llm, tokenizer, max_length=512, cache_dir=str(kvemb_cache_dir))
    assert isinstance(embedder.tokenizer, _Counting)  # from_model copies the tokenizer, counting included
    return embedder


def _tokenised(embedder: KVEmbedder) -> Counter[str]:
    """How often each text was tokenised since the calls were last cleared."""
    return Counter(text for call in embedder.tokenizer.calls for text in call)


def _stored(path: Path) -> list[tuple[str, np.ndarray]]:
    client = chromadb.PersistentClient(path=str(path), settings=Settings(anonymized_telemetry=False))
    try:
        got = client.get_collection("kvemb", embedding_function=None).get(include=["documents", "embeddings"])
        return [(d, np.asarray(e)) for d, e in zip(got["documents"], got["embeddings"], strict=True)]
    finally:
        client.close()


def test_indexing_tokenises_each_text_once(counting: KVEmbedder, tmp_path: Path) -> None:
    counting.count_tokens("")  # the template's own size: counted once in the embedder's life, not per document
    with KVStore(tmp_path / "db", embedder=counting, chunk_size=64, write_batch_size=4) as store:
        counting.tokenizer.calls.clear()
        summary = store.add_documents([Document("short", SHORT), Document("long", LONG)])
    tokenised = _tokenised(counting)
    assert max(tokenised.values()) == 1, tokenised.most_common(3)  # no text reached the tokenizer twice
    stored = _stored(tmp_path / "db")
    assert len(stored) == summary.chunks_embedded == summary.chunks > 2  # the long document was cut
    chunks = {counting.format(text) for text, _ in stored}
    # Each document's raw text once (its split points' offsets), each chunk's text with its template once (its
    # size is checked on those ids, and they are what is embedded) and nothing else but split candidates that
    # were too long (never embedded): no chunk is tokenised again to be embedded.
    assert chunks | {SHORT, LONG} <= set(tokenised)
    rejected = set(tokenised) - chunks - {SHORT, LONG}
    counting.tokenizer.calls.clear()  # what follows tokenises again, to check
    head, tail = counting.format("\0").split("\0")
    for text in rejected:
        assert text.startswith(head) and text.endswith(tail), text
        assert counting.count_tokens(text[len(head) : len(text) - len(tail)]) > 64, text
    for text, vector in stored:  # the vectors are the engine's for the same chunk texts
        np.testing.assert_allclose(vector, counting.encode_document(text), atol=1e-5)


def test_serving_tokenises_each_input_once(counting: KVEmbedder) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from kvemb_rag.serve import create_app

    texts = ["The cat sat on the mat.", "A boat on the river at night.", "Bread dough rises."]
    with TestClient(create_app(counting, model_name="tiny")) as client:
        counting.tokenizer.calls.clear()
        response = client.post("/v1/embeddings", json={"model": "tiny", "input": texts, "input_type": "query"})
        assert response.status_code == 200, response.text
        # One tokenizer call for the request, each input once with its template: validation counted these ids
        # and the engine embedded them.
        assert counting.tokenizer.calls == [[counting.format(text, "query") for text in texts]]
    body = response.json()
    assert body["usage"]["prompt_tokens"] == sum(counting.count_tokens(text, "query") for text in texts)
    np.testing.assert_allclose([d["embedding"] for d in body["data"]], counting.encode_query(texts), atol=1e-5)
