"""Long-document retrieval against document length: QMSum validation on SmolLM2 (issue 11).

The paper's second claim is robustness on long documents (LoCoV1, up to 4,096 tokens). Here: QMSum
**validation** meetings as documents, their topic-specific queries as queries, nDCG@10 at document token
limits of 256, 512, 1,024, 2,048 and 4,096 (prompt included), with each document either truncated to the
limit (``overflow="truncate"``) or embedded whole as chunks of the limit (``overflow="chunk"``).

Subsample (CPU budget, stated in the results): the 8 meetings of at most 9,000 tokens (2,774 to 8,947) chosen with a
seeded generator, and their specific queries. Truncation is measured at every length for every strategy;
chunking embeds every token of every meeting at each length, so it is measured at 512 only.

Results are appended to ``benchmarks/method_study/long_docs.jsonl``; a re-run skips what is done::

    nohup .venv/bin/python -m benchmarks.long_docs_study > long.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from benchmarks.method_study import DATA, OUT_DIR

OUT = OUT_DIR / "long_docs.jsonl"
LENGTHS = (256, 512, 1024, 2048, 4096)
CHUNK_LENGTHS = (512,)

logger = logging.getLogger("long_docs_study")


def qmsum_subset(tokenizer: Any, meetings: int = 8, max_tokens: int = 9_000, seed: int = 0) -> Any:
    """The seeded QMSum validation subset: ``meetings`` transcripts of at most ``max_tokens`` tokens."""
    from kvemb_rag.evaluation.data import RetrievalData, load_qmsum

    data = load_qmsum(DATA / "qmsum", split="val", query_types=("specific",))
    short = sorted(m for m, text in data.corpus.items() if len(tokenizer(text)["input_ids"]) <= max_tokens)
    chosen = sorted(random.Random(seed).sample(short, meetings))
    queries = {q: t for q, t in data.queries.items() if q.split("/")[0] in chosen}
    return RetrievalData(
        "qmsum-val-subset", {m: data.corpus[m] for m in chosen}, queries, {q: data.qrels[q] for q in queries}
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--strategies",
        default="kv,kv-ablation,prompteol",
        help="comma list of strategies (the package defaults), or 'label=JSON settings' given with --config",
    )
    parser.add_argument(
        "--config", action="append", default=[], help="LABEL=JSON KVEmbedder settings, measured like a strategy"
    )
    parser.add_argument("--chunk-strategies", default="kv,prompteol", help="strategies also measured chunked")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from kvemb_rag import KVEmbedder
    from kvemb_rag.evaluation.tasks import evaluate_long_documents

    OUT.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if OUT.is_file():
        for line in OUT.read_text().splitlines():
            row = json.loads(line)
            done.add((row["model"], row["strategy"], row["mode"], row["max_length"]))
    base = KVEmbedder(args.model, strategy="kv-ablation", batch_size=8, show_progress_bar=False)
    data = qmsum_subset(base.tokenizer)
    logger.info("%d meetings, %d queries", len(data.corpus), len(data.queries))
    configs: dict[str, dict[str, Any]] = {name: {"strategy": name} for name in args.strategies.split(",") if name}
    for item in args.config:
        label, _, settings = item.partition("=")
        configs[label] = json.loads(settings)
    for strategy, settings in configs.items():
        embedder = base.with_options(**settings)
        for mode in ("truncate", "chunk"):
            if mode == "chunk" and strategy not in args.chunk_strategies.split(","):
                continue
            for length in LENGTHS if mode == "truncate" else CHUNK_LENGTHS:
                if (args.model, strategy, mode, length) in done:
                    continue
                start = time.perf_counter()
                scores = evaluate_long_documents(embedder, data, [length], modes=[mode], show_progress_bar=False)
                row = {
                    "model": args.model,
                    "strategy": strategy,
                    "settings": settings,
                    "layers": list(embedder.layers),
                    "mode": mode,
                    "max_length": length,
                    "ndcg@10": next(iter(scores.values())),
                    "meetings": len(data.corpus),
                    "queries": len(data.queries),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                with OUT.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                logger.info("%s", row)


if __name__ == "__main__":
    main()
