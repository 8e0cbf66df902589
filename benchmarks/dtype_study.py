"""bfloat16 against float32 on the real models: dev quality per task family, with paired intervals (issue 19).

Each model embeds the same dev texts twice with its shipped defaults, once per dtype, and every task is
scored per item (:mod:`benchmarks.dev_eval`: STS-B dev, SciFact and Cranfield samples, Banking77
classification and clustering), so the difference bf16 - fp32 gets a 95% paired-bootstrap interval.

The vectors of each run are kept (``benchmarks/dtype_study/vectors/<model>.<dtype>.npz``, not committed), so
a stopped study resumes where it was, and the report also gives the cosine between the two dtypes' vectors.

    nohup .venv/bin/python -m benchmarks.dtype_study --model smollm2-135m-instruct > dtype.log 2>&1 &
    .venv/bin/python -m benchmarks.dtype_study --report     # tables from the saved runs
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.dev_eval import compare, dev_data, embed_all, per_item

OUT_DIR = Path(__file__).resolve().parent / "dtype_study"
DTYPES = ("bfloat16", "float32")
logger = logging.getLogger("dtype_study")


def _path(model: str, dtype: str) -> Path:
    return OUT_DIR / "vectors" / f"{Path(model).name}.{dtype}.npz"  # not committed (.gitignore)


def run(model: str, dev: dict[str, Any]) -> None:
    """Embed with each dtype (skipping saved runs), then write the comparison."""
    (OUT_DIR / "vectors").mkdir(parents=True, exist_ok=True)
    for dtype in DTYPES:
        path = _path(model, dtype)
        if not path.exists():
            from kvemb_rag import KVEmbedder

            vectors = embed_all(KVEmbedder(model, dtype=dtype, show_progress_bar=False), dev)
            np.savez(path.with_suffix(".tmp.npz"), **vectors)
            path.with_suffix(".tmp.npz").rename(path)
    report_model(model, dev)


def report_model(model: str, dev: dict[str, Any]) -> dict[str, Any]:
    """The comparison of one model's two saved runs (written to ``<model>.json``)."""
    loaded = {d: dict(np.load(_path(model, d))) for d in DTYPES}
    fp32, bf16 = (per_item(loaded[d], dev) for d in ("float32", "bfloat16"))
    keys = [k for k in loaded["float32"] if k != "seconds"]
    cosines = np.concatenate([np.sum(loaded["float32"][k] * loaded["bfloat16"][k], axis=1) for k in keys])
    result = {
        "model": Path(model).name,
        "families": compare(fp32, bf16, dev),
        "vector_cosine": {
            "min": float(cosines.min()),
            "p1": float(np.percentile(cosines, 1)),
            "mean": float(cosines.mean()),
            "count": int(cosines.size),
        },
        "seconds": {d: float(loaded[d]["seconds"]) for d in DTYPES},
    }
    (OUT_DIR / f"{Path(model).name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def report() -> str:
    """Markdown table of every model's comparison."""
    lines = ["| model | family | float32 | bfloat16 | bf16 - fp32 [95% CI] |", "|---|---|---|---|---|"]
    for path in sorted(OUT_DIR.glob("*.json")):
        r = json.loads(path.read_text())
        for f, s in r["families"].items():
            lines.append(
                f"| {r['model']} | {f} | {s['a']:.4f} | {s['b']:.4f} | "
                f"{s['diff']:+.4f} [{s['low']:+.4f}, {s['high']:+.4f}] |"
            )
        c = r["vector_cosine"]
        lines.append(
            f"| {r['model']} | vector cosine fp32 vs bf16 | min {c['min']:.5f} | mean {c['mean']:.5f} "
            f"| {c['count']} vectors |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="bundled name or path (repeatable)")
    parser.add_argument("--report", action="store_true", help="print the tables of the saved runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.model:
        dev = dev_data()
        for model in args.model:
            run(model, dev)
    if args.report or not args.model:
        print(report())


if __name__ == "__main__":
    main()
