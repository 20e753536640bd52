"""Where model bundles live: ``SEMDB_HOME/models/<name>/<version>/``.

>>> find_bundle("all-MiniLM-L6-v2")          # the newest version in the store
>>> find_bundle("all-MiniLM-L6-v2@1")        # that version
>>> find_bundle("./bundles/my-model")        # any bundle folder
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from semdb.bundles.bundle import Bundle
from semdb.bundles.manifest import MANIFEST_FILE, check_name
from semdb.config import semdb_home
from semdb.errors import BundleError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
IMPORT_FIX = (
    "import it: `semdb model import` (all-MiniLM-L6-v2) or `semdb model import PATH --name NAME`"
)


def models_home(home: str | Path | None = None) -> Path:
    """The folder that holds every bundle (``SEMDB_HOME/models``)."""
    return (Path(home) if home is not None else semdb_home()) / "models"


def bundle_dir(name: str, version: str, home: str | Path | None = None) -> Path:
    """Where the bundle ``name`` ``version`` lives (or will live) in the store."""
    return models_home(home) / check_name(name) / check_name(version, "model version")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions naturally: "2" < "10", "1.9" < "1.10"."""
    parts = re.split(r"(\d+)", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p)


def list_bundles(home: str | Path | None = None) -> list[Bundle]:
    """Every bundle in the store (manifests read, files not hashed), by name then version."""
    root = models_home(home)
    found: list[Bundle] = []
    if not root.is_dir():
        return found
    for name_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        versions = [p for p in name_dir.iterdir() if (p / MANIFEST_FILE).is_file()]
        for version_dir in sorted(versions, key=lambda p: version_key(p.name)):
            try:
                found.append(Bundle.load(version_dir, verify=False))
            except BundleError:
                continue  # a broken folder is reported when someone asks for it by name
    return found


def find_bundle(
    name_or_path: str | os.PathLike[str],
    *,
    home: str | Path | None = None,
    verify: bool = True,
) -> Bundle:
    """A bundle by folder path, by ``name@version``, or by name (its newest version)."""
    text = os.fspath(name_or_path)
    candidate = Path(text).expanduser()
    try:
        is_folder = candidate.is_dir()
    except OSError:  # a name too long for a path, say: not a folder, so a name (checked)
        is_folder = False
    if is_folder:
        return Bundle.load(candidate, verify=verify)
    if isinstance(name_or_path, os.PathLike) or os.sep in text or text.startswith("."):
        raise BundleError(f"no model bundle at {candidate.absolute()}: no such folder")
    name, at, version = text.partition("@")
    check_name(name)
    if at:  # name@version: an empty or unsafe version is refused, never read as "newest"
        check_name(version, "model version")
    root = models_home(home)
    if version:
        folder = bundle_dir(name, version, home)
        if not folder.is_dir():
            known = ", ".join(v.name for v in _versions(root / name)) or "none"
            raise BundleError(
                f"model {name} has no version {version} in {root} (versions: {known})",
                fix=IMPORT_FIX,
            )
        return Bundle.load(folder, verify=verify)
    versions = _versions(root / name)
    if not versions:
        known = ", ".join(sorted({b.name for b in list_bundles(home)})) or "none"
        raise BundleError(f"no model named {name!r} in {root} (models: {known})", fix=IMPORT_FIX)
    return Bundle.load(versions[-1], verify=verify)


def install_bundle(source: str | Path, home: str | Path | None = None) -> Bundle:
    """Move a finished bundle folder into the store, under its manifest's name and version."""
    bundle = Bundle.load(source)
    target = bundle_dir(bundle.name, bundle.version, home)
    if target.exists():
        raise BundleError(
            f"model {bundle.name} version {bundle.version} already exists at {target}",
            fix="choose another version (--version), or delete that folder first",
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(bundle.path), str(target))
    return Bundle.load(target, verify=False)


def _versions(name_dir: Path) -> list[Path]:
    if not name_dir.is_dir():
        return []
    found = [p for p in name_dir.iterdir() if (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=lambda p: version_key(p.name))
