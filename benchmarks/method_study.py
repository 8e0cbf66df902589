"""Ablation study of KV-Embedding's decisions on the real models, dev data only (issue 11).

Every configuration is a set of :class:`kvemb_rag.KVEmbedder` settings, scored on a fixed, seeded
subsample of the development data in ``../shared/data`` (never a test split):

* ``sts``: 150 STS-B **dev** pairs, Spearman of cosine similarity;
* ``retrieval``: SciFact **train** queries (20) and Cranfield queries (15), each over a sub-corpus of their
  relevant documents plus seeded distractors (70 and 100 documents), documents cut to their first 48 words; nDCG@10;
* ``classification``: Banking77 **train**, 4 utterances per intent (308), 4-fold logistic regression accuracy;
* ``clustering``: the same 308 utterances, k-means (k = 77) V-measure.

The criterion is the **dev average**: the mean of the four task families, each weighted equally. The
subsamples keep one configuration at about a minute of CPU for the 135M/270M models (400 tokens/s on
this machine's two cores); they are small, so differences under about 0.01 are noise.

Stages (each picks from the results of the previous one, by dev average):

1. templates without re-routing, hybrid pooling (and the paper's template at the intrinsic-dimension layers);
2. pooling (last, mean) with the best template, without re-routing (that row is the ablation of the best
   configuration);
3. the oracle: re-routing windows of the rule's width at six positions from first to last layer, best
   template and pooling;
4. the bias (0, 2; 1 is in the sweep) at the best window;
5. the baselines the package ships;
6. layer-selection variants (what the intrinsic dimension is measured on, calibration texts, rule), whose
   choices are scored by the nearest window of the sweep (no extra runs).

Results are appended to ``benchmarks/method_study/<model>.jsonl`` as they come; a re-run skips what is
done. Run in the background::

    nohup .venv/bin/python -m benchmarks.method_study --model smollm2-135m-instruct > study.log 2>&1 &

Then ``python -m benchmarks.method_study_report`` writes the tables and plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT_DIR = ROOT / "benchmarks" / "method_study"

logger = logging.getLogger("method_study")

FAMILIES = ("sts", "retrieval", "classification", "clustering")

# Templates compared in stage 1: (document side, query side); the chat variants are rendered per model.
COMPRESSION = ("Context: {text}\nCompress the Context in one word:", "Query: {text}\nCompress the Query in one word:")
TEMPLATES: dict[str, tuple[str, str]] = {
    "compression": COMPRESSION,
    "compression-no-newline": (
        "Context: {text} Compress the Context in one word:",
        "Query: {text} Compress the Query in one word:",
    ),
    "compression-quoted": ('"{text}" Compress the Context in one word:', '"{text}" Compress the Query in one word:'),
    "prompteol": ('This sentence : "{text}" means in one word:"', 'This sentence : "{text}" means in one word:"'),
}
CHAT_TEMPLATES = {"compression-chat": COMPRESSION}


@dataclass(frozen=True)
class DevSets:
    """The seeded development subsamples."""

    sts: Any
    retrieval: tuple[Any, ...]
    banking: Any


def _words(text: str, limit: int) -> str:
    words = text.split()
    return " ".join(words[:limit])


def _retrieval_subset(data: Any, num_queries: int, num_docs: int, words: int, seed: int) -> Any:
    from kvemb_rag.evaluation.data import RetrievalData

    rng = random.Random(seed)
    qids = sorted(data.qrels)
    rng.shuffle(qids)
    chosen: list[str] = []
    relevant: set[str] = set()
    for qid in qids:
        rels = {d for d, grade in data.qrels[qid].items() if grade > 0 and d in data.corpus}
        if not rels or len(relevant | rels) > (num_docs * 3) // 4:
            continue
        chosen.append(qid)
        relevant |= rels
        if len(chosen) == num_queries:
            break
    others = sorted(set(data.corpus) - relevant)
    rng.shuffle(others)
    doc_ids = sorted(relevant) + others[: num_docs - len(relevant)]
    corpus = {d: _words(data.corpus[d], words) for d in doc_ids}
    qrels = {q: {d: g for d, g in data.qrels[q].items() if d in corpus} for q in chosen}
    return RetrievalData(data.name, corpus, {q: data.queries[q] for q in chosen}, qrels)


def dev_sets(seed: int = 0) -> DevSets:
    """Build the subsamples (deterministic for a seed)."""
    from kvemb_rag.evaluation.data import LabelledTexts, STSData, load_beir, load_labelled_csv, load_sts

    sts = load_sts(DATA / "sts" / "STSBenchmark" / "sts-dev.csv")
    rows = list(range(len(sts.scores)))
    random.Random(seed).shuffle(rows)
    rows = sorted(rows[:150])
    sts = STSData(
        "stsb-dev",
        [sts.sentences1[i] for i in rows],
        [sts.sentences2[i] for i in rows],
        [sts.scores[i] for i in rows],
    )
    scifact = _retrieval_subset(load_beir(DATA / "scifact", split="train"), 20, 70, 48, seed)
    cranfield = _retrieval_subset(load_beir(DATA / "cranfield" / "beir", split="test"), 15, 100, 48, seed)
    banking = load_labelled_csv(DATA / "banking77" / "train.csv")
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(banking.labels):
        by_label.setdefault(label, []).append(i)
    rng = random.Random(seed)
    picked = sorted(i for label in sorted(by_label) for i in rng.sample(by_label[label], 4))
    banking = LabelledTexts("banking77-train", [banking.texts[i] for i in picked], [banking.labels[i] for i in picked])
    return DevSets(sts, (scifact, cranfield), banking)


def score(embedder: Any, dev: DevSets) -> dict[str, float]:
    """Every task score of one configuration."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from kvemb_rag.evaluation.metrics import exact_search, kmeans_v_measure, retrieval_scores
    from kvemb_rag.evaluation.tasks import evaluate_sts

    scores: dict[str, float] = {"sts": evaluate_sts(embedder, dev.sts, show_progress_bar=False)["spearman"]}
    for data in dev.retrieval:
        queries = embedder.encode_query(list(data.queries.values()), show_progress_bar=False)
        docs = embedder.encode_document(list(data.corpus.values()), show_progress_bar=False)
        run = exact_search(queries, docs, list(data.queries), list(data.corpus), top_k=100)
        scores[data.name] = retrieval_scores(data.qrels, run)["ndcg@10"]
    vectors = embedder.encode_document(dev.banking.texts, show_progress_bar=False)
    labels = np.asarray(dev.banking.labels)
    accuracies = []
    for train, test in StratifiedKFold(4, shuffle=True, random_state=0).split(vectors, labels):
        classifier = LogisticRegression(max_iter=200, random_state=0).fit(vectors[train], labels[train])
        accuracies.append(float((classifier.predict(vectors[test]) == labels[test]).mean()))
    scores["banking77-classification"] = float(np.mean(accuracies))
    scores["banking77-clustering"] = kmeans_v_measure(vectors, list(labels))
    return scores


