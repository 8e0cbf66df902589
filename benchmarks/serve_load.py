"""Load test of `kvemb serve`: mixed-length texts, 1 to 128 concurrent clients, then a 10x overload.

The server runs in its own process (`python -m kvemb_rag.cli serve`, the model loaded once); the clients are
threads of this process. The texts are windows of the calibration corpus with token counts drawn
log-uniformly (seeded) between `--min-tokens` and `--max-tokens` (8 to 4,000).

1. **Levels.** For each concurrency level (1, 8, 32, 128 clients, `openai` client, one text per request, every
   text once per level): throughput in tokens/s (template included, as the server counts them), as a ratio of
   offline `KVEmbedder.encode` of the same texts in this process (best of `--repeats`), and p50 / p99 latency.
   The server runs with `--max-concurrent-requests 512`, above every level: no request may be refused.
2. **Overload.** A second server with `--max-concurrent-requests 32` (`--overload-limit`) and 320 clients
   (`--overload-clients`, 10x) sending for `--overload-seconds`; a refused client waits the `Retry-After` the
   server gave (jittered) and sends again. Counts 429s and checks that every admitted request was answered
   with its vector (0 lost: no 5xx, no timeout, no broken connection), cross-checked against the server's own
   `/metrics`. Memory: the server's RSS when idle (after a warm-up that ran a full-budget engine call, so the
   engine's working memory is in it) against its peak during the overload (VmHWM, reset with
   `/proc/PID/clear_refs` after the idle reading, and VmRSS sampled every 20 ms).

Targets: at 32 clients >= 0.8x offline throughput; under 10x overload 0 admitted requests lost, 429 for the
rest, peak RSS <= 1.5x idle. Writes `--output` (JSON, with the markdown table) and prints the table.

    python -m benchmarks.serve_load [--model smollm2-135m-instruct] [--threads 1] [--device cpu] [--quick]

`--quick`: 48 texts of 8 to 1,000 tokens, levels 1, 8, 32, an overload of 80 clients on a limit of 8 for 5 s,
written to `benchmarks/serve_load_quick.json` (a smoke run of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "smollm2-135m-instruct"
FULL = {"texts": 128, "max_tokens": 4000, "levels": "1,8,32,128", "overload_limit": 32, "overload_seconds": 60.0}
QUICK = {"texts": 48, "max_tokens": 1000, "levels": "1,8,32", "overload_limit": 8, "overload_seconds": 5.0}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------------- texts
def mixed_texts(embedder: Any, n: int, low: int, high: int, seed: int) -> list[str]:
    """``n`` windows of the calibration corpus, lengths log-uniform in [low, high] tokens (without template)."""
    from kvemb_rag import default_calibration_texts

    ids = embedder.tokenizer("\n\n".join(default_calibration_texts()), add_special_tokens=False)["input_ids"]
    if len(ids) <= high:
        raise SystemExit(f"the calibration corpus has {len(ids)} tokens; --max-tokens must be below that")
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        length = round(math.exp(rng.uniform(math.log(low), math.log(high))))
        start = rng.randrange(0, len(ids) - length)
        text = embedder.tokenizer.decode(ids[start : start + length], skip_special_tokens=True).strip()
        if text:
            texts.append(text)
    return texts


# ------------------------------------------------------------------------------------------ server
class Server:
    """`python -m kvemb_rag.cli serve` in a subprocess; its log goes to a temporary file."""

    def __init__(self, model: str, env: dict[str, str], extra: list[str]) -> None:
        import httpx

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="kvemb-serve-", suffix=".log", delete=False)  # noqa: SIM115
        command = [sys.executable, "-m", "kvemb_rag.cli", "serve", "--model", model, "--port", str(self.port), *extra]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 900
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kvemb serve exited with {self.proc.returncode}:\n{self.tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kvemb serve did not start in 900 s:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(encoding="utf-8", errors="replace")[-chars:]

    def status_kb(self, field: str) -> int:
        """``VmRSS`` / ``VmHWM`` of the server process, in kB (from /proc/PID/status)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
        raise RuntimeError(f"/proc/{self.proc.pid}/status has no {field}")

    def reset_peak(self) -> bool:
        """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
        try:
            Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


class RssSampler(threading.Thread):
    """Samples the server's VmRSS every 20 ms until stopped; ``peak_kb`` is the largest reading."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak_kb = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                self.peak_kb = max(self.peak_kb, self.server.status_kb("VmRSS"))
            except (OSError, RuntimeError):
                return
            self.done.wait(0.02)


