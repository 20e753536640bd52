"""The quickstart's corpus: every documented module, class and function of the standard library.

Real English text that every Python installation carries, with columns worth filtering on
(module, kind). Extraction imports the modules, so it runs in a child process: whatever they
do at import time (threads, signal handlers, printed output) stays out of the caller.
"""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from semdb.errors import SemdbError

# Modules that open windows, print, or exist only to test Python itself.
_SKIPPED = (
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "venv",
    "msilib",
    "winreg",
    "winsound",
)
_MAX_DOC_CHARS = 4000


@dataclass(frozen=True)
class DocEntry:
    qualname: str  # e.g. "json.dumps", "pathlib.Path.glob"
    module: str  # the top-level package, e.g. "json", "email"
    kind: str  # "module" | "class" | "function" | "method"
    signature: str  # "(obj, *, skipkeys=False, ...)" or "" when unknown
    summary: str  # the docstring's first paragraph, on one line
    doc: str  # the whole docstring (cut at 4,000 characters)


def _public_modules(only: Sequence[str] = ()) -> list[str]:
    import pkgutil

    names = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top.startswith(_SKIPPED) or (only and top not in only):
            continue
        names.append(top)
        try:
            spec = __import__("importlib.util").util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None or not spec.submodule_search_locations:
            continue
        for info in pkgutil.walk_packages(spec.submodule_search_locations, prefix=f"{top}."):
            leaf = info.name.rsplit(".", 1)[-1]
            if not leaf.startswith("_") and ".test" not in info.name:
                names.append(info.name)
    return names


def _signature(obj: object) -> str:
    try:
        text = str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    # Default values print with their memory address: the same every run, without it.
    return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


def _entry(qualname: str, module: str, kind: str, obj: object) -> DocEntry | None:
    doc = inspect.getdoc(obj)
    if not doc or len(doc) < 10:
        return None
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    signature = "" if kind == "module" else _signature(obj)
    return DocEntry(qualname, module, kind, signature, summary, doc[:_MAX_DOC_CHARS])


def _extract(only: Sequence[str] = ()) -> list[DocEntry]:
    import contextlib
    import importlib
    import io
    import warnings

    entries: dict[str, DocEntry] = {}
    for name in _public_modules(only):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except BaseException:
            continue
        top = name.split(".", 1)[0]
        found = [_entry(name, top, "module", module)]
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                found.append(_entry(f"{name}.{attr}", top, "class", obj))
                for member, value in sorted(vars(obj).items()):
                    if member.startswith("_"):
                        continue
                    function = getattr(value, "__func__", value)
                    if inspect.isfunction(function) or inspect.ismethoddescriptor(function):
                        found.append(_entry(f"{name}.{attr}.{member}", top, "method", function))
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                found.append(_entry(f"{name}.{attr}", top, "function", obj))
        for entry in found:
            if entry is not None:
                entries.setdefault(entry.qualname, entry)
    return sorted(entries.values(), key=lambda e: e.qualname)


def check_modules(modules: Sequence[str]) -> None:
    """An error naming the names that are not top-level standard library modules."""
    unknown = sorted(set(modules) - set(sys.stdlib_module_names))
    if unknown:
        raise SemdbError(
            f"not standard library modules: {', '.join(unknown)}",
            fix="name top-level modules of the standard library, e.g. json,pathlib",
        )


def stdlib_docs(modules: Sequence[str] = (), *, python: str | None = None) -> list[DocEntry]:
    """The documentation of the standard library of ``python`` (default: this interpreter),
    extracted in a child process; ``modules`` keeps only these top-level modules."""
    check_modules(modules)
    command = [
        python or sys.executable,
        "-c",
        "from semdb.quickstart.stdlib_docs import _main; _main()",
    ]
    try:
        result = subprocess.run(
            [*command, *modules], capture_output=True, text=True, check=True, timeout=300
        )
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise SemdbError(
            f"reading the standard library's documentation failed: {last[0]}",
            fix="run `semdb quickstart --modules json,pathlib` to try a few modules",
        ) from exc
    return [DocEntry(**item) for item in json.loads(result.stdout)]


def _main() -> None:
    json.dump([asdict(e) for e in _extract(sys.argv[1:])], sys.stdout)
