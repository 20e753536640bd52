"""Split a large file into parts that fit one device call, and put it back together, verified.

Standard library only: it runs on the device machine before anything is installed there.

    python bench/gpu/parts.py split BIG.tar.xz OUTDIR --part-size 60MiB
        -> OUTDIR/BIG.tar.xz.part001 ... and OUTDIR/BIG.tar.xz.manifest.json
    python bench/gpu/parts.py receive SRC_DIR STORE_DIR
        -> copies the parts found in SRC_DIR (one call's carry folder) into STORE_DIR, each
           checked against the manifest, and says which parts STORE_DIR still lacks
    python bench/gpu/parts.py join STORE_DIR DEST
        -> DEST, rebuilt from all parts, its size and sha256 checked against the manifest

The manifest names the whole file (size, sha256) and each part (file, offset, size, sha256);
a copy of it travels with every part, so any call can check what it received.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 60 * MIB
MANIFEST_SUFFIX = ".manifest.json"
CHUNK = 4 * MIB


class PartsError(Exception):
    """A part or the rebuilt file does not match its manifest, or a part is missing."""


def parse_size(text: str) -> int:
    """``60MiB``, ``512KiB``, ``1000`` (bytes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*", text)
    if not match:
        raise ValueError(f"not a size: {text!r} (say e.g. 60MiB, 512KiB or a number of bytes)")
    factor = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": 1024 * MIB}[match.group(2) or "B"]
    return int(match.group(1)) * factor


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def split(source: Path, out_dir: Path, part_size: int = DEFAULT_PART_SIZE) -> Path:
    """Write ``source`` as parts of at most ``part_size`` bytes and a manifest; return it."""
    if part_size < 1:
        raise ValueError(f"part size must be positive, not {part_size}")
    out_dir.mkdir(parents=True, exist_ok=True)
    whole = hashlib.sha256()
    parts: list[dict[str, Any]] = []
    offset = 0
    with source.open("rb") as handle:
        while True:
            data = handle.read(part_size)
            if not data and parts:
                break
            name = f"{source.name}.part{len(parts) + 1:03d}"
            (out_dir / name).write_bytes(data)
            whole.update(data)
            parts.append(
                {
                    "file": name,
                    "offset": offset,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            offset += len(data)
            if len(data) < part_size:
                break
    manifest = {
        "name": source.name,
        "size": offset,
        "sha256": whole.hexdigest(),
        "part_size": part_size,
        "parts": parts,
    }
    path = out_dir / (source.name + MANIFEST_SUFFIX)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return path


def find_manifest(folder: Path) -> Path:
    found = sorted(folder.glob("*" + MANIFEST_SUFFIX))
    if len(found) != 1:
        raise PartsError(f"{folder} holds {len(found)} manifests (*{MANIFEST_SUFFIX}), not one")
    return found[0]


def load_manifest(folder: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(find_manifest(folder).read_text())
    return manifest


def check_part(path: Path, entry: dict[str, Any]) -> None:
    if not path.is_file():
        raise PartsError(f"part {entry['file']} is missing from {path.parent}")
    size = path.stat().st_size
    if size != entry["size"]:
        raise PartsError(
            f"part {entry['file']} has {size} bytes, the manifest says {entry['size']}"
        )
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise PartsError(f"part {entry['file']} is damaged: sha256 {digest} != {entry['sha256']}")


def missing(store: Path) -> list[str]:
    """The parts the manifest in ``store`` names that ``store`` does not hold (by name)."""
    manifest = load_manifest(store)
    return [p["file"] for p in manifest["parts"] if not (store / p["file"]).is_file()]


def receive(source: Path, store: Path) -> list[str]:
    """Copy the manifest and the parts in ``source`` into ``store``, each verified; return the
    names of the parts still missing from ``store``."""
    manifest_path = find_manifest(source)
    manifest = json.loads(manifest_path.read_text())
    store.mkdir(parents=True, exist_ok=True)
    if (store / manifest_path.name).is_file():
        held = json.loads((store / manifest_path.name).read_text())
        if held["sha256"] != manifest["sha256"]:
            raise PartsError(
                f"{store} holds parts of another {manifest['name']} (sha256 {held['sha256']}); "
                "empty it first"
            )
    shutil.copyfile(manifest_path, store / manifest_path.name)
    for entry in manifest["parts"]:
        part = source / entry["file"]
        if part.is_file():
            check_part(part, entry)
            shutil.copyfile(part, store / entry["file"])
    return missing(store)


def join(store: Path, dest: Path) -> dict[str, Any]:
    """Rebuild the file from the parts in ``store`` into ``dest``, verified; return the manifest."""
    manifest = load_manifest(store)
    absent = missing(store)
    if absent:
        raise PartsError(f"{store} lacks {len(absent)} part(s): {', '.join(absent)}")
    whole = hashlib.sha256()
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    with partial.open("wb") as out:
        for entry in manifest["parts"]:
            check_part(store / entry["file"], entry)
            with (store / entry["file"]).open("rb") as handle:
                while block := handle.read(CHUNK):
                    whole.update(block)
                    out.write(block)
    size = partial.stat().st_size
    if size != manifest["size"] or whole.hexdigest() != manifest["sha256"]:
        partial.unlink()
        raise PartsError(
            f"the rebuilt {manifest['name']} ({size} bytes, sha256 {whole.hexdigest()}) does not "
            f"match the manifest ({manifest['size']} bytes, sha256 {manifest['sha256']})"
        )
    partial.replace(dest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("split", help="file -> parts + manifest")
    p.add_argument("source", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--part-size", type=parse_size, default=DEFAULT_PART_SIZE)
    p = commands.add_parser("receive", help="copy one call's parts into the store, verified")
    p.add_argument("source", type=Path)
    p.add_argument("store", type=Path)
    p = commands.add_parser("join", help="parts in the store -> the file, verified")
    p.add_argument("store", type=Path)
    p.add_argument("dest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "split":
            manifest = json.loads(split(args.source, args.out_dir, args.part_size).read_text())
            print(f"{manifest['name']}: {len(manifest['parts'])} parts in {args.out_dir}")
        elif args.command == "receive":
            absent = receive(args.source, args.store)
            held = len(load_manifest(args.store)["parts"]) - len(absent)
            print(f"parts held in {args.store}: {held}; missing: {', '.join(absent) or 'none'}")
        else:
            manifest = join(args.store, args.dest)
            print(f"{args.dest}: {manifest['size']} bytes, sha256 {manifest['sha256']} (verified)")
    except (PartsError, ValueError, OSError) as exc:
        print(f"parts: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
