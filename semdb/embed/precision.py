"""Which graph runs on this CPU: int8 where it is really faster here, fp32 otherwise.

Dynamically quantised int8 is not faster everywhere. Measured on MiniLM (bench/embed.py):
about 1.9x fp32 per core on a Xeon with AVX-512 VNNI, no faster than fp32 on an AMD EPYC with
AVX2 and no VNNI, whose u8 x s8 kernel (VPMADDUBSW) may also saturate and lose accuracy. So
the choice is measured, once per bundle, machine and thread setting, and kept in a small
JSON file in the cache folder (:func:`semdb.config.cache_dir`); loading the same bundle again
reads the answer back.

The measurement: a fixed set of sentences, padded into one batch, run through both graphs in
turn (best of a few interleaved runs, on the intra-op threads the embedder will use), and the
mean cosine between the two graphs' vectors. int8 is chosen when it runs at least
:data:`INT8_MIN_SPEEDUP` times as fast as fp32 and its mean cosine to fp32 is at least
:data:`INT8_MIN_MEAN_COSINE` (a saturating kernel fails this and keeps fp32).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from semdb.bundles.bundle import ONNX_FILES, Bundle
from semdb.config import cache_dir
from semdb.embed.batching import TextTokenizer, pad_batch
from semdb.embed.session import OnnxSession

log = logging.getLogger(__name__)

INT8_MIN_SPEEDUP = 1.1
INT8_MIN_MEAN_COSINE = 0.99
CACHE_FILE = "cpu-precision.json"
ROUNDS = 3
# CPU features that change which int8 kernels ONNX Runtime runs.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")
SAMPLE_TEXTS = (
    "PostgreSQL keeps the vectors next to the rows they describe.",
    "A nearest-neighbour search returns the rows whose embeddings lie closest to the query.",
    "The worker takes rows from the queue with SKIP LOCKED, embeds them and writes them back.",
    "How do I restore a database from a backup taken with pg_dump?",
    "Command-line utility to convert images between formats, resize them and strip metadata.",
    "Library for parsing and writing JSON documents with a streaming interface for large files.",
    "When the index is built with HNSW, recall depends on ef_search and on the filter.",
    "Fonts for mathematical typesetting, with a wide coverage of Unicode symbols and arrows.",
    "The kernel module exposes temperature sensors of the motherboard through sysfs.",
    "Tools to inspect, repair and resize ext4 file systems, including a consistency checker.",
    "A text editor for the terminal with syntax highlighting, macros and a plugin system.",
    "Translations of the manual pages into French, German and Spanish.",
    "Python bindings for the cryptographic library: ciphers, hashes and key derivation.",
    "Documentation in HTML for the programming language's standard library and tutorials.",
    "A daemon that synchronises the system clock with servers over the network time protocol.",
    "why is my query slow when I filter on a rare category?",
)


@dataclass(frozen=True)
class PrecisionChoice:
    """What was measured on this machine, and the graph chosen from it."""

    precision: str
    fp32_texts_per_s: float
    int8_texts_per_s: float
    int8_mean_cosine: float
    intra_op_threads: int
    machine: str
    measured_at: str
    from_cache: bool = False

    @property
    def int8_speedup(self) -> float:
        return self.int8_texts_per_s / self.fp32_texts_per_s


def choose_cpu_precision(bundle: Bundle, *, intra_op_threads: int = 1) -> PrecisionChoice:
    """int8 or fp32 for ``bundle`` on this CPU: read from the cache, or measured and cached.

    The bundle must have both graphs (``bundle.available_precisions``).
    """
    key = _cache_key(bundle, intra_op_threads)
    cached = _read_cache().get(key)
    if cached is not None:
        try:
            return PrecisionChoice(**{**cached, "from_cache": True})
        except TypeError:  # written by another semdb version: measure again
            pass
    choice = measure_cpu_precision(bundle, intra_op_threads=intra_op_threads)
    _write_cache(key, choice)
    log.info(
        "%s@%s on this CPU: int8 %.2fx fp32 (mean cosine %.4f) -> %s",
        bundle.manifest.name,
        bundle.manifest.version,
        choice.int8_speedup,
        choice.int8_mean_cosine,
        choice.precision,
    )
    return choice


def measure_cpu_precision(bundle: Bundle, *, intra_op_threads: int = 1) -> PrecisionChoice:
    """Time the fp32 and int8 graphs of ``bundle`` side by side on this CPU (a second or two)."""
    tokenizer = TextTokenizer(bundle.tokenizer_path, bundle.manifest.max_tokens)
    tokenized = tokenizer.tokenize(list(SAMPLE_TEXTS))
    indices = np.arange(len(SAMPLE_TEXTS), dtype=np.intp)
    input_ids, attention_mask = pad_batch(tokenized.encodings, indices, tokenizer.pad_id)
    sessions = {
        precision: OnnxSession(bundle.onnx_path(precision), "cpu", threads=intra_op_threads)
        for precision in ("fp32", "int8")
    }
    vectors = {p: s.run(input_ids, attention_mask) for p, s in sessions.items()}  # warm-up
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(ROUNDS):
        for precision, session in sessions.items():
            started = time.perf_counter()
            session.run(input_ids, attention_mask)
            best[precision] = min(best[precision], time.perf_counter() - started)
    rates = {p: len(SAMPLE_TEXTS) / seconds for p, seconds in best.items()}
    cosine = float(row_cosines(vectors["fp32"], vectors["int8"]).mean())
    faster = rates["int8"] >= INT8_MIN_SPEEDUP * rates["fp32"]
    return PrecisionChoice(
        precision="int8" if faster and cosine >= INT8_MIN_MEAN_COSINE else "fp32",
        fp32_texts_per_s=round(rates["fp32"], 1),
        int8_texts_per_s=round(rates["int8"], 1),
        int8_mean_cosine=round(cosine, 5),
        intra_op_threads=intra_op_threads,
        machine=machine_description(),
        measured_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def machine_description() -> str:
    """The CPU's model and the int8-relevant features it has, e.g. ``Xeon ... avx2+avx512_vnni``."""
    model, flags = _cpu_model_and_flags()
    present = [flag for flag in KERNEL_FLAGS if flag in flags]
    return f"{model} ({'+'.join(present) or 'no AVX2'}), onnxruntime {ort.__version__}"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's word for it elsewhere)."""
    return _cpu_model_and_flags()[0]


@functools.lru_cache(maxsize=1)  # read once a process: every Embedder.load on the CPU asks
def _cpu_model_and_flags() -> tuple[str, frozenset[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    model, flags = platform.machine(), frozenset[str]()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and model == platform.machine():
            model = value.strip()
        elif name.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return model, flags


def _cache_key(bundle: Bundle, intra_op_threads: int) -> str:
    files = bundle.manifest.files
    parts = [
        files[ONNX_FILES["fp32"]],
        files[ONNX_FILES["int8"]],
        machine_description(),
        str(intra_op_threads),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def _cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, choice: PrecisionChoice) -> None:
    """Add ``choice`` to the cache file (written whole, then renamed: readers never see half)."""
    entries = _read_cache()
    record = asdict(choice)
    record.pop("from_cache")
    entries[key] = record
    path = _cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(entries, indent=1, sort_keys=True), encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        log.warning("cannot cache the CPU precision choice in %s: %s", path, exc)


def row_cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The cosine between each row of ``a`` and the same row of ``b`` (in float64)."""
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(axis=1) / np.maximum(norms, 1e-30))
