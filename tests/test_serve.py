"""`kvemb serve`: a real uvicorn server on 127.0.0.1, the real `openai` client, the tiny model; no mocks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from kvemb_rag import KVEmbedder  # noqa: E402
from kvemb_rag.engine.inputs import TokenizedText  # noqa: E402
from kvemb_rag.serve import ServeLimits, create_app  # noqa: E402
from tests.conftest import _free_port  # noqa: E402

KEY = "test-key"
NAME = "tiny"
LIMITS = ServeLimits(max_inputs=16, max_tokens_per_input=64, max_batch=32, max_wait_ms=20)
TEXTS = ["The cat sat on the mat.", "Bread dough rises because of yeast.", "A boat on the river at night."]


@dataclass
class Served:
    url: str
    app: Any
    engine: Any = None

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, body: Any, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        if raw is not None:
            headers["Content-Type"] = "application/json"
            return httpx.post(f"{self.url}/v1/embeddings", content=raw, headers=headers, timeout=60)
        return httpx.post(f"{self.url}/v1/embeddings", json=body, headers=headers, timeout=60)


class GatedEngine:
    """The real tiny embedder, its engine calls recorded and held at a gate (a wrapper: the model is real).

    ``encode_tokenized`` waits for ``gate`` (set by default), so a test can hold the engine busy
    deterministically; ``entered`` is set once a call has started; ``tokenized`` counts tokenisations.
    """

    def __init__(self, inner: KVEmbedder) -> None:
        self._inner = inner
        self.calls: list[tuple[list[str], str]] = []
        self.tokenized = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def tokenize(self, texts: list[str], prompt_name: str | None = None) -> list[TokenizedText]:
        self.tokenized += 1
        return self._inner.tokenize(texts, prompt_name)

    def encode_tokenized(self, inputs: list[TokenizedText], **kwargs: Any) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(120), "the test never opened the gate"
        (side,) = {item.side for item in inputs}  # the server makes one engine call per side
        self.calls.append(([item.text for item in inputs], side))
        return self._inner.encode_tokenized(inputs, **kwargs)

    def replayed(self, since: int = 0) -> dict[tuple[str, str], np.ndarray]:
        """Each text's vector from the engine, re-run on the calls the server made since call ``since``.

        The same batches, so the same rounding: where the engine computes in bfloat16, a text's vector moves by
        up to ~3e-3 with its batch's padding, which is the engine's business, not the server's.
        """
        vectors = {}
        for texts, side in self.calls[since:]:
            for text, vector in zip(texts, self._inner.encode(texts, prompt_name=side), strict=True):
                vectors[(text, side)] = vector
        return vectors


@contextmanager
def _serving(app: Any) -> Iterator[Served]:
    """``app`` on a real uvicorn server in a thread of this process, on a free loopback port."""
    port = _free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", app)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def server(tiny_embedder: KVEmbedder) -> Iterator[Served]:
    engine = GatedEngine(tiny_embedder)  # the gate stays open: it records the engine calls
    with _serving(create_app(engine, model_name=NAME, api_key=KEY, limits=LIMITS)) as served:  # type: ignore[arg-type]
        served.engine = engine
        yield served


def test_vectors_equal_the_engine_on_both_sides(server: Served, tiny_embedder: KVEmbedder) -> None:
    client = server.client()
    for side in ("document", "query"):
        expected = tiny_embedder.encode(TEXTS, prompt_name=side)
        for fmt in ("float", "base64"):
            response = client.embeddings.create(
                model=NAME,
                input=TEXTS,
                encoding_format=fmt,
                extra_body={"input_type": side},  # type: ignore[arg-type]
            )
            assert [d.index for d in response.data] == [0, 1, 2]
            if fmt == "base64":  # asked for explicitly, the client returns the strings as sent
                got = np.stack([np.frombuffer(base64.b64decode(str(d.embedding)), "<f4") for d in response.data])
            else:
                got = np.array([d.embedding for d in response.data])
            np.testing.assert_allclose(got, expected, atol=1e-5)
    # No input_type: the document side; no encoding_format: the client asks for base64 and decodes it.
    response = client.embeddings.create(model=NAME, input=TEXTS[0])
    np.testing.assert_allclose(response.data[0].embedding, tiny_embedder.encode_document(TEXTS[0]), atol=1e-5)
    counted = sum(tiny_embedder.count_tokens(t) for t in TEXTS)
    usage = client.embeddings.create(model=NAME, input=TEXTS).usage
    assert (usage.prompt_tokens, usage.total_tokens) == (counted, counted)


def test_base64_is_little_endian_float32(server: Served, tiny_embedder: KVEmbedder) -> None:
    body = server.post({"model": NAME, "input": TEXTS[:2], "encoding_format": "base64", "input_type": "query"})
    assert body.status_code == 200, body.text
    data = body.json()
    assert data["object"] == "list" and data["model"] == NAME
    got = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data["data"]])
    np.testing.assert_allclose(got, tiny_embedder.encode_query(TEXTS[:2]), atol=1e-5)


def test_models_and_health(server: Served, tiny_embedder: KVEmbedder) -> None:
    assert [m.id for m in server.client().models.list()] == [NAME]
    assert server.client().models.retrieve(NAME).id == NAME
    health = httpx.get(f"{server.url}/health", timeout=10)  # no key needed
    assert health.json() == {"status": "ok", "model": NAME, "dimensions": tiny_embedder.dim}


def test_api_key_is_required(server: Served) -> None:
    with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
        server.client("wrong").embeddings.create(model=NAME, input="hello")
    for key, needle in ((None, "Missing API key"), ("wrong", "Incorrect API key")):
        response = server.post({"model": NAME, "input": "hello"}, key=key)
        assert response.status_code == 401
        assert needle in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models", timeout=10).status_code == 401


LONG = "word " * 200
BAD_INPUTS: list[tuple[str, Any, int, str, str | None]] = [
    ("empty list", {"model": NAME, "input": []}, 400, "empty list", "input"),
    ("empty string", {"model": NAME, "input": ""}, 400, "input[0] is empty", "input"),
    ("blank item", {"model": NAME, "input": ["fine", "   "]}, 400, "input[1] is empty", "input"),
    ("non-string item", {"model": NAME, "input": ["fine", 3]}, 400, "input[1] is a int", "input"),
    ("token ids", {"model": NAME, "input": [[1, 2, 3]]}, 400, "token-id arrays are not supported", "input"),
    ("not a list", {"model": NAME, "input": {"text": "x"}}, 400, "a string or a list of strings", "input"),
    ("missing input", {"model": NAME}, 400, "Missing 'input'", "input"),
    ("too many", {"model": NAME, "input": ["x"] * 17}, 400, "at most 16 per request", "input"),
    ("too long", {"model": NAME, "input": ["short", LONG]}, 400, "input[1] has", "input"),
    ("unknown model", {"model": "text-embedding-3-small", "input": "x"}, 404, f"it serves {NAME!r}", "model"),
    ("dimensions", {"model": NAME, "input": "x", "dimensions": 7}, 400, "dimensions=7 is not available", "dimensions"),
    ("encoding", {"model": NAME, "input": "x", "encoding_format": "int8"}, 400, "encoding_format", "encoding_format"),
    ("input_type", {"model": NAME, "input": "x", "input_type": "passage"}, 400, "input_type", "input_type"),
    ("no model", {"input": "x"}, 400, "model", "model"),
]


@pytest.mark.parametrize(("case", "body", "status", "needle", "param"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_an_openai_error_and_the_server_keeps_serving(
    server: Served, case: str, body: Any, status: int, needle: str, param: str | None
) -> None:
    response = server.post(body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error["message"], error
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert server.post({"model": NAME, "input": "still serving"}).status_code == 200


def test_bad_json_and_the_openai_client_error(server: Served) -> None:
    response = server.post(None, raw=b"{not json")
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="limit is 64 tokens per input"):
        server.client().embeddings.create(model=NAME, input=LONG)
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        server.client().embeddings.create(model="gpt-x", input="hello")
    assert httpx.get(f"{server.url}/v2/nothing", timeout=10).json()["error"]["message"].startswith("No route")


def test_32_concurrent_clients_each_get_their_own_vector(server: Served, tiny_embedder: KVEmbedder) -> None:
    texts = [f"Client number {i} asks about the {('cat', 'boat', 'moon', 'bread')[i % 4]}." for i in range(32)]
    sides = ["query" if i % 3 == 0 else "document" for i in range(32)]
    client = server.client()  # one httpx pool shared by the threads, as an application would
    before = server.app.state.batcher.stats.calls, server.app.state.batcher.stats.texts
    since = len(server.engine.calls)
    barrier = threading.Barrier(32)

    def ask(i: int) -> list[float]:
        barrier.wait()
        response = client.embeddings.create(model=NAME, input=texts[i], extra_body={"input_type": sides[i]})
        return list(response.data[0].embedding)

    with ThreadPoolExecutor(32) as pool:
        got = np.array(list(pool.map(ask, range(32))))
    replayed = server.engine.replayed(since)  # the engine on the server's own batches
    np.testing.assert_allclose(got, [replayed[(texts[i], sides[i])] for i in range(32)], atol=1e-5)
    for side in ("query", "document"):  # and within the engine's rounding of any other batching
        rows = [i for i in range(32) if sides[i] == side]
        expected = tiny_embedder.encode([texts[i] for i in rows], prompt_name=side)
        np.testing.assert_allclose(got[rows], expected, atol=1e-2)
    calls = server.app.state.batcher.stats.calls - before[0]
    assert server.app.state.batcher.stats.texts - before[1] == 32
    assert calls < 32, f"32 concurrent requests were not coalesced ({calls} engine calls)"


def test_chroma_openai_embedding_function(server: Served, tiny_embedder: KVEmbedder) -> None:
    from chromadb.utils.embedding_functions import OpenAIEmbeddingFunction

    # Chroma may warn that a key passed directly is not persisted: its concern, not what this test checks.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ef = OpenAIEmbeddingFunction(api_key=KEY, model_name=NAME, api_base=f"{server.url}/v1")
    got = np.array(ef(TEXTS))
    np.testing.assert_allclose(got, tiny_embedder.encode_document(TEXTS), atol=1e-5)


def test_cli_serve_binds_loopback_and_answers(
    tiny_model_path: Path, subprocess_env: dict[str, str], tiny_embedder: KVEmbedder
) -> None:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "kvemb_rag.cli",
        "serve",
        "--model",
        str(tiny_model_path),
        "--port",
        str(port),
        "--max-batch-tokens",
        "4096",
        "--max-concurrent-requests",
        "8",
    ]
    env = {**subprocess_env, "KVEMB_API_KEY": "from-env"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "kvemb serve did not come up in 180 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="from-env", max_retries=0)
        response = client.embeddings.create(model=str(tiny_model_path), input=TEXTS, extra_body={"input_type": "query"})
        np.testing.assert_allclose(
            # The CLI serves the default templates; the session's embedder has its own per side.
            [d.embedding for d in response.data],
            tiny_embedder.with_options(query_template=None, document_template=None).encode_query(TEXTS),
            atol=1e-5,
        )
        assert httpx.post(f"{url}/v1/embeddings", json={"model": "x", "input": "x"}, timeout=10).status_code == 401
        metrics = httpx.get(f"{url}/metrics", timeout=10)  # no key needed
        assert metrics.status_code == 200 and "kvemb_embedded_tokens_total" in metrics.text
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        if listening:  # `ss` is present: the server listens on the loopback address only
            assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"], listening
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "Traceback" not in out, out[-3000:]
    json.dumps(out)  # the log is text


def test_langchain_and_llamaindex_openai_classes(server: Served, tiny_embedder: KVEmbedder) -> None:
    """The frameworks' OpenAI embedding classes pointed at the server (no input_type: the document side)."""
    langchain_openai = pytest.importorskip("langchain_openai")
    llama_openai = pytest.importorskip("llama_index.embeddings.openai")
    expected = tiny_embedder.encode_document(TEXTS)
    # check_embedding_ctx_length=False: send the strings (by default LangChain sends tiktoken token ids).
    lc = langchain_openai.OpenAIEmbeddings(
        model=NAME, base_url=f"{server.url}/v1", api_key=KEY, check_embedding_ctx_length=False, max_retries=0
    )
    np.testing.assert_allclose(lc.embed_documents(TEXTS), expected, atol=1e-5)
    np.testing.assert_allclose(lc.embed_query(TEXTS[0]), expected[0], atol=1e-5)
    li = llama_openai.OpenAIEmbedding(model_name=NAME, api_base=f"{server.url}/v1", api_key=KEY, max_retries=0)
    np.testing.assert_allclose(li.get_text_embedding_batch(TEXTS), expected, atol=1e-5)
    # The query side through the client's extra_body, which LlamaIndex forwards from additional_kwargs.
    li_query = llama_openai.OpenAIEmbedding(
        model_name=NAME,
        api_base=f"{server.url}/v1",
        api_key=KEY,
        max_retries=0,
        additional_kwargs={"extra_body": {"input_type": "query"}},
    )
    np.testing.assert_allclose(li_query.get_query_embedding(TEXTS[1]), tiny_embedder.encode_query(TEXTS[1]), atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_inputs": 0}, "max_inputs must be an int >= 1"),
        ({"max_tokens_per_input": 1.5}, "max_tokens_per_input must be an int >= 1"),
        ({"max_batch": True}, "max_batch must be an int >= 1"),
        ({"max_wait_ms": -1}, "max_wait_ms must be a number of milliseconds"),
        ({"max_batch_tokens": 0}, r"max_batch_tokens must be an int >= 1; got 0 \(tokens per engine call"),
        ({"max_concurrent_requests": "512"}, r"max_concurrent_requests must be an int >= 1; got '512'"),
        ({"max_concurrent_requests": False}, "max_concurrent_requests must be an int >= 1; got False"),
    ],
)
def test_serve_limits_are_validated(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        ServeLimits(**kwargs)


def test_kvemb_help_does_not_import_the_server_or_ray() -> None:
    heavy = "('fastapi', 'uvicorn', 'ray', 'torch')"
    code = f"import sys; from kvemb_rag.cli import app; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


# ------------------------------------------------------------------------------------- under load
def _until(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Wait for a state the test brought about (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def _post(url: str, texts: Any, key: str | None = None, client: httpx.Client | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": NAME, "input": texts}
    if client is not None:
        return client.post(f"{url}/v1/embeddings", json=body, headers=headers)
    return httpx.post(f"{url}/v1/embeddings", json=body, headers=headers, timeout=120)


def _in_threads(calls: list[Callable[[], httpx.Response]]) -> tuple[list[threading.Thread], list[Any]]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    return threads, results


def test_engine_calls_fill_the_token_budget_and_a_longer_text_runs_alone(tiny_embedder: KVEmbedder) -> None:
    budget = 100
    engine = GatedEngine(tiny_embedder)
    limits = ServeLimits(max_inputs=16, max_tokens_per_input=256, max_wait_ms=0, max_batch_tokens=budget)
    app = create_app(engine, model_name=NAME, limits=limits)  # type: ignore[arg-type]
    long_text = "The cat sat on the mat and looked at the moon for a long time. " * 4
    shorts = [f"Cat {i}." for i in range(4)] + [f"A boat on river number {i}." for i in range(4)]
    requests: list[list[str]] = [[shorts[0]], [shorts[1], shorts[2]], [long_text], [shorts[3]], shorts[4:]]
    count = {text: tiny_embedder.count_tokens(text) for text in [*shorts, long_text, "blocker"]}
    assert count[long_text] > budget >= max(count[s] for s in shorts) * 2, count
    with _serving(app) as served:
        engine.gate.clear()
        blocker, _ = _in_threads([lambda: _post(served.url, "blocker")])
        _until(engine.entered.is_set, "the engine to start the first call")
        threads, results = [], []
        for texts in requests:  # queued one request after the other, so their order is known
            target = app.state.batcher.waiting + len(texts)
            more, got = _in_threads([lambda texts=texts: _post(served.url, texts)])
            _until(lambda target=target: app.state.batcher.waiting == target, "the request's texts to queue")
            threads += more
            results.append(got)  # filled in by its thread
        engine.gate.set()
        for thread in [*blocker, *threads]:
            thread.join(timeout=120)
    queued_order = [text for texts in requests for text in texts]
    calls = [texts for texts, _ in engine.calls[1:]]  # after the blocker's call
    assert [text for texts in calls for text in texts] == queued_order  # first in, first embedded
    for i, texts in enumerate(calls):
        tokens = sum(count[text] for text in texts)
        assert tokens <= budget or texts == [long_text], (texts, tokens)
        if i + 1 < len(calls):  # each call was filled: the next text would have overflowed it
            assert tokens + count[calls[i + 1][0]] > budget, (texts, calls[i + 1])
    assert [long_text] in calls and max(len(texts) for texts in calls) > 1, calls
    assert app.state.batcher.stats.tokens == sum(count[text] for text in ["blocker", *queued_order])
    replayed = engine.replayed()
    for texts, (response,) in zip(requests, results, strict=True):
        assert response.status_code == 200, response.text
        got = np.array([d["embedding"] for d in response.json()["data"]])
        np.testing.assert_allclose(got, [replayed[(text, "document")] for text in texts], atol=1e-5)


def test_a_full_server_answers_429_and_every_admitted_request_completes(tiny_embedder: KVEmbedder) -> None:
    engine = GatedEngine(tiny_embedder)
    limits = ServeLimits(max_inputs=16, max_tokens_per_input=64, max_wait_ms=0, max_concurrent_requests=3)
    app = create_app(engine, model_name=NAME, api_key=KEY, limits=limits)  # type: ignore[arg-type]
    sample = app.state.metrics.registry.get_sample_value
    with _serving(app) as served:
        engine.gate.clear()
        threads, responses = _in_threads([lambda i=i: _post(served.url, TEXTS[i], KEY) for i in range(3)])
        # One text in the engine (held at the gate), two queued behind it: three requests admitted.
        _until(lambda: engine.entered.is_set() and app.state.batcher.waiting == 2, "three admitted requests")
        assert sample("kvemb_requests_in_flight") == 3
        tokenized = engine.tokenized
        with httpx.Client(timeout=60) as client:  # one connection, kept alive across the refusal
            refused = _post(served.url, ["one more"] * 16, KEY, client=client)
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == "server_overloaded" and error["type"] == "rate_limit_error"
            assert "3 embedding requests are in flight" in error["message"]
            assert "--max-concurrent-requests" in error["message"]
            assert engine.tokenized == tokenized, "the refused request was tokenised"
            with pytest.raises(openai.RateLimitError, match="server is busy"):
                served.client().embeddings.create(model=NAME, input="and another")
            assert client.get(f"{served.url}/health").status_code == 200  # the rest of the server answers
            metrics = client.get(f"{served.url}/metrics").text
            assert "kvemb_requests_in_flight 3.0" in metrics and "kvemb_queue_texts 2.0" in metrics
            engine.gate.set()
            for thread in threads:
                thread.join(timeout=120)
            replayed = engine.replayed()
            for i, response in enumerate(responses):  # none of the admitted requests was lost
                assert response.status_code == 200, response.text
                got = np.array(response.json()["data"][0]["embedding"])
                np.testing.assert_allclose(got, replayed[(TEXTS[i], "document")], atol=1e-5)
            assert sample("kvemb_requests_in_flight") == 0  # released before the answers were handed over
            assert _post(served.url, ["room again"], KEY, client=client).status_code == 200
    assert sample("kvemb_rejected_requests_total") == 2
    assert sample("kvemb_responses_total", {"code": "429", "class": "4xx"}) == 2
    assert sample("kvemb_responses_total", {"code": "200", "class": "2xx"}) == 4


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_need_no_key_and_move_with_requests(server: Served, tiny_embedder: KVEmbedder) -> None:
    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        response = httpx.get(f"{server.url}/metrics", timeout=10)  # no key: like /health
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return _samples(response.text)

    ok, bad = (
        ("kvemb_responses_total", (("class", "2xx"), ("code", "200"))),
        ("kvemb_responses_total", (("class", "4xx"), ("code", "400"))),
    )
    before = scrape()
    for name in (
        "kvemb_queue_texts",
        "kvemb_requests_in_flight",
        "kvemb_embedded_tokens_total",
        "kvemb_batch_tokens_count",
        "kvemb_batch_tokens_sum",
        "kvemb_request_duration_seconds_count",
        "kvemb_rejected_requests_total",
    ):
        assert (name, ()) in before, name
    assert ("kvemb_batch_tokens_bucket", (("le", "16384.0"),)) in before
    assert server.post({"model": NAME, "input": TEXTS}).status_code == 200
    assert server.post({"model": NAME, "input": []}).status_code == 400
    after = scrape()
    tokens = sum(tiny_embedder.count_tokens(text) for text in TEXTS)

    def moved(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved(("kvemb_embedded_tokens_total", ())) == tokens
    assert moved(("kvemb_batch_tokens_sum", ())) == tokens and moved(("kvemb_batch_tokens_count", ())) >= 1
    assert moved(("kvemb_request_duration_seconds_count", ())) == 1
    assert moved(ok) == 1 and moved(bad) == 1
    assert after[("kvemb_requests_in_flight", ())] == 0 and after[("kvemb_queue_texts", ())] == 0
    assert moved(("kvemb_rejected_requests_total", ())) == 0


def test_each_app_has_its_own_metrics_registry(tiny_embedder: KVEmbedder) -> None:
    first, second = (create_app(tiny_embedder, model_name=NAME) for _ in range(2))
    assert first.state.metrics.registry is not second.state.metrics.registry
    first.state.metrics.observe_batch(1, 7, 0.0)
    assert first.state.metrics.registry.get_sample_value("kvemb_embedded_tokens_total") == 7
    assert second.state.metrics.registry.get_sample_value("kvemb_embedded_tokens_total") == 0


@pytest.mark.parametrize(("option", "value"), [("--max-batch-tokens", "0"), ("--max-concurrent-requests", "-1")])
def test_cli_refuses_invalid_load_options(option: str, value: str) -> None:
    from typer.testing import CliRunner

    from kvemb_rag.cli import app

    result = CliRunner().invoke(app, ["serve", option, value])  # refused before any model loads
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in said and "greater than or equal to 1" in said, said
