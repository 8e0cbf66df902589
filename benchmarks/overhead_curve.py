"""Re-routing overhead against text length on the real models, float32 and bfloat16 (issue 19, item 2).

For each model and dtype, one text per length (256 to 4,096 tokens, cut from SciFact abstracts joined
end to end) is embedded alone, interleaved round by round, with:

* ``ablation``: the shipped settings without re-routing (``strategy="kv-ablation"``);
* ``kv``: the shipped ``kv`` settings (re-routed layers on SDPA's causal kernel, the engine as it is);
* ``kv-masked``: the same re-routing computed as before issue 19: the extended ``(T, T+1)`` float mask
  (:func:`kvemb_rag.engine.attention.extend_mask`), which leaves SDPA's causal fast path.

The overhead at a length is ``time(kv) / time(ablation)``, per round; the report gives the median and
the spread (min-max) over rounds, and the bfloat16 speed-up (``time(fp32) / time(bf16)``, ablation and kv
together). Ratios are measured in one run on one machine; never run as a test.

    .venv/bin/python -m benchmarks.overhead_curve --model smollm2-135m-instruct --model gemma-3-270m
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from kvemb_rag.engine import attention

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact" / "corpus.jsonl"
OUT = ROOT / "benchmarks" / "overhead_curve.json"
LENGTHS = (256, 1024, 2048, 3072, 4096)
VARIANTS = ("ablation", "kv", "kv-masked")
logger = logging.getLogger("overhead_curve")


def _masked(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bias: float, scaling: float | None, dropout_p: float
) -> torch.Tensor:
    """The pre-issue-19 computation: SDPA under the extended float mask, off the causal kernel."""
    B, H_q, T, _ = query.shape
    mask = attention.extend_mask(None, B, T, bias, query.dtype, query.device)  # (1, 1, T, T+1)
    return torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, dropout_p=dropout_p, scale=scaling, enable_gqa=H_q != key.shape[1]
    )  # (B, H_q, T, D)


@contextlib.contextmanager
def masked_kernel() -> Iterator[None]:
    """Run re-routed layers the way they ran before the causal-kernel path existed."""
    fast = attention._causal_with_slot
    attention._causal_with_slot = _masked
    try:
        yield
    finally:
        attention._causal_with_slot = fast


def texts_of_lengths(tokenizer: Any, lengths: Sequence[int]) -> dict[int, str]:
    """One text per length: SciFact abstracts joined, cut to about that many tokens (template excluded)."""
    words: list[str] = []
    with SCIFACT.open(encoding="utf-8") as f:
        for line in f:
            words.extend(json.loads(line)["text"].split())
            if len(words) > 4 * max(lengths):
                break
    ids = tokenizer(" ".join(words), add_special_tokens=False)["input_ids"]
    return {n: tokenizer.decode(ids[: n - 20]) for n in lengths}  # leave room for the template


def measure(model: str, dtype: str, rounds: int, lengths: Sequence[int] = LENGTHS) -> dict[str, Any]:
    """Seconds per (length, variant, round) for one model and dtype."""
    from kvemb_rag import KVEmbedder

    kv = KVEmbedder(model, dtype=dtype, show_progress_bar=False)
    engines = {"ablation": kv.with_options(strategy="kv-ablation"), "kv": kv, "kv-masked": kv}
    texts = texts_of_lengths(kv.tokenizer, lengths)
    tokens = {str(n): kv.count_tokens(t, "document") for n, t in texts.items()}
    times: dict[str, dict[str, list[float]]] = {str(n): {v: [] for v in VARIANTS} for n in lengths}
    for variant in VARIANTS:  # warm-up at the longest length
        _run(engines[variant], variant, texts[lengths[-1]])
    for r in range(rounds):
        for n in lengths:
            for variant in VARIANTS if r % 2 == 0 else reversed(VARIANTS):
                times[str(n)][variant].append(_run(engines[variant], variant, texts[n]))
        logger.info("%s %s: round %d done", model, dtype, r + 1)
    return {"model": Path(model).name, "dtype": dtype, "layers": list(kv.layers), "tokens": tokens, "seconds": times}


def _run(engine: Any, variant: str, text: str) -> float:
    with masked_kernel() if variant == "kv-masked" else contextlib.nullcontext():
        start = time.perf_counter()
        engine.encode([text], prompt_name="document")
        return time.perf_counter() - start


def summarise(runs: list[dict[str, Any]]) -> list[str]:
    """Markdown tables: overhead per length (median [min, max] over rounds), and the bf16 speed-up."""
    lines = [
        "| model | dtype | tokens | kv / ablation (causal kernel) | kv-masked / ablation (before) |",
        "|---|---|---|---|---|",
    ]
    for run in runs:
        for n, by in run["seconds"].items():
            cells = []
            for variant in ("kv", "kv-masked"):
                ratios = [a / b for a, b in zip(by[variant], by["ablation"], strict=True)]
                cells.append(f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}]")
            lines.append(f"| {run['model']} | {run['dtype']} | {run['tokens'][n]} | {cells[0]} | {cells[1]} |")
    lines += ["", "| model | tokens | fp32 / bf16 time (kv) | fp32 / bf16 time (ablation) |", "|---|---|---|---|"]
    by_key = {(r["model"], r["dtype"]): r for r in runs}
    for model in dict.fromkeys(r["model"] for r in runs):
        fp32, bf16 = by_key.get((model, "float32")), by_key.get((model, "bfloat16"))
        if fp32 is None or bf16 is None:
            continue
        for n in fp32["seconds"]:
            cells = [f"{sum(fp32['seconds'][n][v]) / sum(bf16['seconds'][n][v]):.2f}x" for v in ("kv", "ablation")]
            lines.append(f"| {model} | {fp32['tokens'][n]} | {cells[0]} | {cells[1]} |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="bundled name or path (repeatable)")
    parser.add_argument("--dtype", action="append", default=[], help="float32 and/or bfloat16 (default both)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS), help="tokens per text")
    parser.add_argument("--out", type=Path, default=OUT, help=f"results file (default {OUT.relative_to(ROOT)})")
    parser.add_argument("--report", action="store_true", help="print the tables of the saved run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.model:
        runs = [
            measure(m, d, args.rounds, args.lengths)
            for m in args.model
            for d in (args.dtype or ["float32", "bfloat16"])
        ]
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
        args.out.write_text(json.dumps({"machine": machine, "torch": torch.__version__, "runs": runs}, indent=1) + "\n")
    saved = json.loads(args.out.read_text())
    print("\n".join([f"Machine: {saved['machine']}, torch {saved['torch']}.", "", *summarise(saved["runs"])]))


if __name__ == "__main__":
    main()
