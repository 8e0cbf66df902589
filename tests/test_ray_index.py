"""`kvemb index --ray N`: Ray Data actor-pool ingestion into a real Chroma server (`chroma run`), on a local Ray
cluster started here; the records must equal single-process indexing. No mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from kvemb_rag import KVEmbedder  # noqa: E402
from kvemb_rag.sources import SourceRead, read_path  # noqa: E402
from kvemb_rag.store import IndexProgress, KVStore  # noqa: E402
from kvemb_rag.store.distributed import RayIndexConfig, ray_sync_documents  # noqa: E402

_TOPICS = ("cat", "boat", "moon", "bread", "rain", "king")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "docs"
    (root / "sub").mkdir(parents=True)
    for i, topic in enumerate(_TOPICS):
        folder = root / "sub" if i % 2 else root
        body = "\n\n".join(
            f"Paragraph {p} of the {topic} story. The {topic} went to the park and met a friend number {p}. "
            * (1 + (i + p) % 3)
            for p in range(2 + i)
        )
        (folder / f"{topic}.md").write_text(f"# The {topic}\n\n{body}\n", encoding="utf-8")
    lines = [json.dumps({"id": f"rec-{j}", "text": f"A short {t} record.", "lang": "en"})
             for j, t in enumerate(_TOPICS)]
    (root / "records.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def records(store: KVStore) -> dict[str, Any]:
    got = store.client.get_collection(store.collection_name).get(include=["documents", "metadatas", "embeddings"])
    order = np.argsort(got["ids"])
    return {
        "ids": [got["ids"][i] for i in order],
        "documents": [got["documents"][i] for i in order],
        "metadatas": [got["metadatas"][i] for i in order],
        "embeddings": np.asarray(got["embeddings"])[order],
    }


def assert_same_records(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["ids"] == b["ids"]
    assert a["documents"] == b["documents"]
    assert a["metadatas"] == b["metadatas"]
    np.testing.assert_allclose(a["embeddings"], b["embeddings"], atol=1e-5)


@pytest.fixture(scope="module")
def single(chroma_server: str, tiny_embedder: KVEmbedder, corpus: Path) -> tuple[SourceRead, dict[str, Any]]:
    """The corpus indexed single-process (the reference records)."""
    read = read_path(corpus)
    with KVStore(url=chroma_server, collection="ray-reference", embedder=tiny_embedder) as store:
        store.sync_documents(read.documents, source=read.source)
        return read, records(store)


def test_ray_records_equal_single_process_and_rerun_adds_nothing(
    ray_cluster: None, chroma_server: str, tiny_embedder: KVEmbedder, single: tuple[SourceRead, dict[str, Any]]
) -> None:
    read, reference = single
    config = RayIndexConfig(actors=2, batch_size=8)
    with KVStore(url=chroma_server, collection="ray-api", embedder=tiny_embedder) as store:
        summary = ray_sync_documents(store, read.documents, source=read.source, config=config)
        assert (summary.added, summary.chunks_embedded) == (len(read.documents), len(reference["ids"]))
        assert_same_records(records(store), reference)
        again = ray_sync_documents(store, read.documents, source=read.source, config=config)
        assert (again.unchanged, again.added, again.records_written, again.chunks_embedded) == (
            len(read.documents), 0, 0, 0
        )
        assert store.identity == tiny_embedder.identity


class _Interrupt(Exception):
    pass


def test_interrupted_ray_run_rerun_ends_complete(
    ray_cluster: None, chroma_server: str, tiny_embedder: KVEmbedder, single: tuple[SourceRead, dict[str, Any]]
) -> None:
    read, reference = single
    config = RayIndexConfig(actors=2, batch_size=4)

    def stop_after_two_writes(event: IndexProgress) -> None:
        if event.write_batches >= 2:
            raise _Interrupt(f"stopped after {event.records_written} records")

    with KVStore(url=chroma_server, collection="ray-resume", embedder=tiny_embedder, write_batch_size=4) as store:
        with pytest.raises(_Interrupt, match=r"stopped after \d+ records"):
            ray_sync_documents(store, read.documents, source=read.source, config=config, progress=stop_after_two_writes)
        partial = store.count()
        assert 0 < partial < len(reference["ids"])
        summary = ray_sync_documents(store, read.documents, source=read.source, config=config)
        assert summary.records_written == len(reference["ids"]) - partial
        assert_same_records(records(store), reference)


@pytest.mark.slow  # about 75 s here: two CLI processes, one starting its own Ray cluster and actors
def test_cli_index_ray_equals_single_process(
    chroma_server: str, corpus: Path, tiny_model_path: Path, subprocess_env: dict[str, str]
) -> None:
    """`kvemb index DIR --url URL --ray 2` in its own process (its own local Ray cluster) and without --ray."""

    def index(collection: str, *extra: str) -> dict[str, Any]:
        command = [
            sys.executable, "-m", "kvemb_rag.cli", "index", str(corpus), "--url", chroma_server, "-c", collection,
            "--model", str(tiny_model_path), "--json", *extra,
        ]
        result = subprocess.run(command, env=subprocess_env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        return dict(json.loads(result.stdout))

    first = index("cli-ray", "--ray", "2")
    index("cli-single")
    with KVStore(url=chroma_server, collection="cli-ray") as a, KVStore(
        url=chroma_server, collection="cli-single"
    ) as b:
        assert_same_records(records(a), records(b))
        assert a.identity == b.identity
    assert first["added"] == first["documents"] > 0
    again = index("cli-ray", "--ray", "2")
    assert (again["added"], again["records_written"], again["unchanged"]) == (0, 0, first["documents"])


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"actors": 0}, "actors must be an int >= 1"),
        ({"batch_size": "8"}, "batch_size must be an int >= 1"),
        ({"num_gpus": -1}, "num_gpus must be a number >= 0"),
        ({"num_cpus": 0, "num_gpus": 0}, "needs num_cpus > 0 or num_gpus > 0"),
    ],
)
def test_ray_config_is_validated(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        RayIndexConfig(**kwargs)
