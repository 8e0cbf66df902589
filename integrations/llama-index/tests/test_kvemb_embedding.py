"""KVEmbedding on a real tiny model: sides, batching, async, validation, serialisation, node parser."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.embeddings.kvemb import KVEmbedding
from pydantic import ValidationError

from kvemb_rag.engine.config import SETTINGS, setting_defaults
from tests.adapter_helpers import (
    ADAPTER_SETTINGS,
    BLANK_MODEL,
    INVALID_SETTINGS,
    record_engine_threads,
    record_model_loads,
    tiny_model,
)
from tests.conftest import TINY_MODEL

TEXTS = [
    "Tom the cat liked to sleep in the warm sun.",
    "The big red boat sailed across the blue sea.",
    "Mia baked a cake with her grandma on Sunday.",
    "A little bird built a nest high in the old tree.",
    "The children played with a ball in the park.",
]


@pytest.fixture
def embed_model() -> KVEmbedding:
    return KVEmbedding(model_name=tiny_model(), **ADAPTER_SETTINGS)


def test_class_name_and_base() -> None:
    assert KVEmbedding.class_name() == "KVEmbedding"
    assert issubclass(KVEmbedding, BaseEmbedding)


def test_every_engine_setting_is_a_described_field() -> None:
    spelled = {"model": "model_name", "batch_size": "embed_batch_size"}  # LlamaIndex's names
    ours = [spelled.get(name, name) for name in SETTINGS]
    for name in ours:
        assert KVEmbedding.model_fields[name].description, name
    assert KVEmbedding(model_name=str(TINY_MODEL), embed_batch_size=4, bias=2.0).engine_request() == (
        str(TINY_MODEL),
        {**setting_defaults(), "batch_size": 4, "bias": 2.0},
    )


def test_construction_is_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = record_model_loads(monkeypatch)
    model = KVEmbedding(model_name="nobody/not-a-real-model-for-kvemb-tests")
    assert model.to_dict()["model_name"] == "nobody/not-a-real-model-for-kvemb-tests"  # serialisable unloaded
    assert calls == []


def test_model_name_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVEMB_MODEL", str(TINY_MODEL))
    assert KVEmbedding().model_name == str(TINY_MODEL)
    monkeypatch.delenv("KVEMB_MODEL")
    assert KVEmbedding().model_name == "gemma-3-270m"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        *INVALID_SETTINGS,
        ({"embed_batch_size": 0}, r"batch_size=0 must be an int >= 1\. \(embed_batch_size is the engine's batch_size"),
        ({"model_name": "  "}, BLANK_MODEL),
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    # Construction only: the model is named, never loaded.
    with pytest.raises(ValidationError, match=message):
        KVEmbedding(**{"model_name": str(TINY_MODEL), **ADAPTER_SETTINGS, **kwargs})


def test_query_and_text_sides(embed_model: KVEmbedding) -> None:
    engine = embed_model.engine
    query = embed_model.get_query_embedding(TEXTS[0])
    text = embed_model.get_text_embedding(TEXTS[0])
    assert all(type(x) is float for x in query + text)
    np.testing.assert_allclose(query, engine.encode_query(TEXTS[0]), atol=1e-6)
    np.testing.assert_allclose(text, engine.encode_document(TEXTS[0]), atol=1e-6)
    assert not np.allclose(query, text)


def test_batches_match_single_texts(embed_model: KVEmbedding) -> None:
    embed_model.embed_batch_size = 2
    batch = embed_model.get_text_embedding_batch(TEXTS)
    assert len(batch) == len(TEXTS)
    singles = [embed_model.get_text_embedding(t) for t in TEXTS]
    np.testing.assert_allclose(batch, singles, atol=1e-5)
    assert embed_model._get_text_embeddings([]) == []


def test_async_variants_run_in_a_worker_thread(embed_model: KVEmbedding, monkeypatch: pytest.MonkeyPatch) -> None:
    threads = record_engine_threads(embed_model.engine, monkeypatch)

    async def main() -> tuple[Any, Any, Any, int]:
        results = await asyncio.gather(
            embed_model.aget_query_embedding(TEXTS[1]),
            embed_model.aget_text_embedding(TEXTS[1]),
            embed_model.aget_text_embedding_batch(TEXTS),
        )
        return (*results, threading.get_ident())

    query, text, batch, loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads
    np.testing.assert_allclose(query, embed_model.get_query_embedding(TEXTS[1]), atol=1e-6)
    np.testing.assert_allclose(text, embed_model.get_text_embedding(TEXTS[1]), atol=1e-6)
    np.testing.assert_allclose(batch, embed_model.get_text_embedding_batch(TEXTS), atol=1e-5)


async def test_async_api_under_pytest_asyncio(embed_model: KVEmbedding) -> None:
    vector = await embed_model.aget_query_embedding("where is the ball?")
    assert len(vector) == embed_model.engine.dim


def test_serialisation_round_trip(embed_model: KVEmbedding) -> None:
    data = embed_model.to_dict()
    assert data["class_name"] == "KVEmbedding"
    rebuilt = KVEmbedding.from_dict(data)
    assert rebuilt.model_name == embed_model.model_name and rebuilt.layers == [3]
    np.testing.assert_allclose(rebuilt.get_query_embedding("hi"), embed_model.get_query_embedding("hi"))


def test_node_parser_limits(embed_model: KVEmbedding) -> None:
    limit = embed_model.max_node_tokens()
    overhead = embed_model.count_tokens("")
    assert 0 < limit < 512 - overhead
    assert embed_model.node_parser().chunk_size == limit
    assert embed_model.node_parser(chunk_size=100, chunk_overlap=10).chunk_overlap == 10
    with pytest.raises(ValueError, match="chunk_size"):
        embed_model.node_parser(chunk_size=limit + 1)
    with pytest.raises(ValueError, match="chunk_overlap"):
        embed_model.node_parser(chunk_size=50, chunk_overlap=50)


def test_namespace_package_layout() -> None:
    import llama_index.embeddings.kvemb as package

    root = Path(package.__file__).resolve().parents[2]  # .../llama_index
    assert root.name == "llama_index"
    assert not (root / "__init__.py").exists()
    assert not (root / "embeddings" / "__init__.py").exists()
    assert (root / "embeddings" / "kvemb" / "py.typed").is_file()
    assert sorted(package.__all__) == ["DEFAULT_MODEL", "KVEmbedding"]
