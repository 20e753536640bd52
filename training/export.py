"""Export a sentence-transformers model to a semdb model bundle, and prove the export.

>>> export_bundle("runs/my-model/final", "bundles/my-model", name="my-model", version="2")

What it writes (see :mod:`semdb.bundles.bundle` for the format):

1. **Graph**: optimum traces the whole sentence-transformers pipeline (transformer, pooling,
   dense layers, normalisation), so the graph's output is the final embedding; inputs
   ``input_ids`` and ``attention_mask`` with dynamic batch and sequence axes. The per-token
   output is dropped: only ``sentence_embedding`` leaves the graph. Opset 17 by default:
   at opset 18 ONNX Runtime's fusions no longer recognise LayerNorm and attention (measured:
   nothing fused), which costs speed, not correctness.
2. **Fusion**: ONNX Runtime's transformer optimizer (the one optimum's ORTOptimizer calls)
   fuses attention, embedding + LayerNorm, skip + LayerNorm and bias + GELU into single
   kernels. The result is portable between the CPU and CUDA providers (``opt_level=0``:
   provider-specific rewrites happen when a session loads the graph).
3. **fp16** (for CUDA): weights and activations in half precision, inputs and outputs kept
   as they are, pooling and normalisation kept in fp32 so vectors stay unit length.
4. **int8** (for CPU): dynamic quantisation, per-channel int8 weights of every MatMul and
   fused Attention, activations quantised per batch. Per-tensor weights lose too much
   (mean cosine ~0.955 measured on MiniLM); per-channel keeps ~0.995. Variants measured on
   MiniLM on a Xeon with AVX-512 VNNI (CPU seconds per text, one thread, 256 debdesc texts):
   this graph (ONNX Runtime fuses it at load into QAttention + DynamicQuantizeMatMul) ran
   1.86-1.98x fp32; unfused attention with only the projections quantised 1.82x; a
   MultiHeadAttention fusion 1.82x; MatMul only (fp32 attention) 1.63x; u8 weights 1.06x;
   reduce_range (7-bit weights, the advice for AVX2 without VNNI) the same speed but min
   cosine 0.977 against 0.990. So one graph is written; on a CPU where its kernel is not
   faster or saturates, the runtime measures that and keeps fp32
   (:mod:`semdb.embed.precision`).
5. **Parity**: real sentences (:mod:`training.parity_texts`, or yours) embedded by
   sentence-transformers (PyTorch, fp32) and by semdb's own Embedder on each graph, CPU
   provider. The export fails unless fp32 reaches cosine >= 0.9999 on every text, int8 a
   mean cosine >= 0.99 and fp16 cosine >= 0.999 on every text. The numbers go into the
   manifest's provenance.

The bundle is built in a temporary folder next to ``out_dir`` and moved there only when
every check passed: a failed export leaves nothing behind.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from semdb.bundles.bundle import ONNX_FILES, OUTPUT_NAME, PRECISIONS, TOKENIZER_FILE, seal_bundle
from semdb.bundles.manifest import Manifest, check_name
from semdb.embed.precision import row_cosines
from semdb.errors import SemdbError

log = logging.getLogger(__name__)

FP32_MIN_COSINE = 0.9999
INT8_MEAN_COSINE = 0.99
FP16_MIN_COSINE = 0.999
# Quantised operators: every MatMul and the fused Attention (QAttention). Per channel, signed
# int8 weights, unsigned activations (ONNX Runtime's dynamic quantisation).
INT8_OPERATORS = ("MatMul", "Attention")
# Model families whose encoder ONNX Runtime's BERT fusions understand.
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "mpnet"}


class ExportError(SemdbError):
    """The model cannot be exported, or its export does not match the PyTorch model."""


@dataclass(frozen=True)
class ModelFacts:
    """What the bundle's manifest needs to know about a sentence-transformers model."""

    dimension: int
    pooling: str
    normalize: bool
    max_tokens: int
    query_prefix: str
    document_prefix: str
    model_type: str
    num_heads: int
    hidden_size: int


