"""The ONNX Runtime embedder against the PyTorch model it came from, on real sentences.

Two tiny models: the session's ``tiny_bundle`` (random BERT weights at their initial scale,
so every text lands near the same vector) and a "sharp" one whose encoder weights are drawn
larger, so texts get distinct vectors (mean pairwise cosine ~0.87) and quantisation error
shows: a tokenisation, padding or pooling bug moves its vectors far past the thresholds.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semdb.bundles import Bundle
from semdb.embed import Embedder
from semdb.embed.batching import plan_batches
from semdb.errors import BundleError, InvalidTextError, ProviderError, SemdbError, TextTypeError

from .tiny_model import corpus_sentences


def sentences(count: int = 120) -> list[str]:
    """Real English sentences (the standard library's docstrings), varied lengths."""
    return corpus_sentences()[:count]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def sharp_model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_model_dir), device="cpu")
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model[0].auto_model.named_parameters():
            if "encoder" in name and parameter.dim() == 2:
                fan_in = parameter.shape[1]
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2 / fan_in**0.5)
    target = tmp_path_factory.mktemp("sharp") / "model"
    model.save(str(target))
    return target


@pytest.fixture(scope="module")
def sharp_bundle(sharp_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.export import export_bundle

    return export_bundle(
        sharp_model_dir,
        tmp_path_factory.mktemp("sharp-bundle") / "sharp",
        name="sharp",
        version="1",
        precisions=("fp32", "fp16", "int8"),
        query_prefix="query: ",
        document_prefix="passage: ",
    )


@pytest.fixture(scope="module")
def sharp_torch(sharp_model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(sharp_model_dir), device="cpu")


@pytest.fixture(scope="module")
def tiny_torch(tiny_model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_dir), device="cpu")


# -- parity with PyTorch --------------------------------------------------------------------


def test_fp32_matches_pytorch(tiny_bundle: Path, tiny_torch: Any) -> None:
    texts = sentences()
    embedder = Embedder.load(tiny_bundle, provider="cpu", precision="fp32")
    assert (embedder.provider, embedder.precision) == ("cpu", "fp32")
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), 32)
    assert cosine(vectors, tiny_torch.encode(texts)).min() >= 0.9999


