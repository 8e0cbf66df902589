"""Can the demo's generated answers be trusted? Faithfulness of small models' answers to the retrieved chunks.

For the demo's questions and the natural questions of :mod:`benchmarks.demo_questions`, the docs are indexed
and searched as ``make demo`` does (default model and search mode, top 3 chunks), and each model answers
from the *same* retrieved chunks with the demo's own prompt and decoding (:func:`kvemb_rag.demo.answer`:
greedy, 96 new tokens). Two cheap, objective measures per answer:

* ``support``: the share of the answer's content words (lowercased runs of letters longer than 3, not
  stopwords) that occur in the retrieved passages. Copying is not understanding, but an answer whose words
  are not in its sources is not from its sources.
* ``key_phrase``: whether the answer contains the reference passage's marker (the question's
  ``answer_marker``; case-insensitive, any whitespace), counted over the questions whose retrieved chunks
  contain it (otherwise no answer from those chunks could).

The demo's grounded answer (:func:`kvemb_rag.demo.grounded_answer`: the 3 sentences of the chunks closest to
the question) is scored alongside as ``grounded``; its support is 1 by construction, its key-phrase rate
is not.

    python -m benchmarks.demo_answers [--models smollm2-135m-instruct,gemma-3-270m] [--store DIR]
        [--limit N] [--threads 1] [--out benchmarks/demo_answers.json]

Run by hand (a few minutes on CPU: each model answers every question once).
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.demo_questions import DEMO_MARKERS, QUESTIONS, Question, demo_questions, demo_store, load_demo_embedder
from benchmarks.demo_questions import marker_pattern as _marker_pattern

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "demo_answers.json"
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
K = 3
SUPPORTED = 0.8  # an answer with at least this support counts as staying on its sources

#: English function words (and a few question words) left out of the content words.
STOPWORDS = frozenset(
    {
        "about", "above", "after", "again", "against", "also", "although", "among", "because", "been", "before",
        "being", "below", "between", "both", "cannot", "could", "does", "doing", "down", "during", "each", "either",
        "else", "even", "every", "from", "further", "have", "having", "here", "hers", "herself", "himself", "into",
        "itself", "just", "many", "more", "most", "much", "must", "myself", "neither", "never", "only", "other",
        "ought", "ours", "ourselves", "over", "same", "shall", "should", "some", "such", "than", "that", "their",
        "theirs", "them", "themselves", "then", "there", "these", "they", "this", "those", "though", "through", "under",
        "until", "upon", "very", "were", "what", "when", "where", "whether", "which", "while", "whom", "whose", "will",
        "with", "within", "without", "would", "your", "yours", "yourself", "yourselves", "answer", "answers", "passage",
        "passages", "question", "questions", "source", "sources", "based", "briefly", "given"
    }
)


def content_words(text: str) -> list[str]:
    """The content words of a text: lowercased runs of letters longer than 3 letters, stopwords removed."""
    return [word for word in re.findall(r"[a-z]+", text.lower()) if len(word) > 3 and word not in STOPWORDS]


def support(answer: str, passages: Sequence[str]) -> float | None:
    """The share of the answer's content words found among the passages' (``None``: no content word)."""
    words = content_words(answer)
    if not words:
        return None
    known = set(content_words("\n".join(passages)))
    return sum(word in known for word in words) / len(words)


def score(answer: str, item: Question, passages: Sequence[str]) -> dict[str, Any]:
    """Faithfulness measures of one answer to one question's retrieved passages."""
    return {
        "answer": answer,
        "content_words": len(content_words(answer)),
        "support": support(answer, passages),
        "key_phrase": bool(_marker_pattern(item.answer_marker).search(answer)),
        "cites": bool(re.search(r"\[\d+\]", answer)),
    }


