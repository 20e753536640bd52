"""The GPU proof: semdb's CUDA path really runs, matches fp32, and how fast it is, in one call.

Called by bench/gpu/prove.sh (which sets PYTHONPATH and LD_LIBRARY_PATH first):

    prove.py setup --store DIR ...     extract the payload, pip install --target the wheels
    prove.py cuda-libs                 the CUDA library folders of the image's nvidia packages
    prove.py run --device|--dry-run --payload DIR --out DIR

``run`` steps, each recorded even when another fails:

1. env: versions, the GPU, which onnxruntime is imported (it must be onnxruntime-gpu from
   --ort-target, not the image's CPU package);
2. provider: semdb's Embedder on ``cuda``; ``session.get_providers()`` of the created session
   (not ``get_available_providers()``) must start with CUDAExecutionProvider, and the
   process's device memory must grow while it runs;
3. parity: fp16 vectors of held-out texts against PyTorch fp32 ones (computed by prepare.py on
   the CPU, and again here on the GPU when fp32 weights were carried): cosine >= 0.999 each;
4. throughput at 64 tokens: PyTorch fp16 and ORT fp16 (plain run, IO binding) over batch
   sizes, best batch each, side by side; then semdb's Embedder.embed end to end;
5. ndcg: nDCG@10 on the debdesc test split, ORT fp16 against ORT fp32 (the bundle's fp32
   graph, PyTorch's within cosine 1e-4), and PyTorch fp32 when fp32 weights were carried;
6. pytest -m gpu;
7. train: ``semdb train`` with AMP for a few dozen steps.

``--dry-run`` runs every step the same way on the CPU provider with the tiny payload and tiny
sizes (tests/test_gpu_prove.py), so this script cannot rot between the device sessions.
Writes gpu-proof.json, gpu-throughput.json and gpu-logs.txt under --out, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PARITY_MIN = 0.999
TARGET_SPEEDUP = 1.2  # ORT fp16 over PyTorch fp16 (issue 22)
TARGET_RATE = 50_000  # sentences/s, MiniLM at 64 tokens
TARGET_NDCG_POINTS = 0.2


@dataclass(frozen=True)
class Settings:
    device: bool
    provider: str  # semdb's provider request: cuda or cpu
    batch_sizes: tuple[int, ...]
    rows: int  # rows per throughput measurement
    repeats: int
    tokens: int
    train_args: tuple[str, ...]


DEVICE = Settings(
    device=True,
    provider="cuda",
    batch_sizes=(128, 256, 512, 1024, 2048, 4096),
    rows=16384,
    repeats=5,
    tokens=64,
    train_args=(
        "--max-steps",
        "40",
        "--batch-size",
        "128",
        "--eval-steps",
        "20",
        "--validation-queries",
        "200",
        "--amp",
        "auto",
    ),
)
DRY_RUN = Settings(
    device=False,
    provider="cpu",
    batch_sizes=(4, 8),
    rows=32,
    repeats=2,
    tokens=16,
    train_args=(
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--eval-steps",
        "2",
        "--validation-fraction",
        "0.2",
        "--validation-queries",
        "10",
        "--amp",
        "auto",
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("setup")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--ort-target", type=Path, required=True)
    p.add_argument("--site-target", type=Path, required=True)
    commands.add_parser("cuda-libs")
    p = commands.add_parser("run")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--device", action="store_true")
    mode.add_argument("--dry-run", action="store_true")
    p.add_argument("--payload", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ort-target", type=Path)
    p.add_argument("--work", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "setup":
        return setup(args.store, args.ort_target, args.site_target)
    if args.command == "cuda-libs":
        print(":".join(cuda_library_dirs()))
        return 0
    return run(DEVICE if args.device else DRY_RUN, args)


# -- setup ------------------------------------------------------------------------------------


def setup(store: Path, ort_target: Path, site_target: Path) -> int:
    started = time.perf_counter()
    payload = store / "payload"
    shutil.rmtree(payload, ignore_errors=True)
    with tarfile.open(store / "payload.tar.xz", "r:xz") as tar:
        tar.extractall(payload, filter="data")
    print(f"[setup] payload extracted in {time.perf_counter() - started:.1f} s")
    for wheels, target in (
        (payload / "wheels" / "ort", ort_target),
        (payload / "wheels" / "site", site_target),
    ):
        found = sorted(str(w) for w in wheels.glob("*.whl"))
        if not found:
            continue
        shutil.rmtree(target, ignore_errors=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--no-deps",
            "--no-compile",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *found,
        ]
        result = subprocess.run(command, check=False)
        if result.returncode:
            print(f"[setup] pip install into {target} failed", file=sys.stderr)
            return result.returncode
        print(f"[setup] {len(found)} wheel(s) installed into {target}")
    print(f"[setup] done in {time.perf_counter() - started:.1f} s")
    return 0


def cuda_library_dirs() -> list[str]:
    """``lib`` folders of the nvidia-* packages (cuBLAS, cuDNN, cuFFT, cuRAND, runtime) that
    the image's CUDA PyTorch brought: onnxruntime-gpu's CUDA 13 provider loads them from here."""
    found: list[str] = []
    for entry in sys.path:
        base = Path(entry) / "nvidia"
        if not base.is_dir():
            continue
        for lib in sorted(base.glob("**/lib")):
            if any(lib.glob("*.so*")) and str(lib) not in found:
                found.append(str(lib))
    return found


# -- run --------------------------------------------------------------------------------------


class Proof:
    def __init__(self, settings: Settings, args: argparse.Namespace) -> None:
        self.settings = settings
        self.args = args
        self.payload: Path = args.payload
        self.work: Path = args.work
        self.info = json.loads((self.payload / "info.json").read_text())
        self.steps: dict[str, Any] = {}
        self.logs: list[str] = []
        self.throughput: dict[str, Any] = {}

    def step(self, name: str, function: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        print(f"--- {name}", flush=True)
        try:
            result = function()
            result.setdefault("ok", True)
        except Exception as exc:  # every step is recorded, the next one still runs
            result = {
                "ok": False,
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc()[-3000:],
            }
            print(result["traceback"], file=sys.stderr, flush=True)
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.steps[name] = result
        print(
            f"--- {name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)", flush=True
        )


def run(settings: Settings, args: argparse.Namespace) -> int:
    os.environ.setdefault("SEMDB_HOME", str(args.payload / "home"))
    os.environ["SEMDB_HOME"] = str(args.payload / "home")
    args.work.mkdir(parents=True, exist_ok=True)
    if settings.device:
        import torch  # first: it loads the CUDA 13 libraries onnxruntime-gpu links to

        torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32
    proof = Proof(settings, args)
    proof.step("env", lambda: env_info(proof))
    proof.step("provider", lambda: prove_provider(proof))
    proof.step("parity", lambda: parity(proof))
    proof.step("throughput", lambda: throughput(proof))
    proof.step("ndcg", lambda: ndcg(proof))
    proof.step("pytest", lambda: run_pytest(proof))
    proof.step("train", lambda: run_train(proof))
    return report(proof)


def env_info(proof: Proof) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import tokenizers
    import torch

    info: dict[str, Any] = {
        "mode": "device" if proof.settings.device else "dry-run",
        "payload": proof.info,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "onnxruntime_device": ort.get_device(),
        "available_providers": ort.get_available_providers(),
        "cuda": torch.cuda.is_available(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda_runtime"] = torch.version.cuda
        info["bf16"] = torch.cuda.is_bf16_supported()
    if proof.settings.device:
        target = str(proof.args.ort_target)
        if not ort.__file__.startswith(target) or ort.get_device() != "GPU":
            raise RuntimeError(
                f"the imported onnxruntime is {ort.__file__} ({ort.get_device()}), not "
                f"onnxruntime-gpu from {target}: the CPU package shadows it"
            )
    return info


def load_embedder(proof: Proof, **kwargs: Any) -> Any:
    from semdb.embed import Embedder

    return Embedder.load(proof.info["bundle"], provider=proof.settings.provider, **kwargs)


def device_memory_used() -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return int(total - free)


def prove_provider(proof: Proof) -> dict[str, Any]:
    from semdb.errors import ProviderError

    expected = "CUDAExecutionProvider" if proof.settings.device else "CPUExecutionProvider"
    before = device_memory_used()
    attempts = []
    try:
        embedder = load_embedder(proof, precision="fp16")
    except ProviderError as exc:
        attempts.append(f"first load: {exc}")
        import onnxruntime as ort

        if not hasattr(ort, "preload_dlls"):
            raise
        ort.preload_dlls()  # onnxruntime's own search of the nvidia packages, then again
        attempts.append("onnxruntime.preload_dlls() called")
        embedder = load_embedder(proof, precision="fp16")
    session_providers = embedder.session.session.get_providers()
    texts = json.loads((proof.payload / "reference.json").read_text())["texts"]
    vectors = embedder.embed(texts)
    after = device_memory_used()
    result = {
        "session_providers": session_providers,
        "semdb_provider": embedder.provider,
        "precision": embedder.precision,
        "io_binding": embedder.session.io_binding,
        "token_budget": embedder.token_budget,
        "prefetch": embedder.prefetch,
        "vectors": list(vectors.shape),
        "device_memory_before": before,
        "device_memory_after": after,
        "attempts": attempts,
    }
    if session_providers[0] != expected:
        raise RuntimeError(f"the session runs on {session_providers}, not {expected}: {result}")
    if proof.settings.device and (before is None or after is None or after <= before):
        raise RuntimeError(f"device memory did not grow while ORT ran: {result}")
    return result


def reference_vectors(proof: Proof) -> tuple[list[str], Any]:
    import numpy as np

    texts = json.loads((proof.payload / "reference.json").read_text())["texts"]
    return texts, np.load(proof.payload / "reference.npy")


def torch_model(proof: Proof, dtype_name: str) -> Any:
    import torch
    from transformers import AutoModel

    dtype = getattr(torch, dtype_name)
    device = "cuda" if proof.settings.device else "cpu"
    model = AutoModel.from_pretrained(str(proof.payload / "torch"), dtype=dtype)
    return model.to(device).eval()


def torch_encode(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """sentence-transformers' MiniLM: mean pooling over the mask, then L2 normalisation."""
    import torch

    with torch.inference_mode():
        hidden = model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


