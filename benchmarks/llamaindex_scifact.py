"""Time building a LlamaIndex VectorStoreIndex (Chroma, cosine) over the SciFact corpus with KVEmbedding.

Documents are ``title + " " + text`` (5,183 abstracts). Nodes come from ``KVEmbedding.node_parser()`` (so no
node exceeds the engine's max_length); the index is built over a persistent ChromaVectorStore in a temporary
directory. Model loading and layer selection happen before the clock starts and are reported separately.

    python -m benchmarks.llamaindex_scifact                       # tiny model, whole corpus
    python -m benchmarks.llamaindex_scifact --model Qwen/Qwen3-0.6B --limit 500 --json out.json

Prints one JSON object: documents, nodes, seconds for parsing and for building the index, throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
DEFAULT_MODEL = REPO.parent / "shared" / "data" / "models" / "stories260K" / "hf"


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--limit", type=int, default=None, help="index only the first N documents")
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16, help="KVEmbedding.embed_batch_size")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 avoids OpenMP contention on busy machines)"
    )
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args(argv)

    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    import torch
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.schema import MetadataMode
    from llama_index.embeddings.kvemb import KVEmbedding

    if args.threads:
        torch.set_num_threads(args.threads)
    from llama_index.vector_stores.chroma import ChromaVectorStore

    with open(args.corpus, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    rows = rows[: args.limit] if args.limit else rows
    documents = [
        Document(text=f"{r['title']} {r['text']}".strip(), id_=str(r["_id"]), metadata={"doc_id": str(r["_id"])})
        for r in rows
    ]

    embed_model = KVEmbedding(
        model_name=args.model, max_length=args.max_length, embed_batch_size=args.batch_size, device=args.device
    )
    start = time.perf_counter()
    engine = embed_model.engine  # model load + layer selection (cached on disk after the first run)
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    nodes = embed_model.node_parser().get_nodes_from_documents(documents)
    parse_s = time.perf_counter() - start
    longest = max(engine.count_tokens(n.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes)

    with tempfile.TemporaryDirectory(prefix="kvemb-scifact-") as store:
        collection = chromadb.PersistentClient(path=store).create_collection(
            "scifact", configuration={"hnsw": {"space": "cosine"}}
        )
        storage = StorageContext.from_defaults(vector_store=ChromaVectorStore(chroma_collection=collection))
        start, cpu_start = time.perf_counter(), time.process_time()
        index = VectorStoreIndex(nodes, storage_context=storage, embed_model=embed_model)
        build_s = time.perf_counter() - start
        build_cpu_s = time.process_time() - cpu_start
        stored = collection.count()
        hits = index.as_retriever(similarity_top_k=3).retrieve("Microstructural development of white matter")

    result: dict[str, object] = {
        "model": args.model,
        "engine": repr(engine),
        "documents": len(documents),
        "nodes": len(nodes),
        "stored": stored,
        "max_node_tokens_with_template": longest,
        "max_length": engine.max_length,
        "setup_s": round(setup_s, 2),
        "parse_s": round(parse_s, 2),
        "build_index_s": round(build_s, 2),
        # CPU seconds of this process: with --threads 1, the wall time the build takes on an idle core.
        "build_index_cpu_s": round(build_cpu_s, 2),
        "nodes_per_s": round(len(nodes) / build_s, 1),
        "top_hit": hits[0].node.metadata.get("doc_id") if hits else None,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
