"""File reading for ``kvemb index`` (:mod:`kvemb_rag.sources`): pure Python, no model."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from kvemb_rag.sources import SourceError, read_path
from kvemb_rag.store import Document


def test_folder_walk_ids_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.md").write_text("# B\n\nbody", encoding="utf-8")
    (root / "sub" / "a.txt").write_bytes("\ufeffwith a BOM".encode())
    (root / "sub" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / ".git" / "x.txt").write_text("hidden", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG")
    lines = [
        {"id": 7, "text": "seven", "source": "web", "tags": ["a"]},
        {"text": "no id"},
        {"id": 7, "text": "duplicate"},
        {"text": ""},
        [1, 2],
    ]
    (root / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{bad\n", encoding="utf-8")

    read = read_path(root)
    assert read.source == str(root.resolve()) and read.root == root.resolve()
    assert read.files == 5  # b.md, d.jsonl, empty.txt, sub/a.txt, sub/latin1.txt (hidden and .png not)
    by_id = {d.id: d for d in read.documents}
    assert list(by_id) == ["b.md", "7", "d.jsonl#2", "sub/a.txt"]
    assert by_id["sub/a.txt"].text == "with a BOM"
    assert by_id["7"].metadata == {
        "path": str(root.resolve() / "d.jsonl"),
        "line": 1,
        "meta_source": "web",
        "tags": ["a"],
    }
    assert all(d.source == read.source for d in read.documents)
    reasons = {Path(s.path).name: s.reason for s in read.skipped}
    assert set(reasons) == {"latin1.txt", "empty.txt", "d.jsonl:3", "d.jsonl:4", "d.jsonl:5", "d.jsonl:6"}
    assert "UTF-8" in reasons["latin1.txt"] and "duplicate" in reasons["d.jsonl:3"]
    assert "text" in reasons["d.jsonl:4"] and "not an object" in reasons["d.jsonl:5"]
    assert "invalid JSON" in reasons["d.jsonl:6"]


def test_single_file_and_errors(tmp_path: Path) -> None:
    note = tmp_path / "note.md"
    note.write_text("hello", encoding="utf-8")
    read = read_path(note)
    assert [d.id for d in read.documents] == ["note.md"] and read.source == str(note.resolve())
    with pytest.raises(SourceError, match="not found"):
        read_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="No .txt"):
        read_path(tmp_path / "empty")
    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    with pytest.raises(SourceError, match="Unsupported"):
        read_path(tmp_path / "x.pdf")


def test_document_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Document("", "x")
    with pytest.raises(TypeError, match="str"):
        Document("a", b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        Document("a", "x", {"chunk_index": 1})
    doc = Document("a", "x", {"k": 1})
    with pytest.raises(FrozenInstanceError, match="'text'"):
        doc.text = "y"  # type: ignore[misc]
