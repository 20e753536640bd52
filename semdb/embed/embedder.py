"""The Embedder: texts in, float32 vectors out, with ONNX Runtime alone (no torch).

>>> embedder = Embedder.load("all-MiniLM-L6-v2")           # provider "auto": CUDA if it runs
>>> vectors = embedder.embed(["first document", "second"])  # (2, 384) float32, input order
>>> query = embedder.embed_query("what is in the documents?")
>>> embedder.last_stats.truncated                           # texts cut at max_tokens

What each text becomes:

- documents get the manifest's ``document_prefix``, queries its ``query_prefix``;
- a text longer than the model's ``max_tokens`` is truncated there, exactly as
  sentence-transformers does, and counted in ``last_stats.truncated``;
- the empty string (or only whitespace) is embedded as the model embeds a text with no
  words, i.e. its special tokens alone: the same vector sentence-transformers gives, a valid
  unit vector but one that carries no meaning. ``last_stats.empty`` counts them, so a caller
  that prefers NULL can skip them;
- None, bytes or any other non-string is a ``TypeError`` naming its index; a string that is
  not valid UTF-8 (lone surrogates) is a ``ValueError`` naming its index. Nothing is embedded
  then: no vector is ever silently wrong.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import numpy as np
import numpy.typing as npt

from semdb.bundles.bundle import Bundle, check_precision
from semdb.bundles.store import find_bundle
from semdb.config import cpu_precision_setting
from semdb.embed import providers
from semdb.embed.batching import TextTokenizer, check_texts, pad_batch, plan_batches
from semdb.embed.precision import PrecisionChoice, choose_cpu_precision
from semdb.embed.session import OnnxSession
from semdb.errors import SemdbError, TextTypeError

log = logging.getLogger(__name__)

Kind = Literal["document", "query"]
# (row indices into the texts, input_ids, attention_mask) of one padded batch
_Batch = tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.int64]]
_T = TypeVar("_T")
# Padded tokens per batch. On 2-4 CPU cores batches of ~2k tokens keep the activations in
# cache (bench/embed.py measured 2048 best for MiniLM); a GPU wants far wider batches.
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 32768}
# Texts tokenised at a time: bounds memory for very long inputs; sorting happens within it.
CHUNK_TEXTS = 8192
# Batches each CPU stream may have queued beyond the one it runs: keeps every stream busy while
# results come back in order, and bounds the padded inputs held in memory.
STREAM_LOOKAHEAD = 2
# Padded batches a prefetching tokeniser may hold ready (each at most token_budget x 2 int64):
# enough to cover tokenising the next chunk while the device runs this one.
PREFETCH_BATCHES = 64


@dataclass(frozen=True)
class EmbedStats:
    """What the last ``embed`` call did."""

    texts: int
    truncated: int
    empty: int
    tokens: int
    padded_tokens: int
    batches: int
    seconds: float


class Embedder:
    """A model bundle opened with ONNX Runtime on one execution provider and precision."""

    def __init__(
        self,
        bundle: Bundle,
        session: OnnxSession,
        precision: str,
        *,
        token_budget: int | None = None,
        threads: int | None = None,
        prefetch: bool | None = None,
        streams: int = 1,
        precision_choice: PrecisionChoice | None = None,
    ) -> None:
        manifest = bundle.manifest
        self.bundle = bundle
        self.session = session
        self.precision = precision
        self.provider = session.provider
        self.threads = threads
        self.token_budget = token_budget or DEFAULT_TOKEN_BUDGET[self.provider]
        if self.token_budget < 1:
            raise SemdbError(f"token_budget must be positive, not {self.token_budget}")
        # On CUDA the host tokenises and pads the next batches in a thread while the device
        # runs the current one; on a CPU both would share the same cores, so it is off there.
        self.prefetch = (self.provider == "cuda") if prefetch is None else prefetch
        # CPU streams: batches run side by side, each on one intra-op thread of a shared
        # session. Measured with MiniLM on 2 cores (bench/embed.py): on an idle machine within a
        # few percent of one batch at a time on 2 intra-op threads (int8, two runs: 158 against
        # 170, 178 against 174 texts/s); where other busy processes share the cores, two streams
        # are 1.1-1.3x faster (no thread pool to wake and join at every operator). Default: one.
        self.streams = streams
        self.precision_choice = precision_choice
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.model_name = manifest.name
        self.model_version = manifest.version
        self.dimension = manifest.dimension
        self.max_tokens = manifest.max_tokens
        self.normalize = manifest.normalize
        self.query_prefix = manifest.query_prefix
        self.document_prefix = manifest.document_prefix
        self.tokenizer = TextTokenizer(bundle.tokenizer_path, manifest.max_tokens)
        self.last_stats: EmbedStats | None = None

    @classmethod
    def load(
        cls,
        model: str | os.PathLike[str] | Bundle,
        *,
        provider: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        token_budget: int | None = None,
        io_binding: bool | None = None,
        prefetch: bool | None = None,
        streams: int | None = None,
    ) -> Embedder:
        """Open a bundle (a Bundle, a folder, ``name`` or ``name@version`` from the store).

        ``provider``: ``auto`` (CUDA when it really runs, else CPU), ``cuda`` (an error when it
        cannot run) or ``cpu``. ``precision``: None (or ``auto``) picks fp16 on CUDA (when the
        bundle has it); on the CPU, int8 where it was measured faster on this machine and as
        accurate (see :mod:`semdb.embed.precision`; the measurement is in
        :attr:`precision_choice`), else fp32. ``SEMDB_CPU_PRECISION`` pins the CPU's for every
        process that asks for none (workers on several machines then write the same graph's
        vectors). ``int8`` is CPU only. ``threads``: CPU threads (default: the cores this
        process may use). ``streams``: on the CPU, how many batches run side by side, each on
        one intra-op thread (default 1: one batch at a time on ``threads`` intra-op threads;
        ``streams=threads`` pays off where other processes keep the cores busy).
        ``token_budget``: padded tokens per batch. ``io_binding``: None uses it on CUDA only.
        ``prefetch``: tokenise and pad the next batches in a thread while the model runs; None
        does it on CUDA only.
        """
        request = providers.check_request(provider)
        if precision == "auto":
            precision = None
        if precision is not None:
            check_precision(precision)
        if threads is not None and threads < 1:
            raise SemdbError(f"threads must be a positive number, not {threads}")
        if streams is not None and streams < 1:
            raise SemdbError(f"streams must be a positive number, not {streams}")
        if token_budget is not None and token_budget < 1:
            raise SemdbError(f"token_budget must be positive, not {token_budget}")
        bundle = model if isinstance(model, Bundle) else find_bundle(model)
        if precision is not None:
            bundle.onnx_path(precision)  # the bundle has it, or an error naming the file
        kwargs: dict[str, Any] = {
            "token_budget": token_budget,
            "threads": threads,
            "prefetch": prefetch,
        }

        if request == "cuda" or (request == "auto" and precision != "int8"):
            if not providers.cuda_listed():
                if request == "cuda":
                    raise providers.cuda_error()
            else:
                chosen = precision or providers.default_precision(
                    "cuda", bundle.available_precisions
                )
                providers.check_precision_for("cuda", chosen)
                session = OnnxSession(
                    bundle.onnx_path(chosen), "cuda", threads=threads, io_binding=io_binding
                )
                if session.provider == "cuda":
                    return cls(bundle, session, chosen, **kwargs)
                if request == "cuda":
                    raise providers.cuda_error()
                log.info("CUDA is listed but not running (%s); using the CPU", session.provider)
        total = threads or usable_cores()
        cpu_streams = streams or 1
        intra_op = 1 if cpu_streams > 1 else total
        choice = None
        pinned = cpu_precision_setting()
        if precision is not None:
            chosen = precision
        elif pinned is not None:
            check_precision(pinned)
            chosen = pinned
        elif "int8" in bundle.available_precisions:
            choice = choose_cpu_precision(bundle, intra_op_threads=intra_op)
            chosen = choice.precision
        else:
            chosen = providers.default_precision("cpu", bundle.available_precisions)
        session = OnnxSession(
            bundle.onnx_path(chosen), "cpu", threads=intra_op, io_binding=io_binding
        )
        return cls(bundle, session, chosen, streams=cpu_streams, precision_choice=choice, **kwargs)

    # -- embedding ----------------------------------------------------------------------------

    def embed(
        self,
        texts: Iterable[str],
        *,
        kind: Kind = "document",
        on_batch: Callable[[int], None] | None = None,
    ) -> npt.NDArray[np.float32]:
        """Vectors (float32, len(texts) x dimension), in input order.

        ``kind`` picks the manifest's prefix (``document`` or ``query``). ``on_batch(n)`` is
        called after each batch with the number of texts it held (for progress bars).
        Statistics land in :attr:`last_stats`.
        """
        if kind not in ("document", "query"):
            raise SemdbError(f"kind must be 'document' or 'query', not {kind!r}")
        items = check_texts(texts)
        prefix = self.query_prefix if kind == "query" else self.document_prefix
        started = time.perf_counter()
        result = np.empty((len(items), self.dimension), dtype=np.float32)
        counts = _Counts()
        padded = batches = 0
        prepared = self._prepared_batches(items, prefix, counts)
        if self.prefetch:
            prepared = _prefetched(prepared, PREFETCH_BATCHES)
        for indices, input_ids, vectors in self._run_batches(prepared):
            if vectors.shape != (len(indices), self.dimension):
                raise SemdbError(
                    f"the model returned vectors of shape {vectors.shape}, expected "
                    f"({len(indices)}, {self.dimension}): the bundle's manifest does not "
                    "match its graph"
                )
            result[indices] = vectors
            padded += input_ids.size
            batches += 1
            if on_batch is not None:
                on_batch(len(indices))
        truncated, empty, tokens = counts.truncated, counts.empty, counts.tokens
        if not np.isfinite(result).all():
            bad = int(np.flatnonzero(~np.isfinite(result).all(axis=1))[0])
            raise SemdbError(
                f"the model produced a non-finite vector for text {bad} ({self.precision} on "
                f"{self.provider})",
                fix="use precision fp32; if it persists, the bundle is damaged",
            )
        self.last_stats = EmbedStats(
            texts=len(items),
            truncated=truncated,
            empty=empty,
            tokens=tokens,
            padded_tokens=padded,
            batches=batches,
            seconds=time.perf_counter() - started,
        )
        if truncated:
            log.info(
                "%d of %d texts truncated at %d tokens", truncated, len(items), self.max_tokens
            )
        return result

    def _run_batches(
        self, prepared: Iterator[_Batch]
    ) -> Iterator[tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """(indices, input_ids, vectors) of each batch, in order; on several CPU streams, up to
        ``streams * (1 + STREAM_LOOKAHEAD)`` batches are in flight at once."""
        if self.streams == 1:
            for indices, input_ids, attention_mask in prepared:
                yield indices, input_ids, self.session.run(input_ids, attention_mask)
            return
        pool = self._stream_pool()
        in_flight: deque[tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], Future[Any]]]
        in_flight = deque()
        try:
            for indices, input_ids, attention_mask in prepared:
                future = pool.submit(self.session.run, input_ids, attention_mask)
                in_flight.append((indices, input_ids, future))
                if len(in_flight) >= self.streams * (1 + STREAM_LOOKAHEAD):
                    done_indices, done_ids, done = in_flight.popleft()
                    yield done_indices, done_ids, done.result()
            while in_flight:
                done_indices, done_ids, done = in_flight.popleft()
                yield done_indices, done_ids, done.result()
        finally:  # an error or a caller that stops early: drop what has not started
            for _, _, future in in_flight:
                future.cancel()

    def _stream_pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="semdb-embed")
            return self._pool

    def _prepared_batches(self, items: list[str], prefix: str, counts: _Counts) -> Iterator[_Batch]:
        """(row indices into ``items``, input_ids, attention_mask) for each batch, chunk by
        chunk: tokenised, sorted by length and cut by the token budget."""
        for start in range(0, len(items), CHUNK_TEXTS):
            chunk = items[start : start + CHUNK_TEXTS]
            counts.empty += sum(1 for text in chunk if not text.strip())
            tokenized = self.tokenizer.tokenize(
                [prefix + text for text in chunk] if prefix else chunk
            )
            counts.truncated += int(tokenized.truncated.sum())
            counts.tokens += int(tokenized.lengths.sum())
            for indices in plan_batches(tokenized.lengths, self.token_budget):
                input_ids, attention_mask = pad_batch(
                    tokenized.encodings, indices, self.tokenizer.pad_id
                )
                yield start + indices, input_ids, attention_mask

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        """One query's vector (float32, shape (dimension,)), with the query prefix."""
        if not isinstance(text, str):
            raise TextTypeError(
                f"the query is {'None' if text is None else type(text).__name__}, not a string"
            )
        return cast("npt.NDArray[np.float32]", self.embed([text], kind="query")[0])

    def __repr__(self) -> str:
        return (
            f"Embedder({self.model_name}@{self.model_version}, {self.provider}, {self.precision}, "
            f"dimension={self.dimension})"
        )


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@dataclass
class _Counts:
    truncated: int = 0
    empty: int = 0
    tokens: int = 0


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


def _prefetched(items: Iterator[_T], depth: int) -> Iterator[_T]:
    """``items`` in order, produced by a thread that runs up to ``depth`` items ahead.

    An exception in the producer is raised here, in the consumer, at the point where its item
    would have come; a consumer that stops early (an error, a break) stops the producer.
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))
            return
        put(_DONE)

    thread = threading.Thread(target=produce, name="semdb-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