def aggregate(rows: Sequence[dict[str, Any]], name: str) -> dict[str, Any]:
    """Per answerer: mean and median support, share of supported answers, key-phrase rate, citing rate."""
    scored = [row[name] for row in rows]
    supports = [s["support"] for s in scored if s["support"] is not None]
    reachable = [row[name] for row in rows if row["marker_in_passages"]]
    return {
        "answers": len(scored),
        "mean_support": round(statistics.fmean(supports), 3) if supports else None,
        "median_support": round(statistics.median(supports), 3) if supports else None,
        f"share_support_ge_{SUPPORTED}": round(sum(s >= SUPPORTED for s in supports) / len(scored), 3),
        "key_phrase": f"{sum(s['key_phrase'] for s in reachable)} / {len(reachable)}",
        "key_phrase_rate": round(sum(s["key_phrase"] for s in reachable) / len(reachable), 3) if reachable else None,
        "cites_rate": round(sum(s["cites"] for s in scored) / len(scored), 3),
        "mean_content_words": round(statistics.fmean(s["content_words"] for s in scored), 1),
        "mean_seconds": round(statistics.fmean(s.get("seconds", 0.0) for s in scored), 2),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Retrieve once, answer with each model, score, print a summary and write the JSON results."""
    from kvemb_rag.demo import answer, grounded_answer, project_documents
    from kvemb_rag.engine.loader import load_causal_lm
    from kvemb_rag.engine.models import default_model, resolve_model
    from kvemb_rag.store import DEFAULT_MODE

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated generating models")
    parser.add_argument("--retriever", default=default_model(), help="the model that embeds and retrieves")
    parser.add_argument("--store", type=Path, help="store folder to (re)use (default: a temporary one)")
    parser.add_argument("--limit", type=int, help="only the first N questions (the demo's come first)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    demo = demo_questions()
    questions = [*demo, *(q for q in QUESTIONS if q.question not in DEMO_MARKERS)][: args.limit]

    began = time.perf_counter()
    documents = project_documents(REPO)
    llm, tokenizer, embedder = load_demo_embedder(args.retriever)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="kvemb-demo-answers-") as tmp:
        store = demo_store(args.store or Path(tmp) / "store", embedder, documents)
        try:
            for item in questions:
                hits = store.query(item.question, k=K)  # the demo's search: default mode, top 3 chunks
                passages = [hit.text for hit in hits]
                cited = grounded_answer(embedder, item.question, hits)
                rows.append(
                    {
                        "question": item.question,
                        "answer_marker": item.answer_marker,
                        "demo_question": item in demo,
                        "hits": [[hit.doc_id, hit.start, hit.end] for hit in hits],
                        "marker_in_passages": any(_marker_pattern(item.answer_marker).search(p) for p in passages),
                        "grounded": score(" ".join(f"{c.display} [{c.number}]" for c in cited), item, passages),
                        "_hits": hits,
                    }
                )
        finally:
            store.close()

    for model in models:
        if resolve_model(model) == resolve_model(args.retriever):
            gen_llm, gen_tokenizer = llm, tokenizer
        else:
            gen_llm, gen_tokenizer = load_causal_lm(resolve_model(model))
        for row in rows:
            t0 = time.perf_counter()
            text = answer(gen_llm, gen_tokenizer, row["question"], row["_hits"])
            item = Question(row["question"], row["answer_marker"])
            row[model] = {**score(text, item, [hit.text for hit in row["_hits"]]),
                          "seconds": round(time.perf_counter() - t0, 2)}
            print(f"{model} | {row['question']}\n    {' '.join(text.split())[:300]}\n"
                  f"    support {row[model]['support']}, key phrase {row[model]['key_phrase']}", flush=True)
        if gen_llm is not llm:
            del gen_llm, gen_tokenizer
            gc.collect()

    for row in rows:
        del row["_hits"]
    answerers = [*models, "grounded"]
    summary = {name: aggregate(rows, name) for name in answerers}
    print(f"\n{'answerer':<24} {'mean support':>12} {'>= ' + str(SUPPORTED):>8} {'key phrase':>11} {'cites':>6}")
    for name, s in summary.items():
        print(f"{name:<24} {s['mean_support']!s:>12} {s[f'share_support_ge_{SUPPORTED}']:>8} "
              f"{s['key_phrase']:>11} {s['cites_rate']:>6}")
    result = {
        "retriever": args.retriever,
        "search_mode": DEFAULT_MODE,
        "k": K,
        "summary": summary,
        "questions": rows,
        "threads": args.threads,
        "seconds": round(time.perf_counter() - began, 1),
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
