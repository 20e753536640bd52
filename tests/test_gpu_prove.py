"""bench/gpu: the device proof, end to end on the CPU (its --dry-run), so it cannot rot.

The same commands the device runs: prepare.py splits a payload into call-sized parts, each
call's folder is received into the store, prove.sh rebuilds and checks it, then runs every
step (provider, parity, throughput, nDCG, pytest -m gpu, semdb train) on the CPU provider.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_device_proof_runs_end_to_end_on_the_cpu(
    tiny_model_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    prepared = subprocess.run(
        [
            sys.executable,
            "bench/gpu/prepare.py",
            "--dry-run",
            "--out",
            str(tmp_path / "gpu"),
            "--tiny-model",
            str(tiny_model_dir),
            "--tiny-bundle",
            str(tiny_bundle),
            "--part-size",
            "256KiB",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    calls = re.findall(r'carry=\["([^"]+)"\]', prepared.stdout)
    assert len(calls) >= 2, prepared.stdout  # the payload really travels in parts
    assert "&& bash bench/gpu/prove.sh" in prepared.stdout.splitlines()[-2]

    store = tmp_path / "store"
    for call in calls:
        received = subprocess.run(
            [sys.executable, "bench/gpu/parts.py", "receive", call, str(store / "parts")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert received.returncode == 0, received.stderr
    assert "missing: none" in received.stdout

    out = tmp_path / "out"
    proved = subprocess.run(
        ["bash", "bench/gpu/prove.sh", "--dry-run"],
        cwd=ROOT,
        env={
            **env,
            "PYTHON": sys.executable,
            "SEMDB_GPU_STORE": str(store),
            "ORT_TARGET": str(store / "ortgpu"),
            "SITE_TARGET": str(store / "site"),
            "OUT": str(out),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proved.returncode == 0, proved.stdout[-4000:] + proved.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu-logs.txt",
        "gpu-proof.json",
        "gpu-throughput.json",
    ]
    steps = json.loads((out / "gpu-proof.json").read_text())["steps"]
    assert list(steps) == ["env", "provider", "parity", "throughput", "ndcg", "pytest", "train"]
    assert all(step["ok"] for step in steps.values()), steps
    assert steps["provider"]["session_providers"][0] == "CPUExecutionProvider"
    assert steps["parity"]["ort_fp16_vs_reference"]["min"] >= 0.999
    assert steps["parity"]["torch_fp32_here_vs_reference"]["min"] >= 0.9999
    best = steps["throughput"]["best"]
    assert len(best) == 5 and all(entry["sentences_per_s"] > 0 for entry in best.values())
    assert 0 < steps["ndcg"]["ort_fp16"] <= 1
    assert "skipped" in steps["pytest"]["summary"]  # no CUDA here: the GPU tests skip cleanly
    assert steps["pytest"]["counts"].get("skipped", 0) >= 3
    assert steps["train"]["steps"] == 2
    throughput = json.loads((out / "gpu-throughput.json").read_text())
    assert set(throughput["per_batch"]["ort fp16, io binding (inputs on device)"]) == {"4", "8"}
    assert "=== GPU proof (DRY RUN, CPU)" in proved.stdout