def torch_embed(proof: Proof, model: Any, texts: list[str], max_tokens: int) -> Any:
    """Vectors of ``texts`` with the PyTorch model and semdb's tokenizer (same token ids)."""
    import numpy as np
    import torch

    from semdb.bundles import find_bundle
    from semdb.embed.batching import TextTokenizer, pad_batch, plan_batches

    bundle = find_bundle(proof.info["bundle"])
    tokenizer = TextTokenizer(bundle.tokenizer_path, max_tokens)
    tokenized = tokenizer.tokenize(texts)
    device = next(model.parameters()).device
    result = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    for indices in plan_batches(tokenized.lengths, 32768 if proof.settings.device else 2048):
        ids, mask = pad_batch(tokenized.encodings, indices, tokenizer.pad_id)
        vectors = torch_encode(
            model, torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)
        )
        result[indices] = vectors.cpu().numpy()
    return result


def cosine_summary(a: Any, b: Any) -> dict[str, Any]:
    import numpy as np

    cos = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "min": round(float(cos.min()), 6),
        "mean": round(float(cos.mean()), 6),
        "below_0.999": int((cos < PARITY_MIN).sum()),
        "texts": len(cos),
    }


def parity(proof: Proof) -> dict[str, Any]:
    texts, reference = reference_vectors(proof)
    embedder = load_embedder(proof, precision="fp16")
    ort_fp16 = embedder.embed(texts)
    result: dict[str, Any] = {
        "reference": "PyTorch fp32 (sentence-transformers, CPU, prepare.py)",
        "ort_fp16_vs_reference": cosine_summary(ort_fp16, reference),
    }
    ort_fp32 = load_embedder(proof, precision="fp32").embed(texts)
    result["ort_fp32_vs_reference"] = cosine_summary(ort_fp32, reference)
    if proof.info.get("torch_weights") == "fp32":
        model = torch_model(proof, "float32")
        torch_fp32 = torch_embed(proof, model, texts, embedder.max_tokens)
        result["torch_fp32_here_vs_reference"] = cosine_summary(torch_fp32, reference)
        result["ort_fp16_vs_torch_fp32_here"] = cosine_summary(ort_fp16, torch_fp32)
        del model
    result["passed"] = result["ort_fp16_vs_reference"]["min"] >= PARITY_MIN
    if not result["passed"]:
        result["ok"] = False
    return result


