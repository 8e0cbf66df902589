"""The store's lexical (BM25) index: derived from the collection's records, persisted beside it, never stale.

Chroma's local client has no keyword search, so the store keeps one itself: BM25 over every record's chunk
text, with ``bm25s`` (Lucene's BM25, ``k1=1.2``, ``b=0.75``, English stopwords, Snowball stemming from
``PyStemmer``), chosen on dev data (``docs/hybrid-search.md``).

**Consistency protocol.** The index is a pure function of the collection's records, so it is never
updated in place: it is rebuilt from the records and saved with the *records version* it reflects.

* Every store write or delete first stamps the collection metadata with a new records version
  (:func:`mark_records_changed`), so an index saved earlier is recognisably older, even when the run that
  wrote was killed before it could rebuild its index.
* An indexing run ends by rebuilding the index when it changed the records; reading the records is
  bracketed by two reads of the version, and an index whose records changed under it is not saved as fresh.
* Before a lexical or hybrid search, the saved index is compared with the collection's current records
  version and record count; an index that is missing, older, or from another format or setting is rebuilt
  from the records, with a log line.

**Where it lives.** Beside an on-disk collection: ``<store path>/kvemb-lexical/<collection id>/``. For a
collection on a Chroma server, or a client passed in, it lives in this machine's kvemb-rag cache
(``$KVEMB_CACHE_DIR/lexical/<server>/<collection id>``) and is rebuilt from the server's records whenever
they changed (each machine keeps its own copy). Deleting the collection deletes it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Collection as AbstractSet
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kvemb_rag.engine.models import cache_directory
from kvemb_rag.store.collection import mark_records_changed, records_version
from kvemb_rag.store.records import record_document_key

if TYPE_CHECKING:
    from chromadb.api import ClientAPI

    from kvemb_rag.store.collection import KVCollection

# The records-version stamp is the collection's (kvemb_rag.store.collection); its two functions are named
# here too, beside the protocol that relies on them.
__all__ = [
    "LEXICAL_SETTINGS",
    "LexicalIndex",
    "LexicalIndexFolder",
    "lexical_root",
    "mark_records_changed",
    "records_version",
]

logger = logging.getLogger(__name__)

#: What the lexical leg is: part of a saved index's state, so an index made with other settings is rebuilt.
LEXICAL_SETTINGS: dict[str, Any] = {
    "library": "bm25s",
    "method": "lucene",
    "k1": 1.2,
    "b": 0.75,
    "stopwords": "en",
    "stemmer": "english",
    "document_weight": 0.8,
    "format": 2,
}
_STATE = "state.json"
_RECORDS = "records.json"
_DOCUMENT_OF = "document_of.npy"
_READ_PAGE = 2048


# The folder of lexical indexes inside an on-disk store.
_FOLDER = "kvemb-lexical"


def lexical_root(path: Path | None, url: str | None, client: ClientAPI) -> Path:
    """Where a store keeps its lexical indexes: beside an on-disk database, else in this machine's cache."""
    if path is not None:
        return path / _FOLDER
    settings: Any = client.get_settings()
    if url is None and getattr(settings, "is_persistent", False) and settings.persist_directory:
        return Path(settings.persist_directory) / _FOLDER
    return cache_directory() / "lexical" / re.sub(r"[^A-Za-z0-9._-]+", "_", url or "client")


