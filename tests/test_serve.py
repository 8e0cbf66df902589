"""`kvemb serve`: a real uvicorn server on 127.0.0.1, the real `openai` client, the tiny model; no mocks."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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

    def client(self, key: str = KEY) -> Any:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)

    def post(self, body: Any, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        if raw is not None:
            headers["Content-Type"] = "application/json"
            return httpx.post(f"{self.url}/v1/embeddings", content=raw, headers=headers, timeout=60)
        return httpx.post(f"{self.url}/v1/embeddings", json=body, headers=headers, timeout=60)


@pytest.fixture(scope="module")
def server(tiny_embedder: KVEmbedder) -> Iterator[Served]:
    app = create_app(tiny_embedder, model_name=NAME, api_key=KEY, limits=LIMITS)
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


def test_vectors_equal_the_engine_on_both_sides(server: Served, tiny_embedder: KVEmbedder) -> None:
    client = server.client()
    for side in ("document", "query"):
        expected = tiny_embedder.encode(TEXTS, prompt_name=side)
        for fmt in ("float", "base64"):
            response = client.embeddings.create(
                model=NAME, input=TEXTS, encoding_format=fmt, extra_body={"input_type": side}  # type: ignore[arg-type]
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
    barrier = threading.Barrier(32)

    def ask(i: int) -> list[float]:
        barrier.wait()
        response = client.embeddings.create(model=NAME, input=texts[i], extra_body={"input_type": sides[i]})
        return list(response.data[0].embedding)

    with ThreadPoolExecutor(32) as pool:
        got = np.array(list(pool.map(ask, range(32))))
    for side in ("query", "document"):
        rows = [i for i in range(32) if sides[i] == side]
        expected = tiny_embedder.encode([texts[i] for i in rows], prompt_name=side)
        np.testing.assert_allclose(got[rows], expected, atol=1e-5)
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
    command = [sys.executable, "-m", "kvemb_rag.cli", "serve", "--model", str(tiny_model_path), "--port", str(port)]
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
        model_name=NAME, api_base=f"{server.url}/v1", api_key=KEY, max_retries=0,
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