# ------------------------------------------------------------------------------------------ levels
def run_level(client: Any, model: str, texts: list[str], tokens: list[int], clients: int) -> dict[str, Any]:
    """Every text once, one per request, spread over ``clients`` threads; latency and throughput."""
    clients = min(clients, len(texts))
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        barrier.wait()
        for text in texts[k::clients]:
            t0 = time.perf_counter()
            client.embeddings.create(model=model, input=text)
            with lock:
                latencies.append(time.perf_counter() - t0)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(texts),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "tokens_per_s": round(sum(tokens) / wall, 1),
        "texts_per_s": round(len(texts) / wall, 2),
        "wall_s": round(wall, 2),
    }


# ---------------------------------------------------------------------------------------- overload
def run_overload(
    server: Server, model: str, texts: list[str], tokens: list[int], clients: int, seconds: float, seed: int
) -> dict[str, Any]:
    """``clients`` threads sending for ``seconds``; a 429 is followed by the server's Retry-After (jittered)."""
    import httpx

    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    embedded = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    http = httpx.Client(limits=limits, timeout=httpx.Timeout(900.0, connect=60.0))
    stop_at = [0.0]

    def worker(k: int) -> None:
        rng = random.Random(seed * 100_003 + k)
        i = k
        barrier.wait()
        while time.monotonic() < stop_at[0]:
            j = i % len(texts)
            i += clients
            t0 = time.perf_counter()
            try:
                response = http.post(
                    f"{server.url}/v1/embeddings",
                    json={"model": model, "input": texts[j], "encoding_format": "base64"},
                )
            except httpx.HTTPError as exc:  # admitted or not, unknown: counted as lost
                with lock:
                    outcomes[f"error:{type(exc).__name__}"] += 1
                continue
            elapsed = time.perf_counter() - t0
            if response.status_code == 429:
                with lock:
                    outcomes["429"] += 1
                time.sleep(float(response.headers.get("retry-after", "1")) * rng.uniform(0.5, 1.5))
                continue
            ok = response.status_code == 200 and len(response.json().get("data", [])) == 1
            with lock:
                outcomes["200" if ok else f"lost:{response.status_code}"] += 1
                if ok:
                    latencies.append(elapsed)
                    embedded[0] += tokens[j]

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    http.close()
    ms = np.array(latencies or [0.0]) * 1000
    lost = sum(n for key, n in outcomes.items() if key not in ("200", "429"))
    return {
        "clients": clients,
        "seconds": seconds,
        "wall_s": round(wall, 2),
        "answered_200": outcomes["200"],
        "refused_429": outcomes["429"],
        "admitted_lost": lost,
        "outcomes": dict(outcomes),
        "p50_ms_admitted": round(float(np.percentile(ms, 50)), 1),
        "p99_ms_admitted": round(float(np.percentile(ms, 99)), 1),
        "tokens_per_s": round(embedded[0] / wall, 1),
    }