def families(scores: dict[str, float]) -> dict[str, float]:
    """Task scores averaged per family."""
    retrieval = [v for k, v in scores.items() if k in ("scifact", "cranfield")]
    return {
        "sts": scores["sts"],
        "retrieval": float(np.mean(retrieval)),
        "classification": scores["banking77-classification"],
        "clustering": scores["banking77-clustering"],
    }


def chat_template(tokenizer: Any, template: str) -> str | None:
    """``template`` wrapped in the model's chat template as a user turn, or ``None`` when it has none."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "\x00TEXT\x00"
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": template.replace("{text}", marker)}], add_generation_prompt=True, tokenize=False
    )
    bos = tokenizer.bos_token
    if bos and rendered.startswith(bos) and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]:
        rendered = rendered[len(bos) :]  # the tokenizer adds BOS itself
    return str(rendered.replace("{", "{{").replace("}", "}}").replace(marker, "{text}"))


class Study:
    """One model's study: configurations run once each, results appended to a JSONL file."""

    def __init__(self, model: str, out: Path, dev: DevSets) -> None:
        from kvemb_rag import KVEmbedder

        self.model = model
        self.out = out
        self.dev = dev
        self.base = KVEmbedder(model, strategy="kv-ablation", batch_size=32, show_progress_bar=False)
        self.num_layers = int(self.base._loaded.num_layers)
        self.rows: dict[str, dict[str, Any]] = {}
        if out.is_file():
            for line in out.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["config"]] = row
        self.templates = dict(TEMPLATES)
        for name, (doc, query) in CHAT_TEMPLATES.items():
            wrapped = (chat_template(self.base.tokenizer, doc), chat_template(self.base.tokenizer, query))
            if wrapped[0] is not None and wrapped[1] is not None:
                self.templates[name] = (wrapped[0], wrapped[1])
            else:
                logger.warning("%s has no chat template; skipping %s", model, name)

    def run(self, name: str, stage: str, **settings: Any) -> dict[str, Any]:
        """Score one configuration (or return its recorded row)."""
        if name in self.rows:
            return self.rows[name]
        start = time.perf_counter()
        embedder = self.base.with_options(**settings)
        scores = score(embedder, self.dev)
        fam = families(scores)
        row = {
            "model": self.model,
            "config": name,
            "stage": stage,
            "settings": settings,
            "layers": list(embedder.layers),
            "id_curve": embedder.id_curve,
            "scores": scores,
            "families": fam,
            "dev_avg": float(np.mean(list(fam.values()))),
            "seconds": round(time.perf_counter() - start, 1),
        }
        with self.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.rows[name] = row
        logger.info("%s %-40s dev %.4s %s layers=%s (%.0f s)", self.model, name, row["dev_avg"], fam, row["layers"],
                    row["seconds"])
        return row

    def best(self, names: Sequence[str]) -> str:
        return max(names, key=lambda n: self.rows[n]["dev_avg"])

    def window_width(self) -> int:
        return math.floor(0.1 * self.num_layers) + 1

    def windows(self) -> list[tuple[int, ...]]:
        """Windows of the rule's width, starting every ``max(width, ceil(L / 5))`` layers, the last one ending at
        the last layer (SmolLM2, L = 30: starts 0, 6, ..., 24, 26; Gemma-3-270M, L = 18: 0, 4, ..., 16)."""
        width = self.window_width()
        step = max(width, math.ceil(self.num_layers / 5))
        starts = list(range(0, self.num_layers - width + 1, step))
        if starts[-1] + width < self.num_layers:
            starts.append(self.num_layers - width)
        return [tuple(range(s, s + width)) for s in starts]


