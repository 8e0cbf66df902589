"""KVEmbeddingFunction: chromadb's embedding-function protocol, its registry, and reopening in a new process."""

from __future__ import annotations

import dataclasses
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

from kvemb_rag import LayerSelectionConfig
from kvemb_rag.embedding_function import KVEmbeddingFunction
from kvemb_rag.engine.config import PROMPTEOL_TEMPLATE
from kvemb_rag.errors import ConfigError
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


def test_config_spells_out_the_defaults_a_release_could_change(tiny_model_path: Path) -> None:
    """Templates, pooling and the layer rule are stored explicitly, so a later default cannot re-embed differently."""
    config = KVEmbeddingFunction(str(tiny_model_path)).get_config()
    assert config["query_template"] == config["document_template"] == PROMPTEOL_TEMPLATE
    assert config["pooling"] == "hybrid" and config["layers"] == "auto"
    assert config["selection"] == dataclasses.asdict(LayerSelectionConfig())
    # A configuration stored before these keys existed still opens, and counts as the same vectors.
    old = {k: v for k, v in config.items() if k not in ("pooling", "selection", "max_padding")}
    old.update(query_template=None, document_template=None)
    rebuilt = KVEmbeddingFunction.build_from_config(old)
    assert rebuilt.get_config() == config
    rebuilt.validate_config_update(old, config)
    with pytest.raises(ConfigError, match=r"selection: .* -> "):
        rebuilt.validate_config_update(config, {**config, "selection": {"rule": "intrinsic-dimension"}})


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
def test_validate_config_refuses_bad_settings(ef: KVEmbeddingFunction, change: dict[str, Any], message: str) -> None:
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
        "name": "kvemb",
        "type": "known",
        "config": ef.get_config(),
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
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    there = json.loads(run.stdout.strip().splitlines()[-1])
    assert there["ef"] == "KVEmbeddingFunction"
    assert there["config"] == ef.get_config()
    assert there["ids"] == here_ids
    np.testing.assert_allclose(there["distances"], here_distances, atol=1e-5)
    assert there["count"] == len(DOCS) + 1


# One changed value per setting that changes the vectors (kvemb_rag.engine.config.VECTOR_SETTINGS).
_VECTOR_CHANGES: dict[str, Any] = {
    "model": "Qwen/Qwen3-0.6B",
    "strategy": "kv-ablation",
    "layers": [0],
    "bias": 2.0,
    "pooling": "last",
    "centring": False,
    "dtype": "bfloat16",
    "max_length": 256,
    "query_template": "Q: {text}\nOne word:",
    "document_template": "D: {text}\nOne word:",
    "revision": "v2",
    "selection": {"rule": "intrinsic-dimension"},
}


def test_chroma_and_the_store_agree_on_the_same_vectors(ef: KVEmbeddingFunction, tiny_embedder: Any) -> None:
    """Every vector setting is refused by the Chroma function's update check and, where the identity records it
    by name, makes the store's identity differ; settings that do not change the vectors pass both, and the
    precision settings (the dtype: rounding only) pass both while the identity still names the change."""
    from kvemb_rag.engine.config import PRECISION_SETTINGS, VECTOR_SETTINGS
    from kvemb_rag.engine.identity import (
        IDENTITY_SETTINGS,
        RECORDED_THROUGH,
        identity_differences,
        precision_differences,
    )

    assert set(_VECTOR_CHANGES) == set(VECTOR_SETTINGS) and PRECISION_SETTINGS == ("dtype",)
    old = ef.get_config()
    for name, value in _VECTOR_CHANGES.items():
        if name in PRECISION_SETTINGS:
            ef.validate_config_update(old, {**old, name: value})
            continue
        with pytest.raises(ConfigError, match=f"Cannot change {name}: "):
            ef.validate_config_update(old, {**old, name: value})
    ef.validate_config_update(old, {**old, "device": "cpu", "batch_size": 4, "max_padding": 1.0})
    assert set(IDENTITY_SETTINGS) | set(RECORDED_THROUGH) == set(VECTOR_SETTINGS)
    stored = tiny_embedder.identity
    for name in set(IDENTITY_SETTINGS) - {"model"} - set(PRECISION_SETTINGS):
        changed = tiny_embedder.with_options(**{name: _VECTOR_CHANGES[name]})
        assert name in identity_differences(stored, changed.identity), name
    other_dtype = "float32" if stored["dtype"] == "bfloat16" else "bfloat16"
    rounded = tiny_embedder.with_options(dtype=other_dtype)
    assert identity_differences(stored, rounded.identity) == {}
    assert precision_differences(stored, rounded.identity) == {"dtype": (stored["dtype"], other_dtype)}
    same = tiny_embedder.with_options(batch_size=3, max_padding=1.0, device="cpu")
    assert identity_differences(stored, same.identity) == {}
