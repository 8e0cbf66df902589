"""Speed and memory benchmarks, as ratios measured in one run on this machine (`make bench`).

Subjects are random-init models with real shapes (speed does not depend on the weights): Qwen3-0.6B by
default (28 layers, 1024 hidden, 16/8 heads, head_dim 128, FFN 3072). Writes ``benchmarks/results.json``
and ``benchmarks/results.md`` (machine described at the top). Never run as a test.

    python -m benchmarks.run [--shape qwen3-0.6b] [--texts 16] [--words 90] [--rounds 3] [--bf16] [--out benchmarks/]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
STORIES_TOKENIZER = REPO.parent / "shared" / "data" / "models" / "stories260K" / "hf"
LAYERS_FOR_28 = [14, 15, 16]  # the window width the method's rule gives for L = 28 (floor(0.1 * 28) + 1 = 3)

# What Qwen3-0.6B and -1.7B share (their config.json files); the sizes differ.
_QWEN3 = dict(num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
              max_position_embeddings=40960)
SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=28, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=4096),
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072),
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144),
}

WORDS = [
    "the",
    "a",
    "model",
    "text",
    "retrieval",
    "memory",
    "layer",
    "token",
    "value",
    "key",
    "query",
    "document",
    "search",
    "answer",
    "question",
    "system",
    "river",
    "mountain",
    "city",
    "paper",
    "method",
    "result",
    "table",
    "figure",
    "number",
    "small",
    "large",
    "fast",
    "slow",
    "new",
    "old",
    "first",
    "last",
    "because",
    "while",
    "after",
    "before",
    "under",
    "over",
    "with",
    "without",
    "between",
]


def make_model(shape: str, directory: Path) -> Path:
    """Save a random-init model with real shapes plus a small real tokenizer (token ids < 512)."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(**SHAPES[shape], tie_word_embeddings=True)
    Qwen3ForCausalLM(config).save_pretrained(directory)
    tokenizer = AutoTokenizer.from_pretrained(STORIES_TOKENIZER)
    tokenizer.pad_token = tokenizer.unk_token  # sentence-transformers needs one to pad batches
    tokenizer.save_pretrained(directory)
    return directory


def make_texts(n: int, words: int, seed: int = 0) -> list[str]:
    """Deterministic texts of ``words`` ± 30% words."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(int(words * rng.uniform(0.7, 1.3)))) + "." for _ in range(n)]


def timed(fn: Callable[[], object], repeats: int = 2, warmup: bool = True) -> float:
    """Best wall time of ``repeats`` runs, after one warm-up run unless ``warmup`` is false."""
    if warmup:
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Measured dense matmul throughput of this machine (the 'peak' the model is compared against)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    seconds = timed(lambda: a @ b, repeats=5)
    return 2 * n**3 / seconds / 1e9


def forward_flops(config: dict[str, int], tokens: list[int]) -> float:
    """FLOPs of one forward pass of the base model over rows of the given token counts (no LM head)."""
    h, f, n_layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    hq, hkv, d = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]
    linear = 2 * (h * hq * d + 2 * h * hkv * d + hq * d * h + 3 * h * f)  # per token per layer
    total = 0.0
    for t in tokens:
        attention = 2 * 2 * hq * d * t * (t + 1) / 2  # QK^T and AV over the causal half
        total += n_layers * (linear * t + attention)
    return total


def peak_memory_child(model_dir: str, tokens: int, layers: list[int]) -> dict[str, float]:
    """Run in a fresh process: weights bytes, load high-water, RSS after load, peak RSS while encoding.

    Read from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), not ``getrusage``, whose high-water mark survives
    ``execve`` and so reports the parent benchmark's memory. The encode's own peak is read after resetting the
    high-water mark (``/proc/self/clear_refs``, value 5), so loading cannot hide it. transformers maps the
    safetensors file, so weight pages never touched (embedding rows of unused token ids) are not resident.
    """
    code = f"""