def export_bundle(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    precisions: Sequence[str] = ("fp32", "int8"),
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    max_tokens: int | None = None,
    provenance: Mapping[str, Any] | None = None,
    parity_texts: Sequence[str] | None = None,
    opset: int = 17,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Export the sentence-transformers model in ``model_dir`` as a bundle at ``out_dir``.

    ``precisions``: which graphs to write ("fp32" always; add "fp16" for CUDA, "int8" for
    CPU). Prefixes default to the model's ``query`` and ``document`` prompts, ``max_tokens``
    to its ``max_seq_length``. ``provenance`` is merged into the manifest's (training puts its
    run, data and metrics there). Raises :class:`ExportError` when parity fails.
    """
    check_name(name)
    check_name(version, "model version")
    wanted = _check_precisions(precisions)
    say = progress or (lambda message: log.info("%s", message))
    model_dir = Path(model_dir)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(
            f"{out_dir} already exists and is not empty", fix="choose a new folder, or remove it"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    say(f"loading {model_dir}")
    model = _load_sentence_transformer(model_dir)
    facts = _model_facts(model, max_tokens, query_prefix, document_prefix)
    model.max_seq_length = facts.max_tokens  # the reference truncates where the bundle will
    texts = list(parity_texts) if parity_texts is not None else _default_parity_texts()

    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        say("exporting the graph with optimum")
        raw = _export_graph(model, work / "raw", opset)
        say("fusing the transformer graph")
        fused, fusions = _fuse(raw, facts)
        fused.save_model_to_file(str(work / ONNX_FILES["fp32"]))
        details: dict[str, Any] = {"opset": opset, "fusions": fusions}
        if "fp16" in wanted:
            say("writing the fp16 graph")
            details["fp16"] = _write_fp16(
                work / ONNX_FILES["fp32"], work / ONNX_FILES["fp16"], normalize=facts.normalize
            )
        if "int8" in wanted:
            say("writing the int8 graph (per-channel)")
            details["int8"] = _write_int8(work / ONNX_FILES["fp32"], work / ONNX_FILES["int8"])
        shutil.rmtree(work / "raw")
        _write_tokenizer(model, work / TOKENIZER_FILE, facts.max_tokens)

        manifest = Manifest(
            name=name,
            version=version,
            dimension=facts.dimension,
            pooling=facts.pooling,
            normalize=facts.normalize,
            max_tokens=facts.max_tokens,
            query_prefix=facts.query_prefix,
            document_prefix=facts.document_prefix,
            provenance=_provenance(model_dir, facts, details, provenance),
        )
        bundle = seal_bundle(work, manifest)

        say(f"checking parity with PyTorch on {len(texts)} texts")
        parity = check_parity(model, bundle.path, texts, wanted, facts.document_prefix)
        failures = [f"{p}: {r['failure']}" for p, r in parity.items() if "failure" in r]
        if failures:
            raise ExportError(
                "the ONNX export does not match the PyTorch model: " + "; ".join(failures),
                fix="report it with the model's architecture; try another opset (opset=...)",
            )
        full = dict(bundle.manifest.provenance)
        full["parity"] = {"texts": len(texts), "reference": "sentence-transformers fp32", **parity}
        full["export_seconds"] = round(time.perf_counter() - started, 1)
        replace(bundle.manifest, provenance=full).save(work)

        if out_dir.exists():
            out_dir.rmdir()
        umask = os.umask(0)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp made it private
        work.rename(out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    say(f"bundle written to {out_dir}")
    return out_dir


# -- the model --------------------------------------------------------------------------------


def _load_sentence_transformer(model_dir: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    if not (model_dir / "modules.json").is_file():
        raise ExportError(
            f"{model_dir} is not a sentence-transformers model folder (no modules.json)",
            fix="give the folder that SentenceTransformer.save() wrote",
        )
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    return model


def _model_facts(
    model: Any, max_tokens: int | None, query_prefix: str | None, document_prefix: str | None
) -> ModelFacts:
    modules = list(model)
    kinds = [type(m).__name__ for m in modules]
    if not modules or kinds[0] != "Transformer":
        raise ExportError(f"the model's first module is {kinds[:1]}, not a Transformer")
    transformer = modules[0]
    tokenizer = getattr(transformer, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ExportError("the model has no fast (Rust) tokenizer, which the runtime needs")
    pooling = "none"
    for module in modules:
        if type(module).__name__ == "Pooling":
            mode = module.pooling_mode
            pooling = mode if isinstance(mode, str) else "+".join(mode)
            if not getattr(module, "include_prompt", True) and (query_prefix or document_prefix):
                raise ExportError(
                    "pooling that excludes the prompt cannot be exported with prefixes"
                )
    config = transformer.auto_model.config
    prompts = dict(getattr(model, "prompts", {}) or {})
    document = next((prompts[k] for k in ("document", "passage", "corpus") if k in prompts), "")
    limit = int(model.max_seq_length)
    if max_tokens is not None:
        if not 0 < max_tokens <= limit:
            raise ExportError(f"max_tokens must be between 1 and the model's {limit}")
        limit = max_tokens
    return ModelFacts(
        dimension=int(_embedding_dimension(model)),
        pooling=pooling,
        normalize="Normalize" in kinds,
        max_tokens=limit,
        query_prefix=prompts.get("query", "") if query_prefix is None else query_prefix,
        document_prefix=document if document_prefix is None else document_prefix,
        model_type=str(config.model_type),
        num_heads=int(getattr(config, "num_attention_heads", 0) or 0),
        hidden_size=int(getattr(config, "hidden_size", 0) or 0),
    )


def _embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None)  # sentence-transformers >= 5.7
    return int((getter or model.get_sentence_embedding_dimension)())


# -- the graphs -------------------------------------------------------------------------------


def _export_graph(model: Any, folder: Path, opset: int) -> Path:
    """optimum's export of the whole pipeline, then only ``sentence_embedding`` kept."""
    import onnx
    from optimum.exporters.onnx import onnx_export_from_model
    from torch.jit import TracerWarning

    with warnings.catch_warnings(), _quiet_logs():
        # Tracing warns about Python-side branches that are constant for this architecture,
        # and about the TorchScript exporter being legacy; the parity check decides.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=TracerWarning)
        onnx_export_from_model(
            model,
            folder,
            opset=opset,
            task="feature-extraction",
            library_name="sentence_transformers",
            do_validation=False,  # parity on real sentences follows, through semdb's runtime
        )
    path = folder / "model.onnx"
    graph = onnx.load(str(path))
    kept = [o for o in graph.graph.output if o.name == OUTPUT_NAME]
    if not kept:
        names = [o.name for o in graph.graph.output]
        raise ExportError(f"optimum's export has no {OUTPUT_NAME} output (outputs: {names})")
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    onnx.save(graph, str(path))
    return path