def run_study(study: Study, template: str | None = None, pooling: str | None = None) -> None:
    """The six stages (see the module docstring).

    ``template`` and ``pooling`` override the choices of stages 1 and 2 for the later stages, to study both
    models at the cross-model choice (the best on the average of the two models).
    """
    forced_template, forced_pooling = template, pooling
    # 1. templates without re-routing (the intrinsic-dimension layers once, with the paper's template)
    for name, (doc, query) in study.templates.items():
        study.run(f"tpl={name}|no-reroute", "templates", strategy="kv-ablation", document_template=doc,
                  query_template=query)
    study.run("tpl=compression|id-layers", "templates", strategy="kv")
    template = forced_template or max(study.templates, key=lambda n: study.rows[f"tpl={n}|no-reroute"]["dev_avg"])
    doc, query = study.templates[template]
    t = {"document_template": doc, "query_template": query}
    # 2. pooling, without re-routing
    poolings = ["last", "mean"] if forced_pooling is None else [forced_pooling] if forced_pooling != "hybrid" else []
    for pooling in poolings:
        study.run(f"tpl={template}|no-reroute|pool={pooling}", "pooling", strategy="kv-ablation", pooling=pooling,
                  **t)
    pool_rows = {"hybrid": f"tpl={template}|no-reroute"}
    pool_rows.update({p: f"tpl={template}|no-reroute|pool={p}" for p in ("last", "mean")})
    pooling = forced_pooling or max(pool_rows, key=lambda p: study.rows[pool_rows[p]]["dev_avg"])
    p = {"pooling": pooling}
    # 3. oracle sweep of windows
    sweep = []
    for window in study.windows():
        name = f"tpl={template}|pool={pooling}|layers={window[0]}-{window[-1]}"
        study.run(name, "layers", strategy="kv", layers=list(window), **t, **p)
        sweep.append(name)
    best_window = study.rows[study.best(sweep)]["layers"]
    # 4. bias
    for bias in (0.0, 2.0):
        name = f"tpl={template}|pool={pooling}|layers={best_window[0]}-{best_window[-1]}|bias={bias:g}"
        study.run(name, "bias", strategy="kv", layers=best_window, bias=bias, **t, **p)
    # 5. baselines and the ablation of the best configuration
    for strategy in ("last", "mean", "prompteol", "echo"):
        same = "tpl=prompteol|no-reroute|pool=last"
        if strategy == "prompteol" and same in study.rows:
            # The same vectors: PromptEOL's template on both sides, last-token pooling, no re-routing.
            study.rows.setdefault(
                "baseline=prompteol", {**study.rows[same], "config": "baseline=prompteol", "stage": "baselines"}
            )
            continue
        study.run(f"baseline={strategy}", "baselines", strategy=strategy)
    # 6. layer-selection variants: their picks are scored by the sweep's nearest window (no extra runs)
    write_variants(study, doc, sweep)


