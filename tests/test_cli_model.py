"""``semdb model`` and ``semdb embed``: the commands a user types, in new processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from semdb.embed import Embedder
from semdb.embed.providers import cuda_listed

from .conftest import run_semdb

BAD_URL = "postgresql://nobody@127.0.0.1:1/nowhere"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-home")


@pytest.fixture(scope="module")
def imported(engine: sa.Engine, tiny_model_dir: Path, home: Path) -> Path:
    """The tiny model imported through the command line, with fp32 and int8 graphs."""
    result = run_semdb(
        "model",
        "import",
        str(tiny_model_dir),
        "--name",
        "cli-tiny",
        "--precision",
        "fp32",
        "--precision",
        "int8",
        "--activate",
        env={"SEMDB_HOME": str(home)},
    )
    assert result.returncode == 0, result.stderr
    assert "cli-tiny 1: 32 dimensions, fp32 cosine 1.0000, int8 cosine" in result.stdout
    assert "active in the database as model id" in result.stdout
    assert "checking parity with PyTorch" in result.stderr  # progress, on stderr
    return home / "models" / "cli-tiny" / "1"


def test_import_then_list(imported: Path, home: Path) -> None:
    assert (imported / "manifest.json").is_file()
    assert not (imported / "model_fp16.onnx").exists()
    listed = run_semdb("model", "list", env={"SEMDB_HOME": str(home), "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "cli-tiny" in line)
    assert "fp32, int8" in row and "active" in row

    again = run_semdb(
        "model", "import", str(imported.parent), "--name", "cli-tiny", env={"SEMDB_HOME": str(home)}
    )
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"Error: model cli-tiny version 1 already exists at {imported}. "
        "Fix: choose another --version, or delete that folder first"
    ]


def test_embed_prints_the_vectors_as_json(imported: Path, home: Path) -> None:
    texts = ["a first text about trains", "", "naïve café ünïcode"]
    result = run_semdb(
        "embed", "--model", "cli-tiny", "--precision", "int8", *texts, env={"SEMDB_HOME": str(home)}
    )
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert {k: output[k] for k in ("model", "version", "provider", "precision", "dimension")} == {
        "model": "cli-tiny",
        "version": "1",
        "provider": "cpu",
        "precision": "int8",
        "dimension": 32,
    }
    assert output["kind"] == "document" and output["truncated"] == 0
    vectors = np.array(output["vectors"], dtype=np.float32)
    expected = Embedder.load(imported, provider="cpu", precision="int8").embed(texts)
    assert vectors.shape == (3, 32)
    assert np.array_equal(vectors, expected)  # the printed digits read back exactly

    query = run_semdb("embed", "--model", str(imported), "--query", "x", env={"SEMDB_HOME": "/"})
    assert json.loads(query.stdout)["kind"] == "query"


def test_embed_errors_are_one_line_with_the_fix(imported: Path, home: Path) -> None:
    env = {"SEMDB_HOME": str(home)}
    missing = run_semdb("embed", "--model", "no-such-model", "x", env=env)
    assert missing.returncode == 1
    (line,) = missing.stderr.strip().splitlines()
    assert "no model named 'no-such-model'" in line and "models: cli-tiny" in line
    assert "Fix: import it" in line

    bad_bytes = subprocess.run(
        [sys.executable, "-m", "semdb", "embed", "--model", "cli-tiny", "fine", b"caf\xe9"],
        capture_output=True,
        env={**os.environ, **env},
        check=False,
    )
    assert bad_bytes.returncode == 1
    assert b"text 1 is not valid UTF-8" in bad_bytes.stderr
    assert b"Traceback" not in bad_bytes.stderr

    if not cuda_listed():
        cuda = run_semdb("embed", "--model", "cli-tiny", "--provider", "cuda", "x", env=env)
        assert cuda.returncode == 1
        (line,) = cuda.stderr.strip().splitlines()
        assert "CUDA was asked for but cannot run" in line
        assert "pip install 'semdb[gpu]'" in line


def test_import_keeps_the_bundle_when_the_database_is_unreachable(
    engine: sa.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = {"SEMDB_HOME": str(tmp_path), "SEMDB_DATABASE_URL": BAD_URL}
    result = run_semdb(
        "model", "import", str(tiny_model_dir), "--name", "offline", "--precision", "fp32", env=env
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert f"the bundle is saved at {tmp_path / 'models' / 'offline' / '1'}" in line
    assert "then run: semdb model register offline@1" in line
    assert (tmp_path / "models" / "offline" / "1" / "model.onnx").is_file()

    listed = run_semdb("model", "list", env={**env, "COLUMNS": "200"})
    assert listed.returncode == 0
    assert "offline" in listed.stdout and "registry not read: cannot connect" in listed.stderr

    registered = run_semdb("model", "register", "offline@1", env={"SEMDB_HOME": str(tmp_path)})
    assert registered.returncode == 0, registered.stderr
    assert "registered in the database" in registered.stdout


def test_import_without_the_training_extra_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "from semdb.cli import main\n"
        "sys.argv = ['semdb', 'model', 'import']\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "SEMDB_HOME": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "importing a model needs torch and optimum" in line
    assert "Fix: install the training extra: pip install 'semdb[train]'" in line


def test_import_of_the_default_model_again_only_registers_it(
    engine: sa.Engine, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Deployments run `semdb model import` on every start: the second time it must succeed
    without exporting (here the store holds a bundle under the default model's name)."""
    from semdb.bundles import DEFAULT_MODEL
    from training.export import export_bundle

    home = tmp_path / "home"
    export_bundle(
        tiny_model_dir,
        home / "models" / DEFAULT_MODEL / "1",
        name=DEFAULT_MODEL,
        version="1",
        precisions=("fp32",),
    )
    before = sorted(p.name for p in (home / "models" / DEFAULT_MODEL).iterdir())
    result = run_semdb("model", "import", env={"SEMDB_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert f"{DEFAULT_MODEL} 1 is already in the store" in result.stdout
    assert "in the database as model id" in result.stdout
    assert sorted(p.name for p in (home / "models" / DEFAULT_MODEL).iterdir()) == before


def test_import_into_a_fresh_database_creates_semdb_schema_and_registers(
    tiny_model_dir: Path, tmp_path: Path, empty_database_url: URL
) -> None:
    """A new user's first command: a fresh SEMDB_HOME and a database semdb never migrated.
    The bundle is saved, semdb's schema created (as `semdb db upgrade` would) and the model
    registered; `semdb model list` then reads it from the registry."""
    env = {"SEMDB_HOME": str(tmp_path), "SEMDB_DATABASE_URL": libpq_uri(empty_database_url)}
    result = run_semdb(
        "model", "import", str(tiny_model_dir), "--name", "first", "--precision", "fp32", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "created semdb's schema" in result.stdout
    assert "registered in the database as model id" in result.stdout
    listed = run_semdb("model", "list", env={**env, "COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "first" in line)
    assert "registered" in row
    status = run_semdb("db", "status", env={**env, "COLUMNS": "200"})
    assert "up to date" in status.stdout, status.stdout + status.stderr
