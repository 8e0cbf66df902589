"""End to end: VectorStoreIndex over a persistent, cosine Chroma collection; retrieve, reload, retrieve."""

from __future__ import annotations

from pathlib import Path

import chromadb
import numpy as np
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.schema import MetadataMode
from llama_index.embeddings.kvemb import KVEmbedding
from llama_index.vector_stores.chroma import ChromaVectorStore

from kvemb_rag.embedding_function import KVEmbeddingFunction
from tests.adapter_helpers import tiny_model

MAX_LENGTH = 512

TOPICS = ["a red kite in the wind", "a lost puppy at the farm", "a birthday cake for mom", "a boat on the lake"]


def _story(topic: str, paragraphs: int) -> str:
    body = []
    for p in range(paragraphs):
        body.append(
            f"Once upon a time there was {topic}. On day {p} Lily and Ben went out to see it. "
            f"They laughed and played until the sun went down, and {topic} made them very happy. "
            "Their mom called them home for dinner and they told her everything."
        )
    return "\n\n".join(body)


def _collection(path: Path, model: str) -> chromadb.Collection:
    client = chromadb.PersistentClient(path=str(path))
    # The kvemb function is recorded in the collection configuration (the embedder's identity); LlamaIndex
    # computes and passes the vectors itself, through the same shared engine.
    return client.get_or_create_collection(
        "stories",
        embedding_function=KVEmbeddingFunction(model, max_length=MAX_LENGTH, layers=[3]),
        configuration={"hnsw": {"space": "cosine"}},
    )


def test_vector_store_index_round_trip(tmp_path: Path) -> None:
    model = tiny_model()
    embed_model = KVEmbedding(model_name=model, max_length=MAX_LENGTH, layers=[3])
    documents = [
        Document(text=_story(topic, 12), metadata={"topic": topic}, id_=f"story-{i}")
        for i, topic in enumerate(TOPICS)
    ]
    assert all(embed_model.count_tokens(d.text) > MAX_LENGTH for d in documents)  # long: must be split

    nodes = embed_model.node_parser(chunk_overlap=16).get_nodes_from_documents(documents)
    assert len(nodes) > len(documents)
    sizes = [embed_model.count_tokens(n.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]
    assert max(sizes) <= MAX_LENGTH, sizes

    store_dir = tmp_path / "chroma"
    collection = _collection(store_dir, model)
    assert collection.configuration_json["hnsw"]["space"] == "cosine"
    assert collection.configuration_json["embedding_function"]["name"] == "kvemb"
    storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
    index = VectorStoreIndex(nodes, storage_context=storage, embed_model=embed_model)
    assert collection.count() == len(nodes)

    # What Chroma holds is the engine's document-side vector of each node's embed text.
    stored = collection.get(ids=[nodes[0].node_id], include=["embeddings"])["embeddings"]
    assert stored is not None
    expected = embed_model.engine.encode_document(nodes[0].get_content(metadata_mode=MetadataMode.EMBED))
    np.testing.assert_allclose(stored[0], expected, atol=1e-5)

    question = "Who made the birthday cake?"
    before = index.as_retriever(similarity_top_k=3).retrieve(question)
    assert len(before) == 3
    assert {hit.node.metadata["topic"] for hit in before} <= set(TOPICS)
    del index, storage, collection

    # Reload from disk with new client, store, index and embedding objects.
    reopened = chromadb.PersistentClient(path=str(store_dir)).get_collection("stories")
    assert reopened.count() == len(nodes)
    index = VectorStoreIndex.from_vector_store(
        ChromaVectorStore(chroma_collection=reopened),
        embed_model=KVEmbedding(model_name=model, max_length=MAX_LENGTH, layers=[3]),
    )
    after = index.as_retriever(similarity_top_k=3).retrieve(question)
    assert [h.node.node_id for h in after] == [h.node.node_id for h in before]
    assert [h.score for h in after] == [h.score for h in before]
    assert after[0].node.get_content() == before[0].node.get_content()