def _fuse(path: Path, facts: ModelFacts) -> tuple[Any, dict[str, int]]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    if facts.model_type not in BERT_LIKE:
        log.warning("%s is not a BERT-like encoder: fusions may not apply", facts.model_type)
    options = FusionOptions("bert")
    optimized = optimize_model(
        str(path),
        model_type="bert",
        num_heads=facts.num_heads,
        hidden_size=facts.hidden_size,
        optimization_options=options,
        opt_level=0,
    )
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    if not stats.get("Attention"):
        log.warning("no attention was fused (%s): the graph is correct but slower", stats)
    return optimized, stats


def _write_fp16(source: Path, target: Path, *, normalize: bool) -> dict[str, Any]:
    """Half precision inside, fp32 in and out; unit length restored in fp32 at the end.

    (Keeping the pooling head in fp32 with the converter's block lists produced invalid graphs:
    it names the casts it inserts after the tensor, and they collide.)
    """
    import onnx
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(source)))
    model.convert_float_to_float16(keep_io_types=True)
    if normalize:
        _append_l2_normalisation(model.model.graph)
    model.save_model_to_file(str(target))
    return {"weights": "fp16", "io": "fp32", "renormalised_in_fp32": normalize}


def _append_l2_normalisation(graph: Any) -> None:
    """Divide the fp32 output by its L2 norm (what sentence-transformers' Normalize does)."""
    import onnx
    from onnx import TensorProto, helper

    (output,) = [o for o in graph.output if o.name == OUTPUT_NAME]
    producer = next(node for node in graph.node if OUTPUT_NAME in node.output)
    raw = f"{OUTPUT_NAME}_before_fp32_normalisation"
    producer.output[list(producer.output).index(OUTPUT_NAME)] = raw
    epsilon = onnx.numpy_helper.from_array(np.array(1e-12, dtype=np.float32), "fp32_norm_epsilon")
    axes = onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "fp32_norm_axes")
    graph.initializer.extend([epsilon, axes])
    graph.node.extend(
        [
            # ReduceSum takes its axes as an input at every opset >= 13 (ReduceL2 only at 18).
            helper.make_node("Mul", [raw, raw], ["fp32_squares"], name="fp32_norm_square"),
            helper.make_node(
                "ReduceSum", ["fp32_squares", axes.name], ["fp32_sum"], name="fp32_norm_sum"
            ),
            helper.make_node("Sqrt", ["fp32_sum"], ["fp32_norm"], name="fp32_norm_sqrt"),
            helper.make_node(
                "Max", ["fp32_norm", epsilon.name], ["fp32_safe"], name="fp32_norm_max"
            ),
            helper.make_node("Div", [raw, "fp32_safe"], [OUTPUT_NAME], name="fp32_norm_divide"),
        ]
    )
    assert output.type.tensor_type.elem_type == TensorProto.FLOAT


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """Silence the root and optimum loggers below ERROR meanwhile: their advice (opset 18,
    pre-processing before quantization) does not apply here and reads like a failure."""
    loggers = [logging.getLogger(), logging.getLogger("optimum")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _write_int8(source: Path, target: Path) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_logs():  # "consider pre-processing": advice for CNNs, not these graphs
        quantize_dynamic(
            source,
            target,
            per_channel=True,
            reduce_range=False,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OPERATORS),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    return {
        "method": "dynamic",
        "per_channel": True,
        "weights": "int8",
        "activations": "uint8",
        "operators": list(INT8_OPERATORS),
    }


def _write_tokenizer(model: Any, target: Path, max_tokens: int) -> None:
    """The model's own fast tokenizer, padding off and truncation at ``max_tokens``."""
    from tokenizers import Tokenizer

    backend = model[0].tokenizer.backend_tokenizer
    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.save(str(target))


# -- parity -----------------------------------------------------------------------------------


def check_parity(
    model: Any,
    bundle_dir: Path,
    texts: Sequence[str],
    precisions: Sequence[str],
    document_prefix: str = "",
) -> dict[str, dict[str, Any]]:
    """Cosine between PyTorch (fp32) and each graph run by semdb's Embedder on the CPU."""
    from semdb.embed import Embedder

    reference = model.encode(
        list(texts),
        prompt=document_prefix or None,
        batch_size=32,
        convert_to_numpy=True,
        normalize_embeddings=False,
    ).astype(np.float32)
    results: dict[str, dict[str, Any]] = {}
    for precision in precisions:
        embedder = Embedder.load(bundle_dir, provider="cpu", precision=precision)
        vectors = embedder.embed(texts)
        cosine = row_cosines(vectors, reference)
        norm_ratio = np.linalg.norm(vectors, axis=1) / np.linalg.norm(reference, axis=1)
        result: dict[str, Any] = {
            "min_cosine": round(float(cosine.min()), 6),
            "mean_cosine": round(float(cosine.mean()), 6),
            "max_norm_error": round(float(np.abs(norm_ratio - 1).max()), 6),
        }
        failure = _parity_failure(precision, cosine, norm_ratio)
        if failure:
            result["failure"] = failure
        results[precision] = result
    return results


def _parity_failure(precision: str, cosine: np.ndarray, norm_ratio: np.ndarray) -> str | None:
    if precision == "fp32":
        if cosine.min() < FP32_MIN_COSINE:
            return f"min cosine {cosine.min():.6f} < {FP32_MIN_COSINE}"
        if np.abs(norm_ratio - 1).max() > 1e-3:
            return f"vector norms differ by {np.abs(norm_ratio - 1).max():.2e}"
    elif precision == "fp16":
        if cosine.min() < FP16_MIN_COSINE:
            return f"min cosine {cosine.min():.6f} < {FP16_MIN_COSINE}"
    elif precision == "int8" and cosine.mean() < INT8_MEAN_COSINE:
        return f"mean cosine {cosine.mean():.6f} < {INT8_MEAN_COSINE}"
    return None


def _default_parity_texts() -> list[str]:
    from training.parity_texts import SENTENCES

    return list(SENTENCES)


def _check_precisions(precisions: Sequence[str]) -> list[str]:
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ExportError(f"unknown precision(s) {unknown}", fix=f"use {', '.join(PRECISIONS)}")
    return ["fp32", *(p for p in PRECISIONS[1:] if p in precisions)]


def _provenance(
    model_dir: Path,
    facts: ModelFacts,
    details: Mapping[str, Any],
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    versions = {}
    for package in (
        "torch",
        "transformers",
        "sentence-transformers",
        "optimum",
        "optimum-onnx",
        "onnx",
        "onnxruntime",
        "onnxruntime-gpu",
        "tokenizers",
    ):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "source": str(model_dir.absolute()),
        "architecture": facts.model_type,
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "exporter": "training.export (optimum + onnxruntime.transformers)",
        "versions": versions,
        "graph": dict(details),
        **(dict(extra) if extra else {}),
    }