@pytest.mark.parametrize(
    ("precision", "minimum", "mean"),
    [("fp32", 0.9999, 0.99999), ("fp16", 0.9999, 0.99999), ("int8", 0.98, 0.99)],
)
def test_each_precision_matches_pytorch_on_a_discriminating_model(
    sharp_bundle: Path, sharp_torch: Any, precision: str, minimum: float, mean: float
) -> None:
    texts = sentences()
    reference = sharp_torch.encode(texts, prompt="passage: ")
    assert cosine(reference[:60], reference[60:120]).mean() < 0.95  # texts are told apart
    vectors = Embedder.load(sharp_bundle, provider="cpu", precision=precision).embed(texts)
    similarity = cosine(vectors, reference)
    assert similarity.min() >= minimum
    assert similarity.mean() >= mean
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_the_parity_check_would_catch_padding_counted_as_tokens(
    sharp_bundle: Path, sharp_torch: Any
) -> None:
    """The trap of a tokenizer.json padded to a fixed length: masks that count the pads."""
    texts = sentences(40)
    embedder = Embedder.load(sharp_bundle, provider="cpu", precision="fp32")
    encodings = embedder.tokenizer.tokenize(["passage: " + t for t in texts]).encodings
    width = max(len(e.ids) for e in encodings) + 16
    ids = np.zeros((len(texts), width), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
    wrong = embedder.session.run(ids, np.ones_like(ids))
    right = sharp_torch.encode(texts, prompt="passage: ")
    assert cosine(wrong, right).min() < 0.999


def test_queries_and_documents_get_their_prefixes(sharp_bundle: Path, sharp_torch: Any) -> None:
    embedder = Embedder.load(sharp_bundle, provider="cpu", precision="fp32")
    assert (embedder.query_prefix, embedder.document_prefix) == ("query: ", "passage: ")
    texts = sentences(10)
    queries = embedder.embed(texts, kind="query")
    assert cosine(queries, sharp_torch.encode(texts, prompt="query: ")).min() >= 0.9999
    assert cosine(queries, embedder.embed(texts)).min() < 0.9999  # the prefix matters
    one = embedder.embed_query(texts[0])
    assert one.shape == (embedder.dimension,) and one.dtype == np.float32
    assert np.allclose(one, queries[0], atol=1e-6)
    with pytest.raises(SemdbError, match="kind must be 'document' or 'query'"):
        embedder.embed(texts, kind="passage")  # type: ignore[arg-type]


# -- order, batching, truncation --------------------------------------------------------------


def test_vectors_come_back_in_input_order_whatever_the_batching(sharp_bundle: Path) -> None:
    texts = sentences(80) + ["short", "a little longer text", "x " * 100]
    shuffled = list(range(len(texts)))
    random.Random(3).shuffle(shuffled)
    wide = Embedder.load(sharp_bundle, provider="cpu", precision="fp32", token_budget=100_000)
    narrow = Embedder.load(sharp_bundle, provider="cpu", precision="fp32", token_budget=16)
    reference = wide.embed(texts)
    assert wide.last_stats is not None and wide.last_stats.batches == 1
    again = narrow.embed([texts[i] for i in shuffled])
    assert narrow.last_stats is not None and narrow.last_stats.batches > 10
    assert np.allclose(again, reference[shuffled], atol=1e-5)


def test_batches_respect_the_token_budget() -> None:
    lengths = np.array([5, 60, 7, 60, 3, 200, 12], dtype=np.int64)
    batches = plan_batches(lengths, token_budget=128)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * lengths[batch].max() <= 128
    assert batches[0].tolist() == [5]  # longer than the budget: alone, first
    widths = [int(lengths[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)


def test_truncation_at_max_tokens_is_counted_and_matches_pytorch(
    sharp_bundle: Path, sharp_torch: Any
) -> None:
    embedder = Embedder.load(sharp_bundle, provider="cpu", precision="fp32")
    assert embedder.max_tokens == 64
    long_text = " ".join(sentences(30))
    texts = [long_text, "short text", long_text[:2000]]
    vectors = embedder.embed(texts)
    stats = embedder.last_stats
    assert stats is not None and stats.truncated == 2 and stats.texts == 3
    assert stats.padded_tokens >= stats.tokens
    assert cosine(vectors, sharp_torch.encode(texts, prompt="passage: ")).min() >= 0.9999


def test_the_tokenizer_never_pads_to_a_fixed_length(tiny_bundle: Path, tmp_path: Path) -> None:
    """Even when the bundle's tokenizer.json pads to 128 (what optimum writes)."""
    from tokenizers import Tokenizer

    from semdb.embed.batching import TextTokenizer

    written = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    assert written.padding is None
    assert written.truncation is not None and written.truncation["max_length"] == 64
    written.enable_padding(length=128)
    written.enable_truncation(128)
    padded = tmp_path / "tokenizer.json"
    written.save(str(padded))

    tokenizer = TextTokenizer(padded, max_tokens=64)
    tokenized = tokenizer.tokenize(["one", "two words here", "word " * 200])
    assert tokenized.lengths.tolist()[:2] == [len(e.ids) for e in tokenized.encodings[:2]]
    assert tokenized.lengths[0] < tokenized.lengths[1] < 64
    assert tokenized.lengths[2] == 64 and tokenized.truncated.tolist() == [False, False, True]
    assert all(sum(e.attention_mask) == len(e.ids) for e in tokenized.encodings)


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("texts", "error", "message"),
    [
        (["fine", "also fine", None], TextTypeError, "text 2 is None, not a string"),
        (["fine", 42], TextTypeError, "text 1 is int, not a string"),
        ([b"bytes"], TextTypeError, r"text 0 is bytes, not a string \(decode bytes"),
        ("a single string", TextTypeError, "not one str"),
        (None, TextTypeError, "not NoneType"),
        (["ok", "bad \udcff byte"], InvalidTextError, "text 1 is not valid UTF-8"),
    ],
)
def test_bad_input_is_refused_naming_the_culprit(
    tiny_bundle: Path, texts: Any, error: type[Exception], message: str
) -> None:
    embedder = Embedder.load(tiny_bundle, provider="cpu", precision="fp32")
    with pytest.raises(error, match=message):
        embedder.embed(texts)
    assert issubclass(TextTypeError, TypeError) and issubclass(InvalidTextError, ValueError)
    with pytest.raises(TextTypeError, match="the query is None"):
        embedder.embed_query(None)  # type: ignore[arg-type]


def test_empty_strings_embed_as_sentence_transformers_does(
    sharp_bundle: Path, sharp_torch: Any
) -> None:
    embedder = Embedder.load(sharp_bundle, provider="cpu", precision="fp32")
    texts = ["", "a real sentence about databases", "   "]
    vectors = embedder.embed(texts)
    assert embedder.last_stats is not None and embedder.last_stats.empty == 2
    assert np.isfinite(vectors).all()
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, sharp_torch.encode(texts, prompt="passage: ")).min() >= 0.9999
    assert embedder.embed([]).shape == (0, embedder.dimension)


# -- providers, precisions, sessions ----------------------------------------------------------


def test_io_binding_gives_the_same_vectors(tiny_bundle: Path) -> None:
    texts = sentences(30)
    plain = Embedder.load(tiny_bundle, provider="cpu", precision="fp32", threads=1)
    bound = Embedder.load(tiny_bundle, provider="cpu", precision="fp32", io_binding=True)
    assert bound.session.io_binding and not plain.session.io_binding
    assert np.allclose(plain.embed(texts), bound.embed(texts), atol=1e-6)


def test_auto_runs_on_what_really_works(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from semdb.embed.providers import cuda_listed

    monkeypatch.delenv("SEMDB_CPU_PRECISION")  # pinned to fp32 for the other tests

    embedder = Embedder.load(tiny_bundle)  # auto
    assert embedder.provider in {"cpu", "cuda"}
    assert embedder.session.session.get_providers()[0].lower().startswith(embedder.provider)
    if not cuda_listed():  # the CPU graph measured faster here, fp32 or int8
        assert embedder.precision_choice is not None
        assert embedder.precision == embedder.precision_choice.precision
    int8 = Embedder.load(tiny_bundle, precision="int8")
    assert (int8.provider, int8.precision) == ("cpu", "int8")


def test_cuda_asked_for_but_not_running_says_why(tiny_bundle: Path) -> None:
    try:
        embedder = Embedder.load(tiny_bundle, provider="cuda")
    except ProviderError as exc:
        assert "CUDA was asked for but cannot run" in str(exc)
        assert "Fix:" in str(exc)
    else:
        pytest.skip(f"CUDA runs here ({embedder.provider})")
    with pytest.raises(ProviderError, match="int8 graphs run on the CPU provider only|CUDA"):
        Embedder.load(tiny_bundle, provider="cuda", precision="int8")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"provider": "tpu"}, ProviderError, "unknown execution provider 'tpu'"),
        ({"precision": "fp8"}, BundleError, "unknown precision 'fp8'"),
        ({"threads": 0}, SemdbError, "threads must be a positive number"),
        ({"token_budget": -5}, SemdbError, "token_budget must be positive"),
    ],
)
def test_bad_settings_are_refused(
    tiny_bundle: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        Embedder.load(tiny_bundle, **kwargs)


def test_an_embedder_describes_what_runs(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    embedder = Embedder.load(bundle, provider="cpu", precision="int8", threads=1)
    assert (embedder.model_name, embedder.model_version) == ("tiny", "1")
    assert (embedder.dimension, embedder.max_tokens, embedder.precision) == (32, 64, "int8")
    assert embedder.session.path.name == "model_int8.onnx"
    assert "tiny@1" in repr(embedder)


def test_a_missing_graph_is_an_error_naming_its_file(tiny_bundle: Path, tmp_path: Path) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    (copy / "model_int8.onnx").unlink()
    with pytest.raises(BundleError, match="model_int8.onnx is missing"):
        Embedder.load(copy, precision="int8")


def test_cuda_listed_but_falling_back_to_the_cpu_is_detected(
    tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What onnxruntime-gpu does on a machine whose CUDA libraries do not load: it lists
    CUDAExecutionProvider, then the session runs on CPUExecutionProvider."""
    from semdb.embed import providers

    monkeypatch.delenv("SEMDB_CPU_PRECISION")  # pinned to fp32 for the other tests
    real = providers.execution_providers
    monkeypatch.setattr(providers, "cuda_listed", lambda: True)
    monkeypatch.setattr(providers, "execution_providers", lambda provider: real("cpu"))

    auto = Embedder.load(tiny_bundle)
    assert auto.provider == "cpu" and auto.precision_choice is not None
    assert auto.precision == auto.precision_choice.precision  # not the fp16 meant for CUDA
    with pytest.raises(ProviderError, match="CUDA was asked for but cannot run: onnxruntime-gpu"):
        Embedder.load(tiny_bundle, provider="cuda")


def test_prefetched_tokenisation_gives_the_same_vectors_in_the_same_order(
    tiny_bundle: Path,
) -> None:
    """Tokenising in a thread ahead of the model (what CUDA does) changes nothing but timing:
    across two tokenisation chunks, with empty texts and texts of every length."""
    rng = random.Random(7)
    sentences = corpus_sentences(600)
    texts = [rng.choice(sentences) for _ in range(8800)]  # CHUNK_TEXTS is 8192
    texts[::50] = [" ".join(rng.sample(sentences, 5)) for _ in texts[::50]]  # truncated
    texts[::997] = [""] * len(texts[::997])
    plain = Embedder.load(tiny_bundle, provider="cpu", precision="fp32", token_budget=512)
    ahead = Embedder.load(
        tiny_bundle, provider="cpu", precision="fp32", token_budget=512, prefetch=True
    )
    assert not plain.prefetch and ahead.prefetch  # off by default on the CPU
    seen: dict[bool, list[int]] = {False: [], True: []}
    a = plain.embed(texts, on_batch=seen[False].append)
    b = ahead.embed(texts, on_batch=seen[True].append)
    assert np.array_equal(a, b)
    assert seen[False] == seen[True] and sum(seen[True]) == len(texts)
    assert plain.last_stats is not None and ahead.last_stats is not None
    assert plain.last_stats.batches > 100
    for field in ("texts", "truncated", "empty", "tokens", "padded_tokens", "batches"):
        assert getattr(plain.last_stats, field) == getattr(ahead.last_stats, field), field
    alone = Embedder.load(tiny_bundle, provider="cpu", precision="fp32").embed(
        texts[:300]
    )  # other batches
    assert np.allclose(b[:300], alone, atol=1e-5)


def test_a_failure_while_prefetching_stops_the_tokenising_thread(tiny_bundle: Path) -> None:
    import threading

    embedder = Embedder.load(
        tiny_bundle, provider="cpu", precision="fp32", token_budget=256, prefetch=True
    )

    def fail(rows: int) -> None:
        raise RuntimeError("the caller's progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke"):
        embedder.embed(corpus_sentences(600), on_batch=fail)
    assert not [t for t in threading.enumerate() if t.name == "semdb-tokenize"]
    assert embedder.embed(["still works"]).shape == (1, embedder.dimension)


def test_cpu_streams_give_the_same_vectors_in_the_same_order(sharp_bundle: Path) -> None:
    """Batches run side by side on several streams come back where they belong."""
    texts = [f"{i}: " + " ".join(sentences(1 + i % 7)) for i in range(120)]
    random.Random(5).shuffle(texts)
    one = Embedder.load(sharp_bundle, provider="cpu", precision="fp32", streams=1, threads=1)
    many = Embedder.load(sharp_bundle, provider="cpu", precision="fp32", streams=3, token_budget=64)
    assert (one.streams, many.streams) == (1, 3)
    expected = one.embed(texts)
    seen: list[int] = []
    assert np.allclose(many.embed(texts, on_batch=seen.append), expected, atol=1e-5)
    assert sum(seen) == len(texts) and len(seen) > 3 * many.streams
    with pytest.raises(TextTypeError, match="text 7 is None"):
        many.embed([*texts[:7], None])  # type: ignore[list-item]