def _tokenize(texts: Sequence[str]) -> list[list[str]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer(LEXICAL_SETTINGS["stemmer"])
    tokens = bm25s.tokenize(
        list(texts), stopwords=LEXICAL_SETTINGS["stopwords"], stemmer=stemmer, return_ids=False, show_progress=False
    )
    return [list(t) for t in tokens]


def _bm25(tokens: list[list[str]]) -> Any:
    import bm25s

    settings = LEXICAL_SETTINGS
    retriever = bm25s.BM25(k1=settings["k1"], b=settings["b"], method=settings["method"])
    retriever.index(tokens, show_progress=False)
    return retriever


def _leg(retriever: Any, terms: list[str]) -> np.ndarray | None:
    """BM25 scores of one index's entries for the query terms (``None`` when none is in its vocabulary)."""
    term_ids = retriever.get_tokens_ids(terms)
    if not term_ids:
        return None
    return np.asarray(retriever.get_scores_from_ids(term_ids), dtype=np.float32)


@dataclass
class LexicalIndex:
    """BM25 over a collection's records: each chunk, and each document (its chunks together).

    A chunk's lexical score mixes its own BM25 score and its document's:
    ``(1 - document_weight) * chunk + document_weight * document`` (``LEXICAL_SETTINGS``): terms of a query
    are often spread over a document's chunks, and passage retrieval gains from the document's evidence
    (Callan 1994, "Passage-level evidence in document retrieval"; measured in ``docs/hybrid-search.md``).

    Attributes:
        ids: Record ids, in the index's order.
        version: The records version the index reflects.
        chunks: The ``bm25s.BM25`` index of the chunks (``None`` when there are no records).
        documents: The ``bm25s.BM25`` index of the documents (``None`` when there are no records).
        document_of: Position of each record's document in ``documents`` (``(n_records,)``).
    """

    ids: list[str]
    version: str | None
    chunks: Any = None
    documents: Any = None
    document_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        self._position = {record_id: i for i, record_id in enumerate(self.ids)}

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        texts: Sequence[str],
        version: str | None,
        documents: Sequence[tuple[Any, int]] | None = None,
    ) -> LexicalIndex:
        """Index the records.

        Args:
            ids: Record ids.
            texts: Their chunk texts.
            version: The records version they are.
            documents: ``(document key, chunk index)`` of each record; default: each record its own document.
        """
        if not ids:
            return cls([], version)
        tokens = _tokenize(texts)
        keys = documents if documents is not None else [(record_id, 0) for record_id in ids]
        position: dict[Any, int] = {}
        for key, _ in keys:
            position.setdefault(key, len(position))
        document_of = np.array([position[key] for key, _ in keys], dtype=np.int64)  # (n_records,)
        merged: list[list[str]] = [[] for _ in position]
        for n in sorted(range(len(ids)), key=lambda n: (document_of[n], keys[n][1])):
            merged[document_of[n]] += tokens[n]  # a document's chunks in order
        return cls(list(ids), version, _bm25(tokens), _bm25(merged), document_of)

    def leg_scores(self, query: str) -> tuple[np.ndarray, np.ndarray] | None:
        """Chunk and document BM25 of every record for ``query`` (two ``(n_records,)``), ``None`` on no match."""
        if self.chunks is None:
            return None
        terms = _tokenize([query])[0]
        chunk, document = _leg(self.chunks, terms), _leg(self.documents, terms)
        if chunk is None or document is None:
            return None
        return chunk, document[self.document_of]

    def scores(self, query: str) -> np.ndarray | None:
        """Lexical score of every record for ``query`` (``(n_records,)``), ``None`` when nothing matches."""
        legs = self.leg_scores(query)
        if legs is None:
            return None
        weight = float(LEXICAL_SETTINGS["document_weight"])
        scores = (1 - weight) * legs[0] + weight * legs[1]  # (n_records,)
        return scores if float(scores.max(initial=0.0)) > 0.0 else None

    def top(self, scores: np.ndarray, n: int, allowed: AbstractSet[str] | None = None) -> list[tuple[str, float]]:
        """The ``n`` best records with a positive score (of ``allowed`` ids when given), best first."""
        if allowed is not None:
            mask = np.zeros(len(self.ids), dtype=bool)  # (n_records,)
            mask[[self._position[i] for i in allowed if i in self._position]] = True
            scores = np.where(mask, scores, 0.0)
        positive = int((scores > 0).sum())
        n = min(n, positive)
        if n <= 0:
            return []
        best = np.argpartition(-scores, n - 1)[:n]  # (n,) unordered
        best = best[np.lexsort((best, -scores[best]))]  # by score, then index order (deterministic)
        return [(self.ids[i], float(scores[i])) for i in best]

    def score_of(self, scores: np.ndarray, record_id: str) -> float:
        """The score of one record in ``scores`` (0 for a record the index does not hold)."""
        position = self._position.get(record_id)
        return 0.0 if position is None else float(scores[position])

    # ---------------------------------------------------------------------------------- persistence
    def save(self, folder: Path) -> None:
        """Write the index to ``folder``, replacing what is there (a kill leaves the old one or none)."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        if self.chunks is not None:
            self.chunks.save(str(staging / "chunks"), show_progress=False)
            self.documents.save(str(staging / "documents"), show_progress=False)
            np.save(staging / _DOCUMENT_OF, self.document_of)
        (staging / _RECORDS).write_text(json.dumps(self.ids), encoding="utf-8")
        state = {"version": self.version, "records": len(self.ids), "settings": LEXICAL_SETTINGS}
        (staging / _STATE).write_text(json.dumps(state), encoding="utf-8")  # last: marks the folder complete
        retired = folder.with_name(f"{folder.name}.old-{os.getpid()}")
        if folder.exists():
            folder.rename(retired)
        staging.rename(folder)
        shutil.rmtree(retired, ignore_errors=True)

    @classmethod
    def load(cls, folder: Path) -> tuple[LexicalIndex | None, str]:
        """The index saved in ``folder``, or ``None`` and why it cannot be used."""
        try:
            state = json.loads((folder / _STATE).read_text(encoding="utf-8"))
            if state.get("settings") != LEXICAL_SETTINGS:
                return None, "made with other settings"
            ids = json.loads((folder / _RECORDS).read_text(encoding="utf-8"))
            legs: list[Any] = []
            document_of = np.zeros(0, dtype=np.int64)
            if ids:
                import bm25s

                legs = [bm25s.BM25.load(str(folder / leg), show_progress=False) for leg in ("chunks", "documents")]
                document_of = np.load(folder / _DOCUMENT_OF)
        except FileNotFoundError:
            return None, "missing"
        except (OSError, ValueError) as exc:
            return None, f"unreadable ({exc})"
        if len(ids) != state.get("records"):
            return None, "incomplete"
        if not legs:
            return cls(ids, state.get("version")), "saved"
        return cls(ids, state.get("version"), legs[0], legs[1], document_of), "saved"


class LexicalIndexFolder:
    """Where a store keeps its collections' lexical indexes, and the rule that keeps each one fresh.

    Args:
        root: The folder holding one sub-folder per collection id.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[str, LexicalIndex] = {}
        self._lock = threading.Lock()  # one rebuild at a time (retrievers search from worker threads)

    def folder(self, col: KVCollection) -> Path:
        """The folder of ``col``'s index."""
        return self.root / col.id

    def fresh(self, col: KVCollection, *, reason: str | None = None) -> LexicalIndex:
        """``col``'s index as of its current records: loaded, or rebuilt (and saved) when stale.

        Args:
            col: The collection, with metadata read just now (:meth:`KVCollection.reread`).
            reason: Why a rebuild is expected (logged at INFO instead of WARNING), e.g. after indexing.
        """
        with self._lock:
            return self._fresh(col, reason)

    def _fresh(self, col: KVCollection, reason: str | None) -> LexicalIndex:
        version, count = col.records_version, col.count()
        key = col.id
        index = self._loaded.get(key)
        if index is None or index.version != version or len(index.ids) != count:
            index, why = LexicalIndex.load(self.folder(col))
            if index is not None and (index.version != version or len(index.ids) != count):
                why = f"older than the collection ({len(index.ids)} records indexed, {count} stored)"
                index = None
            if index is None:
                log = logger.info if reason or (why == "missing" and count == 0) else logger.warning
                log(
                    "Rebuilding the lexical index of collection %r from its %d records (%s)",
                    col.name,
                    count,
                    reason or f"the saved one is {why}",
                )
                index = self._rebuild(col)
            self._loaded[key] = index
        return index

    def _rebuild(self, col: KVCollection) -> LexicalIndex:
        for _ in range(3):
            before = col.reread().records_version
            ids, texts, documents = _read_records(col)
            after = col.reread()
            index = LexicalIndex.build(ids, texts, before, documents)
            if after.records_version == before and after.count() == len(ids):
                index.save(self.folder(col))
                return index
        logger.warning("Collection %r kept changing while its lexical index was rebuilt; not saved", col.name)
        return LexicalIndex.build(ids, texts, None, documents)

    def drop(self, collection_id: str) -> None:
        """Delete the index of a deleted collection."""
        self._loaded.pop(collection_id, None)
        shutil.rmtree(self.root / collection_id, ignore_errors=True)


def _read_records(col: KVCollection) -> tuple[list[str], list[str], list[tuple[Any, int]]]:
    """Ids, chunk texts and ``(document key, chunk index)`` of every record of ``col``, read in pages."""
    ids: list[str] = []
    texts: list[str] = []
    documents: list[tuple[Any, int]] = []
    for record_id, text, meta in col.iter_records(texts=True, page=_READ_PAGE):
        ids.append(record_id)
        texts.append(text or "")
        if meta and "doc_id" in meta:
            documents.append((record_document_key(meta), int(meta.get("chunk_index", 0))))
        else:  # a record not written by kvemb-rag: a document of its own
            documents.append(((None, record_id), 0))
    return ids, texts, documents