# -- throughput ---------------------------------------------------------------------------------


def fixed_length_inputs(proof: Proof, rows: int, tokens: int) -> tuple[Any, Any, list[str]]:
    """``rows`` real texts tokenised to exactly ``tokens`` tokens each (ids, mask, texts)."""
    import numpy as np

    from semdb.bundles import find_bundle
    from semdb.embed.batching import TextTokenizer
    from semdb.evaluation.beir import load_beir_corpus

    corpus = list(load_beir_corpus(proof.payload / "beir").values())
    tokenizer = TextTokenizer(find_bundle(proof.info["bundle"]).tokenizer_path, tokens)
    tokenized = tokenizer.tokenize(corpus)
    chosen = [i for i in range(len(corpus)) if tokenized.lengths[i] == tokens]
    if not chosen:
        raise RuntimeError(f"no text of the corpus has {tokens} tokens")
    picks = [chosen[i % len(chosen)] for i in range(rows)]
    ids = np.array([tokenized.encodings[i].ids for i in picks], dtype=np.int64)
    mask = np.ones_like(ids)
    return ids, mask, [corpus[i] for i in picks]


def timed(function: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> float:
    function()  # warm-up: kernels, arena growth for this shape
    sync()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(proof: Proof) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    import torch

    settings = proof.settings
    device = "cuda" if settings.device else "cpu"
    sync = torch.cuda.synchronize if settings.device else (lambda: None)
    ids, mask, texts = fixed_length_inputs(proof, settings.rows, settings.tokens)
    embedder = load_embedder(proof, precision="fp16")
    session = embedder.session.session
    names = embedder.session.input_names
    output = "sentence_embedding"

    def feeds(start: int, end: int) -> dict[str, Any]:
        feed = {
            "input_ids": ids[start:end],
            "attention_mask": mask[start:end],
            "token_type_ids": np.zeros_like(ids[start:end]),
        }
        return {name: feed[name] for name in names}

    model = torch_model(proof, "float16" if settings.device else "float32")
    ids_device = torch.from_numpy(ids).to(device)
    mask_device = torch.from_numpy(mask).to(device)
    per_batch: dict[str, dict[int, float]] = {}

    for batch in settings.batch_sizes:
        starts = range(0, settings.rows - batch + 1, batch)
        rows = len(starts) * batch
        if rows == 0:
            continue
        bound_inputs = [
            {
                name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device, 0)
                for name, array in feeds(s, s + batch).items()
            }
            for s in starts
        ]

        def torch_host(starts: range = starts, batch: int = batch) -> None:
            for s in starts:
                vectors = torch_encode(
                    model,
                    torch.from_numpy(ids[s : s + batch]).to(device, non_blocking=True),
                    torch.from_numpy(mask[s : s + batch]).to(device, non_blocking=True),
                )
                vectors.cpu()

        def torch_device(starts: range = starts, batch: int = batch) -> None:
            for s in starts:
                torch_encode(model, ids_device[s : s + batch], mask_device[s : s + batch])

        def ort_run(starts: range = starts, batch: int = batch) -> None:
            for s in starts:
                session.run([output], feeds(s, s + batch))

        def ort_bound(bound_inputs: list[dict[str, Any]] = bound_inputs) -> None:
            for inputs in bound_inputs:
                binding = session.io_binding()
                for name, value in inputs.items():
                    binding.bind_ortvalue_input(name, value)
                binding.bind_output(output, device)
                session.run_with_iobinding(binding)

        engines = {
            "torch fp16, host in/out": torch_host,
            "torch fp16, inputs on device": torch_device,
            "ort fp16, run (host in/out)": ort_run,
            "ort fp16, io binding (inputs on device)": ort_bound,
        }
        for name, function in engines.items():
            seconds = timed(function, settings.repeats, sync)
            per_batch.setdefault(name, {})[batch] = round(rows / seconds, 1)
        print("  batch", batch, {k: v[batch] for k, v in per_batch.items()}, flush=True)
        del bound_inputs

    best = {name: max(rates.items(), key=lambda kv: kv[1]) for name, rates in per_batch.items()}
    summary = {name: {"batch": b, "sentences_per_s": r} for name, (b, r) in best.items()}

    # semdb end to end: tokenisation (prefetched) + batches by token budget + IO binding.
    budget = best["ort fp16, io binding (inputs on device)"][0] * settings.tokens
    end_to_end = load_embedder(proof, precision="fp16", token_budget=budget)
    strings = texts * max(1, (4 * settings.rows) // len(texts))
    end_to_end.embed(strings[: settings.rows])
    started = time.perf_counter()
    end_to_end.embed(strings)
    seconds = time.perf_counter() - started
    summary["semdb Embedder.embed (tokenising too)"] = {
        "batch": f"token budget {budget}",
        "sentences_per_s": round(len(strings) / seconds, 1),
        "texts": len(strings),
        "prefetch": end_to_end.prefetch,
    }
    ort_best = max(
        summary["ort fp16, run (host in/out)"]["sentences_per_s"],
        summary["ort fp16, io binding (inputs on device)"]["sentences_per_s"],
    )
    torch_best = max(
        summary["torch fp16, host in/out"]["sentences_per_s"],
        summary["torch fp16, inputs on device"]["sentences_per_s"],
    )
    proof.throughput = {
        "tokens": settings.tokens,
        "rows": settings.rows,
        "repeats": settings.repeats,
        "per_batch": per_batch,
        "best": summary,
    }
    return {
        "tokens": settings.tokens,
        "best": summary,
        "ort_over_torch": round(ort_best / torch_best, 3),
        "targets": {"ort_over_torch_at_least": TARGET_SPEEDUP, "ort_rate_at_least": TARGET_RATE},
        "met": {
            "speedup": ort_best / torch_best >= TARGET_SPEEDUP,
            "rate": ort_best >= TARGET_RATE,
        },
    }


# -- retrieval quality --------------------------------------------------------------------------


def ndcg(proof: Proof) -> dict[str, Any]:
    from bench.embed import ndcg_at_10
    from semdb.evaluation.beir import load_beir

    split = load_beir(proof.payload / "beir", "test")
    query_ids = sorted(split.query_ids)
    document_ids = list(split.corpus)
    corpus = [split.corpus[d] for d in document_ids]
    queries = [split.queries[q] for q in query_ids]
    result: dict[str, Any] = {"queries": len(query_ids), "documents": len(corpus)}
    embedder = load_embedder(proof, precision="fp16")
    started = time.perf_counter()
    documents = embedder.embed(corpus)
    result["ort_fp16_corpus_seconds"] = round(time.perf_counter() - started, 2)
    fp16 = ndcg_at_10(
        embedder.embed(queries, kind="query"), documents, query_ids, document_ids, split.qrels
    )
    result["ort_fp16"] = round(fp16, 4)
    fp32_embedder = load_embedder(proof, precision="fp32")
    fp32 = ndcg_at_10(
        fp32_embedder.embed(queries, kind="query"),
        fp32_embedder.embed(corpus),
        query_ids,
        document_ids,
        split.qrels,
    )
    result["ort_fp32"] = round(fp32, 4)
    result["fp16_minus_fp32_points"] = round(100 * (fp16 - fp32), 2)
    result["met"] = abs(100 * (fp16 - fp32)) <= TARGET_NDCG_POINTS
    if proof.info.get("torch_weights") == "fp32":
        model = torch_model(proof, "float32")
        fp32 = ndcg_at_10(
            torch_embed(proof, model, queries, embedder.max_tokens),
            torch_embed(proof, model, corpus, embedder.max_tokens),
            query_ids,
            document_ids,
            split.qrels,
        )
        result["torch_fp32"] = round(fp32, 4)
        result["fp16_minus_torch_fp32_points"] = round(100 * (fp16 - fp32), 2)
    reference = proof.info.get("reference_ndcg")
    if reference:
        result["ort_fp32_cpu_reference"] = reference
    return result


# -- the test suite and training ----------------------------------------------------------------


def run_pytest(proof: Proof) -> dict[str, Any]:
    files = sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "tests").glob("test_*.py")
        if "pytest.mark.gpu" in p.read_text()
    )
    env = {**os.environ, "SEMDB_TEST_TINY_BUNDLE": str(proof.payload / proof.info["tiny_bundle"])}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "gpu",
        *files,
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "-o",
        "addopts=--strict-markers",
        # a folder of its own: pytest's default root (/tmp/pytest-of-<user>) is made 0700 by
        # every session, which locks an enclosing test session's server out of its data
        f"--basetemp={tempfile.mkdtemp(prefix='semdb-gpu-pytest-')}",
    ]
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    output = completed.stdout + completed.stderr
    proof.logs.append("$ " + " ".join(command) + "\n" + output)
    last = [line for line in output.splitlines() if line.strip()][-1:] or [""]
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", last[0])}
    return {
        "files": files,
        "returncode": completed.returncode,
        "summary": last[0],
        "counts": counts,
        "ok": completed.returncode == 0,
    }


