"""The files documents come from: ``.txt``, ``.md`` and ``.jsonl`` readers for indexing.

:func:`read_path` turns one path given on the command line into :class:`kvemb_rag.store.Document` objects
(the store's unit of indexing; their *source* is the unit :meth:`~kvemb_rag.store.KVStore.sync_documents`
mirrors):

* a folder is walked recursively (sorted, hidden files and folders skipped); its supported files are read;
* ``.txt`` / ``.md`` files are one document each, with id = the path relative to the indexed root (POSIX
  separators), so ids are stable across runs and machines;
* ``.jsonl`` files hold one JSON object per line with a ``text`` field, an optional ``id`` (the document id;
  default ``"<relative path>#<line number>"``) and other fields, which become metadata (a field named like
  one of the store's own keys, e.g. ``source``, is kept as ``meta_<name>``, with a warning);
* every document gets a ``path`` metadata entry (the file), JSONL documents also their ``line``;
* unreadable files, binary files (a NUL byte, or not UTF-8), empty files and bad JSONL lines are skipped
  with a warning and reported in :attr:`SourceRead.skipped`; files with other suffixes are ignored.

:func:`read_paths` reads several paths with the rules of ``kvemb index`` (all missing paths named at once;
a file reached through two paths refused), and :func:`sync_reads` synchronises them into a store;
:func:`index_paths` does both: ``kvemb index`` as one call.

Example:
    >>> read = read_path("docs")  # doctest: +SKIP
    >>> [d.id for d in read.documents]  # doctest: +SKIP
    ['engine-api.md', 'method.md']
    >>> index_paths(store, ["docs", "README.md"]).added  # the collection's embedder, else the default  # doctest: +SKIP
    5
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvemb_rag.errors import KVEmbError
from kvemb_rag.store.documents import RESERVED_METADATA_KEYS, Document, SkippedFile
from kvemb_rag.store.records import IndexSummary, ProgressCallback
from kvemb_rag.store.sync import sync_sources

if TYPE_CHECKING:
    from kvemb_rag.store.distributed import RayIndexConfig
    from kvemb_rag.store.store import KVStore

__all__ = [
    "SUPPORTED_SUFFIXES",
    "SourceError",
    "SourceRead",
    "index_paths",
    "read_path",
    "read_paths",
    "sync_reads",
]

logger = logging.getLogger(__name__)

#: File suffixes :func:`read_path` reads (lower-case); other files in a folder are ignored.
SUPPORTED_SUFFIXES: tuple[str, ...] = (".txt", ".md", ".jsonl")

# Bytes sniffed for a NUL byte before decoding: a cheap, reliable sign of a binary file.
_SNIFF_BYTES = 8192


class SourceError(KVEmbError, ValueError):
    """A path given to index cannot be used at all (missing, or a folder without supported files)."""


@dataclass(frozen=True)
class SourceRead:
    """What :func:`read_path` found under one path.

    Attributes:
        source: The source label of the documents: the resolved path as given (folder or file).
        root: The folder document ids are relative to.
        documents: The documents, in path order.
        files: Supported files found (read or skipped).
        skipped: Files and JSONL lines that were skipped, with the reason.
    """

    source: str
    root: Path
    documents: tuple[Document, ...]
    files: int
    skipped: tuple[SkippedFile, ...]


def _iter_files(path: Path) -> Iterator[Path]:
    """Supported files under ``path`` (itself when a file), sorted, hidden entries skipped."""
    if path.is_file():
        yield path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            candidate = Path(dirpath) / name
            if candidate.suffix.lower() in SUPPORTED_SUFFIXES:
                yield candidate


def _read_text(path: Path) -> str:
    """The UTF-8 text of ``path``; raises ``ValueError`` for binary content (NUL byte or not UTF-8)."""
    data = path.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise ValueError("binary file (contains NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"binary or not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _relative_id(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _jsonl_documents(path: Path, text: str, doc_prefix: str, source: str, skipped: list[SkippedFile]) -> list[Document]:
    documents: list[Document] = []
    warned = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(SkippedFile(where, f"invalid JSON ({exc.msg})"))
            continue
        if not isinstance(record, dict):
            skipped.append(SkippedFile(where, f"a JSON {type(record).__name__}, not an object"))
            continue
        body = record.pop("text", None)
        if not isinstance(body, str) or not body.strip():
            skipped.append(SkippedFile(where, "no non-empty 'text' string field"))
            continue
        raw_id = record.pop("id", None)
        if raw_id is None:
            doc_id = f"{doc_prefix}#{number}"
        elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) and str(raw_id):
            doc_id = str(raw_id)
        else:
            skipped.append(SkippedFile(where, f"'id' must be a non-empty string or integer, got {raw_id!r}"))
            continue
        clashes = sorted(set(record) & set(RESERVED_METADATA_KEYS))
        if clashes:
            if not warned:
                logger.warning(
                    "%s: fields %s are reserved store metadata keys; stored as %s (in every line).",
                    where,
                    clashes,
                    [f"meta_{key}" for key in clashes],
                )
                warned = True
            record = {(f"meta_{k}" if k in clashes else k): v for k, v in record.items()}
        metadata = {"path": str(path), "line": number, **record}
        documents.append(Document(doc_id, body, metadata, source))
    return documents


def read_path(path: str | os.PathLike[str]) -> SourceRead:
    """Read the documents under one path (a supported file, or a folder walked recursively).

    Args:
        path: A ``.txt`` / ``.md`` / ``.jsonl`` file, or a folder.

    Returns:
        The documents (source = the resolved ``path``; ids relative to the folder, or to the file's folder
        for a single file) and the skipped files, each also logged as a warning.

    Raises:
        SourceError: ``path`` does not exist, is a folder without any supported file, or is a file with an
            unsupported suffix.
    """
    given = Path(path)
    if not given.exists():
        raise SourceError(f"Path not found: {str(path)!r}. Give an existing file or folder to index.")
    resolved = given.resolve()
    if resolved.is_file() and resolved.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise SourceError(
            f"Unsupported file type {resolved.suffix or '(no suffix)'!r}: {str(path)!r}. Supported: "
            f"{', '.join(SUPPORTED_SUFFIXES)}."
        )
    root = resolved if resolved.is_dir() else resolved.parent
    source = str(resolved)
    files = list(_iter_files(resolved))
    if not files:
        raise SourceError(
            f"No {', '.join(SUPPORTED_SUFFIXES)} files in {str(path)!r} (hidden files and folders are "
            "skipped). Point at a folder that holds documents."
        )
    documents: list[Document] = []
    skipped: list[SkippedFile] = []
    seen: dict[str, str] = {}
    for file in files:
        doc_id = _relative_id(file, root)
        try:
            text = _read_text(file)
        except OSError as exc:
            skipped.append(SkippedFile(str(file), f"unreadable ({exc.strerror or exc})"))
            continue
        except ValueError as exc:
            skipped.append(SkippedFile(str(file), str(exc)))
            continue
        if file.suffix.lower() == ".jsonl":
            found = _jsonl_documents(file, text, doc_id, source, skipped)
        elif text.strip():
            found = [Document(doc_id, text, {"path": str(file)}, source)]
        else:
            skipped.append(SkippedFile(str(file), "empty file"))
            found = []
        for document in found:
            if document.id in seen:
                line = document.metadata.get("line")
                where = f"{file}:{line}" if line is not None else str(file)
                reason = f"duplicate document id {document.id!r} (first in {seen[document.id]})"
                skipped.append(SkippedFile(where, reason))
                continue
            seen[document.id] = str(file)
            documents.append(document)
    for item in skipped:
        logger.warning("Skipped %s: %s", item.path, item.reason)
    return SourceRead(source, root, tuple(documents), len(files), tuple(skipped))


def read_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[SourceRead, ...]:
    """Read several paths (as :func:`read_path`), checking them together first.

    Args:
        paths: Supported files or folders, each becoming one source.

    Returns:
        One :class:`SourceRead` per path, in order.

    Raises:
        SourceError: Some paths do not exist (all are named), a path cannot be read (see :func:`read_path`),
            or one file is reached through two of the paths (a folder and a file in it), which would store
            it twice.
    """
    given = [Path(p) for p in paths]
    missing = [str(p) for p in given if not p.exists()]
    if missing:
        raise SourceError(f"Path(s) not found: {', '.join(map(repr, missing))}. Give existing files or folders.")
    reads = tuple(read_path(p) for p in given)
    # Documents are identified by source and id, so two folders may both hold README.md; but one file
    # reached through two given paths would be stored twice.
    owners: dict[str, str] = {}
    for read in reads:
        for doc in read.documents:
            file = str(doc.metadata.get("path", doc.id))
            first = owners.setdefault(file, read.source)
            if first != read.source:
                raise SourceError(
                    f"File {file!r} comes from both {first} and {read.source}; give overlapping paths once "
                    "(the folder, or the files in it)."
                )
    return reads


def sync_reads(
    store: KVStore,
    reads: Sequence[SourceRead],
    *,
    model: str | None = None,
    overlap: int | None = None,
    progress: ProgressCallback | None = None,
    ray: RayIndexConfig | None = None,
    **settings: Any,
) -> IndexSummary:
    """Synchronise each read's source in ``store`` (:func:`kvemb_rag.store.sync_sources`).

    Args:
        store: The store; it chooses its embedder as :func:`~kvemb_rag.store.sync_sources` says.
        reads: From :func:`read_paths`; a read without documents leaves its source's stored documents alone.
        model: As in :func:`~kvemb_rag.store.sync_sources` (default: the store's embedder, else the
            collection's, else the default model).
        overlap: As in :func:`~kvemb_rag.store.sync_sources` (default: the collection's overlap).
        progress: As in :func:`~kvemb_rag.store.sync_sources` (over all reads).
        ray: As in :func:`~kvemb_rag.store.sync_sources`.
        **settings: :class:`~kvemb_rag.KVEmbedder` keyword arguments, as in :func:`~kvemb_rag.store.sync_sources`.

    Returns:
        The run's summary, ``skipped_files`` listing the files and lines the reads skipped.
    """
    sources = [(read.source, read.documents) for read in reads]
    summary = sync_sources(store, sources, model=model, overlap=overlap, progress=progress, ray=ray, **settings)
    return replace(summary, skipped_files=tuple(s for read in reads for s in read.skipped))


def index_paths(
    store: KVStore,
    paths: Iterable[str | os.PathLike[str]],
    *,
    model: str | None = None,
    overlap: int | None = None,
    progress: ProgressCallback | None = None,
    ray: RayIndexConfig | None = None,
    **settings: Any,
) -> IndexSummary:
    """``kvemb index`` in one call: read ``paths`` (:func:`read_paths`), then synchronise them (:func:`sync_reads`).

    Every path is read before the embedder is chosen, so path errors come before a model loads.

    Args:
        store: The store; it chooses its embedder as :func:`~kvemb_rag.store.sync_sources` says.
        paths: Supported files or folders, each becoming one source.
        model: As in :func:`sync_reads`.
        overlap: As in :func:`sync_reads`.
        progress: As in :func:`sync_reads`.
        ray: As in :func:`sync_reads`.
        **settings: As in :func:`sync_reads`.

    Returns:
        The run's summary, ``skipped_files`` listing the files and lines that were not indexed.

    Raises:
        SourceError: As :func:`read_paths`.
    """
    reads = read_paths(paths)
    return sync_reads(store, reads, model=model, overlap=overlap, progress=progress, ray=ray, **settings)
