"""STS-B dev/test Spearman and encode wall time per strategy, plus a per-layer sweep of `kv`.

    python -m benchmarks.sts_strategies [--model DIR] [--out benchmarks/sts_stories260k.json]

Default model: the tiny trained stories260K beside the repository. The sweep re-routes one layer at a
time (and the auto-selected window) to show where the intrinsic-dimension choice lands among all layers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from kvemb_rag import STRATEGIES, KVEmbedder
from kvemb_rag.evaluation.data import load_sts
from kvemb_rag.evaluation.tasks import evaluate_sts

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DATA / "models" / "stories260K" / "hf"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "sts_stories260k.json")
    args = parser.parse_args()
    dev = load_sts(DATA / "sts" / "STSBenchmark" / "sts-dev.csv")
    test = load_sts(DATA / "sts" / "STSBenchmark" / "sts-test.csv")
    base = KVEmbedder(args.model, batch_size=64, show_progress_bar=False)
    rows = []
    variants = [(s, None) for s in STRATEGIES]
    variants += [("kv", [layer]) for layer in range(base._loaded.num_layers)]
    for strategy, layers in variants:
        emb = base.with_options(strategy=strategy, layers=layers if layers is not None else "auto")
        start = time.perf_counter()
        test_rho = evaluate_sts(emb, test)["spearman"]
        seconds = time.perf_counter() - start
        dev_rho = evaluate_sts(emb, dev)["spearman"]
        row = {"strategy": strategy, "layers": list(emb.layers), "auto": layers is None, "dev": dev_rho,
               "test": test_rho, "test_encode_seconds": seconds}
        rows.append(row)
        print(json.dumps(row))
    args.out.write_text(json.dumps({"model": args.model, "id_curve": base.id_curve, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
