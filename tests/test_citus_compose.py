"""docker/citus/: the Citus cluster with pgvector (docs/scaling.md), validated offline like
docker/compose.yaml: Compose resolves the file, hadolint passes the Dockerfile."""

from __future__ import annotations

import json
from pathlib import Path

from .test_docker import HADOLINT, ROOT, _compose, needs_compose, needs_hadolint

CITUS = ROOT / "docker" / "citus"


@needs_compose
def test_citus_compose_file_resolves(tmp_path: Path) -> None:
    result = _compose("config", "--format", "json", file=CITUS / "compose.yaml", home=tmp_path)
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert set(services) == {"coordinator", "worker1", "worker2", "setup"}
    nodes = ["coordinator", "worker1", "worker2"]
    assert {services[name]["image"] for name in nodes} == {"semdb-citus:13.0.3-pg17"}
    published = services["coordinator"]["ports"]
    assert [(p["host_ip"], p["published"]) for p in published] == [("127.0.0.1", "5433")]
    assert "ports" not in services["worker1"] and "ports" not in services["worker2"]
    setup = " ".join(services["setup"]["command"])
    assert "citus_add_node('worker1', 5432)" in setup and "CREATE EXTENSION" in setup
    assert set(services["setup"]["depends_on"]) == set(nodes)


@needs_hadolint
def test_citus_dockerfile_passes_hadolint() -> None:
    import subprocess

    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, str(CITUS / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
    assert "postgresql-17-pgvector" in (CITUS / "Dockerfile").read_text()
