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