import json, re, torch
from pathlib import Path
torch.set_num_threads({torch.get_num_threads()})
from kvemb_rag import KVEmbedder
from benchmarks.run import make_texts
def status(field):
    return int(re.search(field + r":\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024
emb = KVEmbedder({model_dir!r}, layers={layers}, max_length={tokens}, cache_dir=None)
weights = sum(p.numel() * p.element_size() for p in emb.model.parameters())
load_peak = status("VmHWM")
text = make_texts(1, {tokens}, seed=7)[0]
while emb.count_tokens(text) < {tokens} - 40:
    text += " " + text
chunk = emb.chunk(text)[0]
after_load = status("VmRSS")
Path("/proc/self/clear_refs").write_text("5")
emb.encode_document(chunk.text)
peak = status("VmHWM")
print(json.dumps({{"weights": weights, "load_peak": load_peak, "after_load": after_load, "peak": peak,
                  "tokens": chunk.n_tokens}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> dict[str, object]:
    """A description of the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def run(
    shape: str, n_texts: int, words: int, bf16: bool, out_dir: Path, device: str, rounds: int = 3
) -> dict[str, object]:
    """Run every benchmark and return the results (also written to ``out_dir``)."""
    from sentence_transformers import SentenceTransformer, models

    from kvemb_rag import KVEmbedder
    from kvemb_rag.engine.batching import length_batches

    logging.basicConfig(level=logging.WARNING)
    results: dict[str, object] = {"machine": machine(), "shape": shape, "device": device}
    work = Path(tempfile.mkdtemp(prefix="kvemb-bench-"))
    model_dir = make_model(shape, work / shape)
    texts = make_texts(n_texts, words)
    dtype = "bfloat16" if device == "cuda" else "float32"
    common = dict(device=device, dtype=dtype, batch_size=16, max_length=4096, cache_dir=str(work / "cache"))
    kv = KVEmbedder(str(model_dir), layers=LAYERS_FOR_28, **common)
    off = kv.with_options(layers=[])  # the same engine, re-routing off
    echo = kv.with_options(strategy="echo")
    token_counts = [kv.count_tokens(t) for t in texts]
    echo_counts = [echo.count_tokens(t) for t in texts]
    n_tokens = sum(token_counts)
    results["texts"] = {"count": n_texts, "tokens_kv": n_tokens, "tokens_echo": sum(echo_counts)}

    def positions(max_padding: float) -> int:  # padded positions the forward passes compute
        return sum(len(b) * token_counts[b[0]] for b in length_batches(token_counts, 16, max_padding))

    results["padding"] = {
        "max_padding": kv.config.max_padding,
        "positions_kv": positions(kv.config.max_padding),
        "positions_fixed_batches": positions(1.0),  # sentence-transformers: sorted, cut every batch_size
    }

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def bench(fn: Callable[[], object], repeats: int = 2, warmup: bool = True) -> float:
        def wrapped() -> None:
            fn()
            sync()

        return timed(wrapped, repeats, warmup)

    # sentence-transformers on the same saved weights, last-token pooling, the same prompted texts.
    transformer = models.Transformer(str(model_dir), max_seq_length=4096, model_args={"dtype": getattr(torch, dtype)})
    transformer.tokenizer.padding_side = "right"
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="lasttoken")
    st = SentenceTransformer(modules=[transformer, pooling], device=device)
    prompted = [kv.format(t, "document") for t in texts]

    # Rounds alternate the subjects, so drift on a shared machine hits them alike; best time of each.
    subjects: dict[str, Callable[[], object]] = {
        "kv": lambda: kv.encode_document(texts),
        "no_reroute": lambda: off.encode_document(texts),
        "sentence_transformers": lambda: st.encode(prompted, batch_size=16, normalize_embeddings=True),
        "echo": lambda: echo.encode_document(texts),
    }
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for fn in subjects.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in subjects.items():
            times[name].append(bench(fn, repeats=1, warmup=False))
    results["times_s"] = times
    t_kv, t_off, t_st, t_echo = (min(times[name]) for name in subjects)

    peak = matmul_peak_gflops(torch.float32 if device == "cpu" else torch.bfloat16)
    achieved = forward_flops(SHAPES[shape], token_counts) / t_kv / 1e9
    results["speed"] = {
        "kv_tokens_per_s": n_tokens / t_kv,
        "no_reroute_tokens_per_s": n_tokens / t_off,
        "reroute_overhead_ratio": t_kv / t_off,
        "reroute_overhead_per_round": [a / b for a, b in zip(times["kv"], times["no_reroute"], strict=True)],
        "sentence_transformers_tokens_per_s": n_tokens / t_st,
        "speedup_vs_sentence_transformers": t_st / t_kv,
        "echo_time_ratio": t_echo / t_kv,
        "matmul_peak_gflops": peak,
        "achieved_gflops": achieved,
        "share_of_matmul_peak": achieved / peak,
    }
    if device == "cpu":
        mem = peak_memory_child(str(model_dir), 4096, LAYERS_FOR_28)
        results["memory_4096"] = {
            **mem,
            "peak_over_weights": mem["peak"] / mem["weights"],
            "encode_extra_over_weights": (mem["peak"] - mem["after_load"]) / mem["weights"],
            "load_peak_over_weights": mem["load_peak"] / mem["weights"],
        }
    if bf16 and device == "cpu":
        kv_bf16 = kv.with_options(dtype="bfloat16")
        t_bf16 = bench(lambda: kv_bf16.encode_document(texts))
        a = kv.encode_document(texts)
        b = kv_bf16.encode_document(texts)
        results["bf16_cpu"] = {
            "speed_ratio_vs_fp32": t_kv / t_bf16,
            "min_cosine_to_fp32": float(np.min(np.sum(a * b, axis=1))),
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cpu" else f"-{device}"
    (out_dir / f"results{suffix}.json").write_text(json.dumps(results, indent=2))
    (out_dir / f"results{suffix}.md").write_text(markdown(results))
    return results


def markdown(r: dict) -> str:  # type: ignore[type-arg]
    """The results as a markdown table with the machine described."""
    m, s = r["machine"], r["speed"]
    lines = [
        f"# Benchmarks ({r['shape']}, random init, {r['device']})",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), {m['memory_gib']} GiB, "
        f"Python {m['python']}, torch {m['torch']}" + (f", GPU {m['cuda']}" if m["cuda"] else "") + ".",
        f"Texts: {r['texts']['count']} documents, {r['texts']['tokens_kv']} tokens with the KV prompt; batches of"
        f" at most 16 compute {r['padding']['positions_kv']} positions with kvemb's padding budget"
        f" (max_padding={r['padding']['max_padding']}) and {r['padding']['positions_fixed_batches']} in fixed-size"
        " sorted batches (sentence-transformers).",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| re-routing overhead (time kv / time no re-routing) | {s['reroute_overhead_ratio']:.3f} | <= 1.03 |",
        "| the same, round by round | " + ", ".join(f"{x:.3f}" for x in s["reroute_overhead_per_round"]) + " | |",
        f"| speed-up vs sentence-transformers lasttoken, same weights | {s['speedup_vs_sentence_transformers']:.2f}x "
        "| >= 1.2x |",
        f"| echo time / kv time (about 2x the tokens) | {s['echo_time_ratio']:.2f} | ~2 |",
        f"| share of measured matmul peak ({s['achieved_gflops']:.0f} / {s['matmul_peak_gflops']:.0f} GFLOP/s) "
        f"| {s['share_of_matmul_peak']:.0%} | >= 80% |",
        f"| kv throughput | {s['kv_tokens_per_s']:.0f} tokens/s | |",
    ]
    if "memory_4096" in r:
        mem = r["memory_4096"]
        lines.append(
            f"| peak RSS encoding one {mem['tokens']}-token document / weights size "
            f"({mem['peak'] / 2**30:.2f} / {mem['weights'] / 2**30:.2f} GiB) | {mem['peak_over_weights']:.2f} "
            "| <= 1.5 |"
        )
        extra = mem["encode_extra_over_weights"]
        lines.append(f"| of which the encode itself (peak - RSS after load) / weights | {extra:.2f} | |")
        load = mem["load_peak_over_weights"]
        lines.append(f"| high-water after loading (weights mapped; untouched pages absent) / weights | {load:.2f} | |")
    if "bf16_cpu" in r:
        b = r["bf16_cpu"]
        lines.append(f"| bf16 on CPU: speed vs fp32 | {b['speed_ratio_vs_fp32']:.2f}x | >= 1.8x |")
        lines.append(f"| bf16 on CPU: min cosine to fp32 vectors | {b['min_cosine_to_fp32']:.5f} | >= 0.999 |")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="qwen3-0.6b", choices=sorted(SHAPES))
    parser.add_argument("--texts", type=int, default=16)
    parser.add_argument("--words", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, each running every subject once")
    parser.add_argument("--bf16", action="store_true", help="also measure bf16 on CPU (opt-in)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    results = run(args.shape, args.texts, args.words, args.bf16, args.out, args.device, args.rounds)
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main()