def _calibration_states(embedder: Any, template: str, texts: Sequence[str]) -> tuple[list[Any], list[Any], list[Any]]:
    """Last-token states entering and leaving every layer, and mean-pooled entering states."""
    import torch

    tok = embedder.tokenizer
    rows = [tok(template.format(text=t))["input_ids"] for t in texts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    L = embedder._loaded.num_layers
    enter: list[list[Any]] = [[] for _ in range(L)]
    leave: list[list[Any]] = [[] for _ in range(L)]
    mean: list[list[Any]] = [[] for _ in range(L)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for start in range(0, len(order), 32):
        batch = [rows[i] for i in order[start : start + 32]]
        T = max(len(r) for r in batch)
        ids = torch.tensor([r + [pad] * (T - len(r)) for r in batch])  # (B, T) right-padded
        mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in batch])  # (B, T)
        last = torch.tensor([len(r) - 1 for r in batch])  # (B,)
        with torch.inference_mode():
            out = embedder.model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
        b = torch.arange(len(batch))
        w = mask.unsqueeze(-1).float()  # (B, T, 1)
        for layer in range(L):
            h_in = out.hidden_states[layer].float()  # (B, T, H)
            enter[layer].append(h_in[b, last])
            leave[layer].append(out.hidden_states[layer + 1].float()[b, last])
            mean[layer].append((h_in * w).sum(1) / w.sum(1))
    cat = lambda parts: [torch.cat(p) for p in parts]  # noqa: E731
    return cat(enter), cat(leave), cat(mean)


def natural_calibration_texts(count: int = 1000, seed: int = 0) -> list[str]:
    """Natural sentences for calibration: STS-B **train** sentences (never the dev pairs scored here)."""
    from kvemb_rag.evaluation.data import load_sts

    train = load_sts(DATA / "sts" / "STSBenchmark" / "sts-train.csv")
    sentences = sorted(set(train.sentences1) | set(train.sentences2))
    return random.Random(seed).sample(sentences, count)


def _curves(study: Study, doc_template: str) -> dict[str, list[float]]:
    from kvemb_rag.engine.calibration import default_calibration_texts
    from kvemb_rag.engine.layers import twonn_dimension

    cache = study.out.with_suffix(".curves.json")
    if cache.is_file():
        return dict(json.loads(cache.read_text()))
    curves: dict[str, list[float]] = {}
    for texts_name, texts in (("synthetic", default_calibration_texts(1000)), ("natural", natural_calibration_texts())):
        enter, leave, mean = _calibration_states(study.base, doc_template, texts)
        for state, parts in (("last-entering", enter), ("last-leaving", leave), ("mean-entering", mean)):
            curves[f"{texts_name}|{state}"] = [twonn_dimension(p.numpy()) for p in parts]
            logger.info("ID %s|%s: %s", texts_name, state, [round(v, 1) for v in curves[f"{texts_name}|{state}"]])
    cache.write_text(json.dumps(curves))
    return curves


RULES: dict[str, Callable[[int], tuple[float, float]]] = {
    "paper (skip 0.2, window 0.1)": lambda L: (0.2, 0.1),
    "skip 0.1": lambda L: (0.1, 0.1),
    "skip 0": lambda L: (0.0, 0.1),
}


def selection_variants(study: Study, doc_template: str) -> dict[str, tuple[int, ...]]:
    """Layers each (texts, state, rule) variant of the ID selection picks."""
    from kvemb_rag.engine.config import LayerSelectionConfig
    from kvemb_rag.engine.layers import select_window

    picks: dict[str, tuple[int, ...]] = {}
    for curve_name, curve in _curves(study, doc_template).items():
        for rule_name, rule in RULES.items():
            skip, window = rule(study.num_layers)
            layers = select_window(curve, LayerSelectionConfig(skip_fraction=skip, window_fraction=window))
            picks[f"{curve_name}|{rule_name}"] = layers
    return picks


def write_variants(study: Study, doc_template: str, sweep: Sequence[str]) -> None:
    """Write every variant's ID curve, its pick, and the sweep window nearest to the pick with its score."""
    curves = _curves(study, doc_template)
    picks = {}
    for name, layers in selection_variants(study, doc_template).items():
        nearest = min(sweep, key=lambda n: abs(np.mean(study.rows[n]["layers"]) - np.mean(layers)))
        picks[name] = {
            "layers": list(layers),
            "nearest_window": study.rows[nearest]["layers"],
            "nearest_dev_avg": study.rows[nearest]["dev_avg"],
        }
    path = study.out.with_suffix(".variants.json")
    path.write_text(json.dumps({"curves": curves, "picks": picks}, indent=1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="bundled name or path, e.g. smollm2-135m-instruct")
    parser.add_argument("--key", help="file stem for the results; default the model name")
    parser.add_argument("--template", choices=[*TEMPLATES, *CHAT_TEMPLATES], help="template of stages 3-6")
    parser.add_argument("--pooling", choices=["hybrid", "last", "mean"], help="pooling of stages 3-6")
    parser.add_argument("--threads", type=int, help="torch threads (to run two models side by side)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    key = args.key or Path(args.model).name.removesuffix(".gguf")
    study = Study(args.model, OUT_DIR / f"{key}.jsonl", dev_sets())
    run_study(study, args.template, args.pooling)
    logger.info("done: %d configurations in %s", len(study.rows), study.out)


if __name__ == "__main__":
    main()
