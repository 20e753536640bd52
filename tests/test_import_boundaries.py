"""The runtime stays free of torch and transformers; the database layer free of ONNX."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "sentence_transformers", "optimum")


@pytest.mark.parametrize("module", ["semdb", "semdb.cli", "semdb.db"])
def test_importing_the_runtime_loads_no_training_stack(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_help_of_every_command_loads_no_training_stack() -> None:
    from click.testing import CliRunner

    from semdb.cli import cli

    def walk(group, path):  # type: ignore[no-untyped-def]
        yield path
        for name, command in getattr(group, "commands", {}).items():
            yield from walk(command, [*path, name])

    paths = list(walk(cli, []))
    assert len(paths) > 1
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom semdb.cli import cli\n"
        f"for p in {paths!r}:\n    CliRunner().invoke(cli, [*p, '--help'])\n"
        f"assert not [m for m in {HEAVY!r} if m in sys.modules]\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_embedder_loads_onnx_runtime_but_no_training_stack() -> None:
    code = (
        "import sys, semdb\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "semdb.Embedder\n"
        "assert 'onnxruntime' in sys.modules\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("embed", {"torch", "transformers", "sqlalchemy", "psycopg", "optimum"}),
        ("bundles", {"torch", "transformers", "onnxruntime", "optimum"}),
    ],
)
def test_a_package_never_imports_what_its_wall_forbids(package: str, forbidden: set[str]) -> None:
    """A static check of every import statement, so that no later edit slips one in."""
    import ast
    from pathlib import Path

    import semdb

    folder = Path(semdb.__file__).parent / package
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


def test_no_semdb_module_outside_the_cli_imports_the_training_package() -> None:
    """Training depends on semdb, never the reverse: every module of semdb (but semdb.cli,
    whose `semdb train` and `semdb eval` start training) is imported and then called
    nowhere near training; a function-level import shows up in the source, so both are
    checked: the modules loaded after importing each one, and every import statement."""
    import ast
    from pathlib import Path

    import semdb

    root = Path(semdb.__file__).parent
    modules = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        if name == "semdb.cli" or name.startswith("semdb.cli.") or name == "semdb.__main__":
            continue
        modules.append(name)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == (
                "import_module"
            ):
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
                names = [n for n in names if isinstance(n, str)]
                if path.name == "importer.py":
                    # The bundle importer loads the exporter on demand, with the training
                    # extra's install hint when it is missing: training code, not semdb's.
                    names = [n for n in names if n != "training.export"]
            else:
                continue
            for imported in names:
                assert imported.split(".")[0] != "training", f"{name} imports {imported}"
    assert len(modules) > 40
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
