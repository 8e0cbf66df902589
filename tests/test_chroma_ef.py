"""KVEmbeddingFunction: chromadb's embedding-function protocol, its registry, and reopening in a new process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import chromadb
import numpy as np
import pytest
from chromadb.utils.embedding_functions import config_to_embedding_function, known_embedding_functions

from kvemb_rag.embedding_function import KVEmbeddingFunction
from tests.conftest import SIDED_TEMPLATES

DOCS = [
    "Tom the cat liked to sleep in the warm sun.",
    "The big red boat sailed across the blue sea.",
    "Mia baked a cake with her grandma on Sunday.",
    "A little bird built a nest high in the old tree.",
]
QUESTION = "Who baked a cake?"


@pytest.fixture(autouse=True)
def _cache(kvemb_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVEMB_CACHE_DIR", str(kvemb_cache_dir))


@pytest.fixture
def ef(tiny_model_path: Path) -> KVEmbeddingFunction:
    return KVEmbeddingFunction(str(tiny_model_path), max_length=512, layers=[3], **SIDED_TEMPLATES)


def test_protocol_basics(ef: KVEmbeddingFunction) -> None:
    assert KVEmbeddingFunction.name() == "kvemb"
    assert ef.default_space() == "cosine"
    assert set(ef.supported_spaces()) == {"cosine", "ip", "l2"}
    assert not ef.is_legacy()
    assert known_embedding_functions["kvemb"] is KVEmbeddingFunction


def test_config_is_json_and_rebuilds_without_loading(ef: KVEmbeddingFunction, tiny_model_path: Path) -> None:
    config = ef.get_config()
    assert json.loads(json.dumps(config)) == config
    assert config["model"] == str(tiny_model_path)
    assert config["layers"] == [3] and config["strategy"] == "kv" and config["max_length"] == 512
    assert "trust_remote_code" not in config  # reopening a collection never runs hub code
    rebuilt = config_to_embedding_function({"name": "kvemb", "config": config})
    assert isinstance(rebuilt, KVEmbeddingFunction)
    assert rebuilt.get_config() == config
    # Cheap: a model that does not exist can be configured; it only fails when used.
    lazy = KVEmbeddingFunction.build_from_config({**config, "model": "/nonexistent/kvemb-model"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lazy(["hello"])


def test_model_defaults_to_env(monkeypatch: pytest.MonkeyPatch, tiny_model_path: Path) -> None:
    monkeypatch.setenv("KVEMB_MODEL", str(tiny_model_path))
    assert KVEmbeddingFunction().model == str(tiny_model_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"strategy": "bm25"}, "strategy"),
        ({"dtype": "int8"}, "dtype"),
        ({"model": ""}, "model"),
        ({"layers": [-1]}, "layers"),
        ({"document_template": "no placeholder"}, "document_template"),
        ({"max_length": 2}, "max_length"),
        ({"colour": "blue"}, "Unknown"),
    ],
)
def test_validate_config_refuses_bad_settings(
    ef: KVEmbeddingFunction, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        KVEmbeddingFunction.validate_config({**ef.get_config(), **change})


def test_config_update_keeps_vectors_comparable(ef: KVEmbeddingFunction) -> None:
    old = ef.get_config()
    ef.validate_config_update(old, {**old, "device": "cpu", "batch_size": 4})  # allowed
    with pytest.raises(ValueError, match="strategy"):
        ef.validate_config_update(old, {**old, "strategy": "kv-ablation"})
    with pytest.raises(ValueError, match="model"):
        ef.validate_config_update(old, {**old, "model": "Qwen/Qwen3-0.6B"})


def test_document_and_query_sides(ef: KVEmbeddingFunction) -> None:
    docs = ef(DOCS)
    queries = ef.embed_query([QUESTION])
    assert len(docs) == len(DOCS) and len(queries) == 1
    engine = ef.engine
    np.testing.assert_allclose(np.stack(docs), engine.encode_document(DOCS), atol=1e-6)
    np.testing.assert_allclose(queries[0], engine.encode_query(QUESTION), atol=1e-6)
    assert not np.allclose(ef([QUESTION])[0], queries[0])


_REOPEN = textwrap.dedent(
    """
    import json, sys
    import chromadb
    import kvemb_rag.embedding_function  # registers "kvemb" so the stored configuration can be rebuilt

    collection = chromadb.PersistentClient(path=sys.argv[1]).get_collection("stories")
    ef = collection.configuration["embedding_function"]
    result = collection.query(query_texts=[sys.argv[2]], n_results=3)
    collection.add(ids=["new"], documents=["The green frog jumped into the pond."])
    print(json.dumps({"ef": type(ef).__name__, "config": ef.get_config(), "ids": result["ids"][0],
                      "distances": result["distances"][0], "count": collection.count()}))
    """
)


def test_collection_reopens_in_a_new_process(
    ef: KVEmbeddingFunction, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    path = tmp_path / "db"
    client = chromadb.PersistentClient(path=str(path))
    collection = client.create_collection("stories", embedding_function=ef)  # type: ignore[arg-type]
    assert collection.configuration_json["hnsw"]["space"] == "cosine"  # the function's default space
    assert collection.configuration_json["embedding_function"] == {
        "name": "kvemb", "type": "known", "config": ef.get_config(),
    }
    collection.add(ids=[f"d{i}" for i in range(len(DOCS))], documents=DOCS)
    here = collection.query(query_texts=[QUESTION], n_results=3)
    here_ids, here_distances = here["ids"][0], (here["distances"] or [[]])[0]
    # Stored vectors are the document side; the query went through the query side.
    stored = collection.get(ids=["d2"], include=["embeddings"])["embeddings"]
    assert stored is not None
    np.testing.assert_allclose(stored[0], ef.engine.encode_document(DOCS[2]), atol=1e-6)
    expected = 1.0 - np.stack(ef(DOCS)) @ ef.embed_query([QUESTION])[0]
    np.testing.assert_allclose(sorted(expected)[:3], here_distances, atol=1e-4)
    del collection, client

    script = tmp_path / "reopen.py"
    script.write_text(_REOPEN, encoding="utf-8")
    # One thread: a 260K-parameter model gains nothing from more, and OpenMP spin-waits on a busy machine.
    env = {**subprocess_env, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(script), str(path), QUESTION],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert there["ef"] == "KVEmbeddingFunction"
    assert there["config"] == ef.get_config()
    assert there["ids"] == here_ids
    np.testing.assert_allclose(there["distances"], here_distances, atol=1e-5)
    assert there["count"] == len(DOCS) + 1