def _sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def overload(args: argparse.Namespace, model: str, env: dict[str, str], texts: list[str], tokens: list[int],
             common: list[str]) -> dict[str, Any]:
    """The overload run on its own server (limit ``args.overload_limit``); RSS idle and peak."""
    import httpx

    server = Server(model, env, [*common, "--max-concurrent-requests", str(args.overload_limit)])
    try:
        rss_started = server.status_kb("VmRSS")
        # Warm-up: the longest texts in one request, so the engine runs full-budget calls once before "idle".
        order = sorted(range(len(texts)), key=lambda i: -tokens[i])
        warm, total = [], 0
        for i in order:
            if total >= 2 * args.max_batch_tokens:
                break
            warm.append(texts[i])
            total += tokens[i]
        response = httpx.post(f"{server.url}/v1/embeddings", json={"model": model, "input": warm}, timeout=900)
        response.raise_for_status()
        time.sleep(1.0)
        rss_idle = server.status_kb("VmRSS")
        hwm_reset = server.reset_peak()
        before = server.metrics()
        sampler = RssSampler(server)
        sampler.start()
        row = run_overload(server, model, texts, tokens, args.overload_clients, args.overload_seconds, args.seed)
        sampler.done.set()
        sampler.join()
        after = server.metrics()
        peak_hwm = server.status_kb("VmHWM") if hwm_reset else None
    except Exception:
        print(server.tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    peak = max(sampler.peak_kb, peak_hwm or 0)
    row.update(
        {
            "limit": args.overload_limit,
            "server_429": int(_sample(after, "kvemb_rejected_requests_total")
                              - _sample(before, "kvemb_rejected_requests_total")),
            "server_200": int(_sample(after, "kvemb_responses_total", code="200", **{"class": "2xx"})
                              - _sample(before, "kvemb_responses_total", code="200", **{"class": "2xx"})),
            "server_5xx": int(sum(v for (name, labels), v in after.items()
                                  if name == "kvemb_responses_total" and ("class", "5xx") in labels)),
            "warmup_tokens": total,
            "rss_after_start_mb": round(rss_started / 1024, 1),
            "rss_idle_mb": round(rss_idle / 1024, 1),
            "rss_peak_sampled_mb": round(sampler.peak_kb / 1024, 1),
            "rss_peak_hwm_mb": round(peak_hwm / 1024, 1) if peak_hwm is not None else None,
            "rss_peak_over_idle": round(peak / rss_idle, 3),
        }
    )
    return account(row)


def account(row: dict[str, Any]) -> dict[str, Any]:
    """Lost admitted requests from both sides' counts.

    A request is admitted when the server answers it with anything but 429; it is lost when the server
    sent no 200 for it, or sent one the client did not get. A client-side connection error on a request the
    server never counted (a keep-alive connection the server closed as the request left) was never
    admitted: it is reported apart, as ``connection_errors_not_admitted``.
    """
    outcomes = row["outcomes"]
    errors = sum(n for key, n in outcomes.items() if key.startswith("error:"))
    bad_answers = sum(n for key, n in outcomes.items() if key.startswith("lost:"))
    undelivered = max(0, row["server_200"] - row["answered_200"])
    row["admitted_lost"] = undelivered + row["server_5xx"] + bad_answers
    row["connection_errors_not_admitted"] = errors - min(errors, undelivered)
    return row


# -------------------------------------------------------------------------------------------- main
def _table(result: dict[str, Any]) -> str:
    lines = [
        f"Model: {result['model']}; {result['texts']} texts of {result['min_tokens']} to {result['max_tokens']} "
        f"tokens (seed {result['seed']}; {result['tokens_total']} tokens with templates, mean "
        f"{result['tokens_per_text_mean']}); torch threads {result['torch_threads']}; --max-batch-tokens "
        f"{result['max_batch_tokens']}; offline encode {result['offline_tokens_per_s']} tokens/s.",
        "",
        "| concurrent clients | requests | p50 latency (ms) | p99 latency (ms) | tokens/s | / offline encode |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["levels"]:
        lines.append(f"| {row['clients']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['tokens_per_s']} | {row['ratio_to_offline']:.2f} |")
    o = result["overload"]
    if o:
        hwm = "n/a" if o["rss_peak_hwm_mb"] is None else o["rss_peak_hwm_mb"]
        lines += [
            "",
            "| overload | clients / limit | answered 200 | refused 429 | admitted lost | connection errors, never "
            "admitted | p99 admitted (ms) | RSS idle (MB) | RSS peak (MB: HWM / sampled) | peak / idle |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {o['seconds']:g} s | {o['clients']} / {o['limit']} | {o['answered_200']} | {o['refused_429']} | "
            f"{o['admitted_lost']} | {o.get('connection_errors_not_admitted', 'n/a')} | {o['p99_ms_admitted']} | "
            f"{o['rss_idle_mb']} | {hwm} / "
            f"{o['rss_peak_sampled_mb']} | {o['rss_peak_over_idle']:.2f} |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or path (default {DEFAULT_MODEL})")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (see above)")
    parser.add_argument("--report", action="store_true", help="re-count and print the saved --output, no run")
    parser.add_argument("--texts", type=int, help="texts per level (default 128; --quick 48)")
    parser.add_argument("--min-tokens", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, help="default 4000; --quick 1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--levels", help="concurrent clients per level (default 1,8,32,128; --quick 1,8,32)")
    parser.add_argument("--repeats", type=int, default=2, help="offline encode runs (the best counts)")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--max-batch-tokens", type=int, default=16384)
    parser.add_argument("--overload-limit", type=int, help="--max-concurrent-requests of the overload run")
    parser.add_argument("--overload-clients", type=int, help="clients of the overload run (default 10x the limit)")
    parser.add_argument("--overload-seconds", type=float)
    parser.add_argument("--device", default=None, help="engine device of the baseline and the server")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch threads of the baseline and the server (OMP_NUM_THREADS); 1 on a shared machine, where "
        "OpenMP's spinning threads slow a contended multi-threaded run down many times",
    )
    parser.add_argument("--output", type=Path, help="default benchmarks/serve_load.json (--quick: _quick.json)")
    args = parser.parse_args()
    preset = QUICK if args.quick else FULL
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.overload_clients is None:
        args.overload_clients = 10 * args.overload_limit
    if args.output is None:
        args.output = REPO / ("benchmarks/serve_load_quick.json" if args.quick else "benchmarks/serve_load.json")
    if args.report:
        report(args.output)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import openai
    import torch

    from kvemb_rag import KVEmbedder

    torch.set_num_threads(args.threads)
    settings = {"device": args.device} if args.device else {}
    embedder = KVEmbedder(args.model, show_progress_bar=False, **settings)
    texts = mixed_texts(embedder, args.texts, args.min_tokens, args.max_tokens, args.seed)
    tokens = [embedder.count_tokens(t) for t in texts]  # with the document template, as the server counts
    embedder.encode_document(texts[:4])  # warm-up
    offline = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        expected = embedder.encode_document(texts)
        offline.append(time.perf_counter() - t0)
    offline_rate = sum(tokens) / min(offline)
    print(f"offline encode: {sum(tokens)} tokens in {min(offline):.2f} s", file=sys.stderr, flush=True)
    del embedder

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": str(args.threads),
    }
    common = ["--max-wait-ms", str(args.max_wait_ms), "--max-batch-tokens", str(args.max_batch_tokens)]
    common += ["--max-tokens-per-input", str(max(8192, max(tokens)))]
    if args.device:
        common += ["--device", args.device]
    levels = [int(c) for c in args.levels.split(",")]
    server = Server(args.model, env, [*common, "--max-concurrent-requests", str(max(512, *levels))])
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0, timeout=900)
        sample = sorted(range(len(texts)), key=lambda i: tokens[i])[:8]
        got = np.array([d.embedding for d in client.embeddings.create(
            model=args.model, input=[texts[i] for i in sample]).data])
        max_error = float(np.abs(got - expected[sample]).max())
        run_level(client, args.model, [texts[i] for i in sample], [tokens[i] for i in sample], 4)  # warm-up
        rows = []
        for clients in levels:
            row = run_level(client, args.model, texts, tokens, clients)
            row["ratio_to_offline"] = round(row["tokens_per_s"] / offline_rate, 3)
            rows.append(row)
            print(f"clients={clients}: {row}", file=sys.stderr, flush=True)
        refused = server.metrics().get(("kvemb_rejected_requests_total", ()), 0.0)
    except Exception:
        print(server.tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    over = overload(args, args.model, env, texts, tokens, common) if args.overload_clients else None
    if over:
        print(f"overload: {over}", file=sys.stderr, flush=True)

    at32 = next((r["ratio_to_offline"] for r in rows if r["clients"] == 32), None)
    result: dict[str, Any] = {
        "model": args.model,
        "quick": args.quick,
        "texts": len(texts),
        "min_tokens": args.min_tokens,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "tokens_total": sum(tokens),
        "tokens_per_text_mean": round(float(np.mean(tokens)), 1),
        "tokens_per_text_p50_p90_max": [int(np.percentile(tokens, 50)), int(np.percentile(tokens, 90)), max(tokens)],
        "offline_tokens_per_s": round(offline_rate, 1),
        "offline_s": [round(t, 3) for t in offline],
        "server_vs_engine_max_abs_error": max_error,
        "max_wait_ms": args.max_wait_ms,
        "max_batch_tokens": args.max_batch_tokens,
        "torch_threads": args.threads,
        "device": args.device or "default",
        "levels": rows,
        "levels_refused_429": int(refused),
        "overload": over,
        "targets": {
            "ratio_at_32_clients": at32,
            "ratio_at_32_clients_ge_0.8": None if at32 is None else at32 >= 0.8,
            "overload_0_admitted_lost": None if over is None else not over["admitted_lost"],
            "overload_peak_rss_le_1.5x_idle": None if over is None else over["rss_peak_over_idle"] <= 1.5,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "note": "the server, the clients and the offline baseline share the same CPUs",
        },
    }
    table = _table(result)
    result["table_md"] = table
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table)
    print(f"\ntargets: {json.dumps(result['targets'])}\nwritten: {args.output}")


def report(path: Path) -> None:
    """Re-count a saved run's overload (:func:`account`), re-write its targets and table, and print them."""
    result = json.loads(path.read_text(encoding="utf-8"))
    over = result["overload"]
    if over:
        account(over)
        result["targets"]["overload_0_admitted_lost"] = not over["admitted_lost"]
    result["table_md"] = _table(result)
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(result["table_md"])
    print(f"\ntargets: {json.dumps(result['targets'])}")


if __name__ == "__main__":
    main()
