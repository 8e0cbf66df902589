"""Chroma I/O helpers: client settings, server URLs, metadata encoding, record ids, paging."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

from kvemb_rag.errors import ConfigError
from kvemb_rag.store.documents import RESERVED_METADATA_KEYS, Document

# Collection-metadata keys written by the store.
_IDENTITY_KEY = "kvemb_identity"
_FORMAT_KEY = "kvemb_format"
_OVERLAP_KEY = "kvemb_overlap"
_CHUNK_SIZE_KEY = "kvemb_chunk_size"
# A new random value before every write or delete of records: what the lexical index is checked against.
_RECORDS_VERSION_KEY = "kvemb_records_version"
_FORMAT_VERSION = 1
# Characters of the content hash in a record id.
_HASH_CHARS_IN_ID = 16


def _recorded_int(col: Any, key: str) -> int | None:
    """An int the store recorded in the collection's metadata (``None`` when absent or not an int)."""
    value = (col.metadata or {}).get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _update_metadata(col: Any, changes: Mapping[str, Any]) -> None:
    """Set keys of ``col``'s metadata and keep the others.

    Chroma replaces the whole mapping and refuses to modify the ``hnsw:*`` creation settings, so those are
    left out.
    """
    kept = {k: v for k, v in (col.metadata or {}).items() if not k.startswith("hnsw:")}
    col.modify(metadata={**kept, **changes})


def _make_settings() -> Any:
    from chromadb.config import Settings

    # No usage reporting from a local tool, and the store never needs Chroma's reset().
    return Settings(anonymized_telemetry=False)


def _parse_url(url: str) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"url={url!r} is not a Chroma server address; use http://HOST:PORT (e.g. http://localhost:8000)."
        )
    try:
        port = parsed.port
    except ValueError as exc:
        raise ConfigError(f"url={url!r} has an invalid port; use http://HOST:PORT.") from exc
    ssl = parsed.scheme == "https"
    return parsed.hostname, port if port is not None else (443 if ssl else 8000), ssl


def _encode_metadata(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """User metadata as Chroma values: scalars kept, everything else JSON-encoded (keys returned)."""
    encoded: dict[str, Any] = {}
    json_keys: list[str] = []
    for key in sorted(metadata):
        value = metadata[key]
        if isinstance(value, (str, bool, int, float)):
            encoded[key] = value
        else:
            try:
                encoded[key] = json.dumps(value, sort_keys=True, ensure_ascii=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(
                    f"metadata[{key!r}] = {value!r:.80} ({type(value).__name__}) is neither a "
                    "str/int/float/bool nor JSON-serialisable; convert it to one of those."
                ) from exc
            json_keys.append(key)
    return encoded, json_keys


def _decode_metadata(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    if not stored:
        return {}
    json_keys = set(json.loads(stored["json_keys"])) if "json_keys" in stored else set()
    user: dict[str, Any] = {}
    for key, value in stored.items():
        if key in RESERVED_METADATA_KEYS:
            continue
        user[key] = json.loads(value) if key in json_keys and isinstance(value, str) else value
    return user


def _content_key(document: Document, chunking: tuple[int, int], encoded: Mapping[str, Any]) -> str:
    chunk_size, overlap = chunking
    payload = json.dumps(
        {
            "text": document.text,
            "chunk_size": chunk_size,
            "overlap": overlap,
            "metadata": encoded,
            "source": document.source,
        },
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _record_id(doc_id: str, index: int, key: str) -> str:
    return f"{doc_id}::{index}::{key[:_HASH_CHARS_IN_ID]}"


def _slices(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

