"""KVRetriever on a real KVStore (embedded Chroma, the real tiny model): sync, async, modes, metadata, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.retrievers.kvemb import DEFAULT_SIMILARITY_TOP_K, KVRetriever

from kvemb_rag.engine.shared import shared_embedder
from kvemb_rag.errors import ConfigError, InputError
from kvemb_rag.store import DEFAULT_MODE, SEARCH_MODES, Document, Fusion, KVStore
from tests.adapter_helpers import ADAPTER_SETTINGS, record_engine_threads, tiny_model

# Short stories, one document each, and one long story that the store splits into several chunks.
STORIES = {
    "cat": ("Tom the cat liked to sleep in the warm sun by the window.", {"topic": "animals"}),
    "boat": ("The big red boat sailed across the blue sea to the island.", {"topic": "sea"}),
    "cake": ("Mia baked a cake with her grandma on Sunday and it was yummy.", {"topic": "food"}),
    "bird": ("A little bird built a nest high in the old tree.", {"topic": "animals", "tags": ["nest", "tree"]}),
    "park": ("The children played with a ball in the park all day.", {"topic": "play"}),
    # The only document with the word "zeppelin": lexical search finds it exactly.
    "zeppelin": ("Ben saw a silver zeppelin float over the town and waved at it.", {"topic": "sky"}),
}
LONG_ID = "lighthouse"
LONG_TEXT = " ".join(
    f"On day {i} Lily climbed the lighthouse by the sea and counted {i} boats before her mom called her home."
    for i in range(40)
)
QUERY = "Where did the little bird build its nest?"
POSITION_KEYS = ("chunk_index", "start", "end", "mode")


@pytest.fixture(scope="module")
def kv_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVStore]:
    """A real on-disk store with the stories, embedded by the shared tiny-model engine."""
    engine = shared_embedder(tiny_model(), **ADAPTER_SETTINGS)  # skips without ../shared
    store = KVStore(tmp_path_factory.mktemp("kvstore") / "db", collection="retriever-tests", embedder=engine)
    documents = [Document(doc_id, text, meta, "stories") for doc_id, (text, meta) in STORIES.items()]
    documents.append(Document(LONG_ID, LONG_TEXT, {"topic": "sea"}, "stories"))
    store.add_documents(documents)
    assert store.count() > len(documents)  # the long story has several chunks
    yield store
    store.close()


def _summary(results: list[NodeWithScore]) -> list[tuple[str, str, dict[str, Any], float | None]]:
    return [(r.node.node_id, r.node.get_content(), r.node.metadata, r.score) for r in results]


def test_retrieve_returns_distinct_documents_by_default(kv_store: KVStore) -> None:
    retriever = KVRetriever(kv_store)
    settings = (retriever.similarity_top_k, retriever.mode, retriever.per_document, retriever.where, retriever.fusion)
    assert settings == (4, None, True, None, None)
    results = retriever.retrieve(QUERY)
    assert len(results) == DEFAULT_SIMILARITY_TOP_K == 4
    assert all(isinstance(r, NodeWithScore) and isinstance(r.node, TextNode) for r in results)
    assert len({r.node.metadata["doc_id"] for r in results}) == 4
    assert {r.node.metadata["mode"] for r in results} == {DEFAULT_MODE}  # None: the store's default
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    # A QueryBundle works as well as a string.
    assert _summary(retriever.retrieve(QueryBundle(QUERY))) == _summary(results)


@pytest.mark.parametrize("mode", SEARCH_MODES)
def test_each_mode_gives_the_store_results(kv_store: KVStore, mode: str) -> None:
    results = KVRetriever(kv_store, similarity_top_k=3, mode=mode).retrieve(QUERY)
    hits = kv_store.query(QUERY, 3, per_document=True, mode=mode)
    assert [r.node.node_id for r in results] == [h.id for h in hits]
    assert [r.score for r in results] == pytest.approx([h.score for h in hits])
    assert {r.node.metadata["mode"] for r in results} == {mode}


def test_lexical_mode_finds_an_exact_rare_word(kv_store: KVStore) -> None:
    results = KVRetriever(kv_store, mode="lexical").retrieve("zeppelin")
    # Lexical search returns only records holding a query term: the one story with that word.
    assert [r.node.metadata["doc_id"] for r in results] == ["zeppelin"]
    assert "zeppelin" in results[0].node.get_content()
    assert results[0].score is not None and results[0].score > 0


def test_node_metadata_and_relationships(kv_store: KVStore) -> None:
    result = KVRetriever(kv_store, similarity_top_k=1, mode="lexical").retrieve("nest tree")[0]
    node = result.node
    assert isinstance(node, TextNode)
    text, meta = STORIES["bird"]
    assert node.metadata["doc_id"] == "bird" and node.ref_doc_id == "bird"
    assert node.node_id.startswith("bird::0::")
    assert (node.start_char_idx, node.end_char_idx) == (node.metadata["start"], node.metadata["end"])
    assert node.get_content() == text[node.start_char_idx : node.end_char_idx]
    assert node.metadata["tags"] == ["nest", "tree"]  # a JSON-encoded value comes back decoded
    assert (node.metadata["topic"], node.metadata["source"], node.metadata["chunk_index"]) == ("animals", "stories", 0)
    assert set(node.metadata) == {*meta, "doc_id", "source", *POSITION_KEYS}
    # What an LLM prompt gets: the user metadata and the document, not the chunk's position.
    llm_text = node.get_content(metadata_mode=MetadataMode.LLM)
    assert "doc_id: bird" in llm_text and "topic: animals" in llm_text and text in llm_text
    assert not any(f"{key}: " in llm_text for key in POSITION_KEYS)


def test_per_document_and_where(kv_store: KVStore) -> None:
    question = "lighthouse boats"
    chunks = KVRetriever(kv_store, similarity_top_k=3, mode="lexical", per_document=False).retrieve(question)
    assert [r.node.metadata["doc_id"] for r in chunks] == [LONG_ID] * 3  # three chunks of the long story
    for r in chunks:
        node = r.node
        assert isinstance(node, TextNode)
        assert node.get_content() == LONG_TEXT[node.start_char_idx : node.end_char_idx]
    documents = KVRetriever(kv_store, similarity_top_k=3, mode="lexical").retrieve(question)
    assert len({r.node.metadata["doc_id"] for r in documents}) == len(documents)
    assert documents[0].node.metadata["doc_id"] == LONG_ID

    sea = KVRetriever(kv_store, similarity_top_k=5, where={"topic": "sea"}).retrieve(QUERY)
    assert {r.node.metadata["doc_id"] for r in sea} == {"boat", LONG_ID}
    rrf = KVRetriever(kv_store, similarity_top_k=2, fusion=Fusion(method="rrf")).retrieve(QUERY)
    assert [r.node.node_id for r in rrf] == [
        h.id for h in kv_store.query(QUERY, 2, per_document=True, fusion=Fusion(method="rrf"))
    ]


async def test_aretrieve_equals_retrieve_and_leaves_the_event_loop(
    kv_store: KVStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    retriever = KVRetriever(kv_store, similarity_top_k=3)
    expected = retriever.retrieve(QUERY)
    threads = record_engine_threads(kv_store.embedder, monkeypatch)
    got = await retriever.aretrieve(QUERY)
    assert _summary(got) == _summary(expected)
    assert threads and threading.get_ident() not in threads  # the query was embedded in a worker thread
    lexical = KVRetriever(kv_store, mode="lexical")
    assert _summary(await lexical.aretrieve("zeppelin")) == _summary(lexical.retrieve("zeppelin"))


def test_bad_settings_are_refused_with_clear_errors(kv_store: KVStore) -> None:
    with pytest.raises(ConfigError, match=r"Search mode 'fuzzy' is not valid; choose one of hybrid, dense, lexical\."):
        KVRetriever(kv_store, mode="fuzzy")
    with pytest.raises(ConfigError, match=r"similarity_top_k must be an int >= 1; got 0\."):
        KVRetriever(kv_store, similarity_top_k=0)
    with pytest.raises(ConfigError, match=r"similarity_top_k must be an int >= 1; got True\."):
        KVRetriever(kv_store, similarity_top_k=True)
    with pytest.raises(ConfigError, match=r"store must be a kvemb_rag\.store\.KVStore; got str\."):
        KVRetriever("index-dir")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"where must be a Chroma metadata filter \(a mapping\) or None; got 'x'\."):
        KVRetriever(kv_store, where="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"per_document must be a bool; got 'yes'\."):
        KVRetriever(kv_store, per_document="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"fusion must be a kvemb_rag\.store\.Fusion or None; got 'rrf'\."):
        KVRetriever(kv_store, fusion="rrf")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"The query must be a non-empty string; got '  '\."):
        KVRetriever(kv_store).retrieve("  ")


def test_a_store_without_embedder_searches_lexically(kv_store: KVStore) -> None:
    # A reopened store has no embedder until one is given or loaded: lexical search works without one.
    reopened = KVStore(kv_store.path, collection="retriever-tests")
    try:
        results = KVRetriever(reopened, mode="lexical").retrieve("zeppelin")
        assert [r.node.metadata["doc_id"] for r in results] == ["zeppelin"]
    finally:
        reopened.close()


def test_namespace_layout_and_public_surface() -> None:
    import llama_index.retrievers.kvemb as package

    root = Path(package.__file__).resolve().parents[2]  # .../llama_index
    assert root.name == "llama_index"
    assert not (root / "__init__.py").exists()
    assert not (root / "retrievers" / "__init__.py").exists()
    assert (root / "retrievers" / "kvemb" / "py.typed").is_file()
    assert sorted(package.__all__) == ["DEFAULT_SIMILARITY_TOP_K", "KVRetriever"]