def run_train(proof: Proof) -> dict[str, Any]:
    output_dir = proof.work / "train-run"
    command = [
        sys.executable,
        "-m",
        "semdb",
        "train",
        str(proof.payload / "beir"),
        "--split",
        "train",
        "-o",
        str(output_dir),
        "--base-model",
        str(proof.payload / "torch"),
        "--overwrite",
        *proof.settings.train_args,
    ]
    env = {
        **os.environ,
        "SEMDB_HOME": str(proof.work / "train-home"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    started = time.perf_counter()
    completed = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    seconds = time.perf_counter() - started
    output = completed.stdout + completed.stderr
    proof.logs.append("$ " + " ".join(command) + "\n" + output)
    result: dict[str, Any] = {
        "returncode": completed.returncode,
        "wall_seconds": round(seconds, 1),
        "args": list(proof.settings.train_args),
        "ok": completed.returncode == 0,
    }
    trained = re.search(r"trained (\d+) steps in (\d+) s on (\d+) pairs", output)
    if trained:
        result.update(steps=int(trained[1]), train_seconds=int(trained[2]), pairs=int(trained[3]))
    validation = re.search(r"validation nDCG@10 .*", output)
    if validation:
        result["validation"] = validation[0]
    if proof.settings.device:
        import torch

        result["amp"] = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    else:
        result["amp"] = "none (CPU)"
    return result


# -- report -------------------------------------------------------------------------------------


def report(proof: Proof) -> int:
    out: Path = proof.args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (out / "gpu-proof.json").write_text(
        json.dumps({"measured_at": stamp, "steps": proof.steps}, indent=1, default=str) + "\n"
    )
    (out / "gpu-throughput.json").write_text(
        json.dumps({"measured_at": stamp, **proof.throughput}, indent=1, default=str) + "\n"
    )
    (out / "gpu-logs.txt").write_text("\n\n".join(proof.logs))
    print("\n=== GPU proof" + (" (DRY RUN, CPU)" if not proof.settings.device else ""))
    for name, result in proof.steps.items():
        print(
            f"{name:11s} {'ok' if result['ok'] else 'FAILED':7s} {result['seconds']:7.1f} s  "
            f"{headline(name, result)}"
        )
    best = proof.steps.get("throughput", {}).get("best", {})
    if best:
        print(f"\nsentences/s at {proof.settings.tokens} tokens (best batch):")
        for name, entry in best.items():
            print(f"  {name:42s} {entry['sentences_per_s']:>12,.0f}   batch {entry['batch']}")
    print(f"\nresults: {out}/gpu-proof.json, gpu-throughput.json, gpu-logs.txt")
    return 0 if all(r["ok"] for r in proof.steps.values()) else 1


def headline(name: str, result: dict[str, Any]) -> str:
    if not result["ok"] and "error" in result:
        return result["error"][:150]
    if name == "env":
        return (
            f"{result.get('gpu', 'no GPU')}; onnxruntime {result['onnxruntime']} "
            f"({result['onnxruntime_device']}); torch {result['torch']}"
        )
    if name == "provider":
        return f"session providers {result['session_providers']}"
    if name == "parity":
        return f"ORT fp16 vs PyTorch fp32: {result['ort_fp16_vs_reference']}"
    if name == "throughput":
        return f"ORT/torch {result['ort_over_torch']}x; targets met: {result['met']}"
    if name == "ndcg":
        return ", ".join(
            f"{k} {v}"
            for k, v in result.items()
            if k in ("ort_fp16", "ort_fp32", "torch_fp32", "fp16_minus_fp32_points", "met")
        )
    if name == "pytest":
        return result["summary"]
    if name == "train":
        return (
            f"{result.get('steps')} steps in {result.get('train_seconds')} s, AMP "
            f"{result.get('amp')}; {result.get('validation', '')}"
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
