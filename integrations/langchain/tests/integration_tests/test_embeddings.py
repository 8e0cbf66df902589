"""LangChain's standard integration tests for KVEmbeddings on a real tiny model, plus adapter checks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from langchain_kvemb import KVEmbeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from tests.adapter_helpers import ADAPTER_SETTINGS, record_engine_threads, tiny_model


class TestKVEmbeddingsStandard(EmbeddingsIntegrationTests):
    embeddings_class = KVEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": tiny_model(), **ADAPTER_SETTINGS}  # the suite skips without ../shared


@pytest.fixture
def embeddings() -> KVEmbeddings:
    return KVEmbeddings(model=tiny_model(), **ADAPTER_SETTINGS)


def test_vectors_are_python_floats_and_unit_length(embeddings: KVEmbeddings) -> None:
    vectors = embeddings.embed_documents(["The cat sat on the mat.", "A dog ran in the park."])
    assert len(vectors) == 2
    assert all(type(x) is float for row in vectors for x in row)
    assert len(vectors[0]) == embeddings.engine.dim
    np.testing.assert_allclose(np.linalg.norm(np.array(vectors), axis=1), 1.0, atol=1e-5)


def test_query_and_document_sides_use_the_engine_templates(embeddings: KVEmbeddings) -> None:
    text = "Where did the little bird fly?"
    engine = embeddings.engine
    query = embeddings.embed_query(text)
    document = embeddings.embed_documents([text])[0]
    np.testing.assert_allclose(query, engine.encode_query(text), atol=1e-6)
    np.testing.assert_allclose(document, engine.encode_document(text), atol=1e-6)
    assert not np.allclose(query, document)


def test_long_text_gives_one_vector(embeddings: KVEmbeddings) -> None:
    long_text = " ".join(f"Lily found {i} red shells on the beach and gave them to her mom." for i in range(200))
    assert embeddings.engine.count_tokens(long_text) > 512
    vectors = embeddings.embed_documents([long_text, "short"])
    assert len(vectors) == 2
    assert len(vectors[0]) == len(vectors[1])
    np.testing.assert_allclose(vectors[0], embeddings.engine.encode_document(long_text), atol=1e-6)


def test_errors_name_the_bad_input(embeddings: KVEmbeddings) -> None:
    with pytest.raises(ValueError, match=r"\[1\]"):
        embeddings.embed_documents(["fine", "   "])
    with pytest.raises(TypeError, match="str"):
        embeddings.embed_query(42)  # type: ignore[arg-type]


def test_async_runs_off_the_event_loop(embeddings: KVEmbeddings, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = record_engine_threads(embeddings.engine, monkeypatch)

    async def main() -> tuple[list[list[float]], list[float], int]:
        loop_thread = threading.get_ident()
        docs, query = await asyncio.gather(
            embeddings.aembed_documents(["one fish", "two fish"]), embeddings.aembed_query("red fish")
        )
        return docs, query, loop_thread

    docs, query, loop_thread = asyncio.run(main())
    assert len(docs) == 2 and len(query) == len(docs[0])
    assert len(threads) == 2
    assert loop_thread not in threads
    np.testing.assert_allclose(docs, embeddings.embed_documents(["one fish", "two fish"]), atol=1e-6)


def test_settings_change_switches_engine(embeddings: KVEmbeddings) -> None:
    # The adapter follows its fields: a changed setting embeds through an engine with that setting. (That
    # engines of one model share its weights is tests/test_model_sharing.py's concern.)
    before = embeddings.embed_query("hello")
    first = embeddings.engine
    embeddings.strategy = "kv-ablation"
    second = embeddings.engine
    assert second is not first
    assert second.strategy == "kv-ablation"
    after = embeddings.embed_query("hello")
    np.testing.assert_allclose(after, second.encode_query("hello"), atol=1e-6)
    assert not np.allclose(after, before)
