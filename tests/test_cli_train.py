"""``semdb train`` and ``semdb eval`` as users type them (new processes, tiny model, tiny data)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from .conftest import run_semdb
from .tiny_retrieval import tiny_retrieval_set, write_beir_folder

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # the tiny model gains nothing from threads


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with path.open("w") as handle:
        for pair in tiny_retrieval_set(160).pairs():
            handle.write(json.dumps({"query": pair.anchor, "positive": pair.positive}) + "\n")
    return path


def tiny_train_args(pairs: Path, output: Path, model: Path) -> list[str]:
    return [
        "train",
        str(pairs),
        "-o",
        str(output),
        "--base-model",
        str(model),
        "--max-steps",
        "6",
        "--batch-size",
        "8",
        "--eval-steps",
        "3",
        "--validation-fraction",
        "0.2",
        "--lr",
        "1e-3",
    ]


def test_train_then_eval_the_checkpoint(
    pairs_file: Path, tiny_model_dir: Path, tmp_path: Path, engine: sa.Engine
) -> None:
    run = tmp_path / "run"
    args = tiny_train_args(pairs_file, run, tiny_model_dir)
    trained = run_semdb(*args, env=ONE_THREAD, timeout=300)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "trained 6 steps" in trained.stdout
    assert re.search(r"validation nDCG@10 \(\d+ queries\): 0\.\d{4} -> 0\.\d{4}", trained.stdout)
    summary = json.loads((run / "training.json").read_text())
    assert summary["result"]["steps"] == 6 and summary["result"]["world_size"] == 1
    assert (run / "model" / "modules.json").is_file()

    again = run_semdb(*args)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "holds an earlier training run" in again.stderr
    assert "Fix: continue it with --resume" in again.stderr

    beir = write_beir_folder(tiny_retrieval_set(60, offset=300), tmp_path / "beir")
    report = tmp_path / "eval.json"
    scored = run_semdb(
        "eval",
        str(run / "model"),
        str(beir),
        "--baseline",
        str(tiny_model_dir),
        "--json",
        str(report),
        env={"SEMDB_HOME": str(tmp_path / "home"), **ONE_THREAD},
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "ndcg@10" in scored.stdout and "pgvector" in scored.stdout
    results = json.loads(report.read_text())
    assert [m["model"] for m in results["models"]] == [str(tiny_model_dir), str(run / "model")]
    assert all(m["documents"] == 60 for m in results["models"])
    assert all(0 <= m["metrics"]["ndcg@10"] <= 1 for m in results["models"])
    assert results["models"][0]["encoder"].startswith("torch")


def test_bad_data_gives_one_line_with_the_fix(tmp_path: Path) -> None:
    result = run_semdb("train", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "is neither a folder, a file nor an SQL query. Fix: give a BEIR folder" in result.stderr


def test_without_the_training_extra_the_commands_say_how_to_get_it(pairs_file: Path) -> None:
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "from semdb.cli import main\n"
        f"sys.argv = ['semdb', 'train', {str(pairs_file)!r}]\nmain()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1
    assert "this command needs the training extra (torch is not installed)" in result.stderr
    assert "Fix: install the training extra: pip install 'semdb[train]'" in result.stderr


@pytest.mark.slow
def test_the_same_command_runs_under_torchrun_on_two_cpu_processes(
    pairs_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    assert torchrun is not None
    run = tmp_path / "ddp"
    args = tiny_train_args(pairs_file, run, tiny_model_dir)
    result = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "semdb", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained 6 steps") == 1  # only the first process reports
    summary = json.loads((run / "training.json").read_text())
    assert summary["result"]["world_size"] == 2
    assert summary["result"]["replicas_in_sync"] is True  # DDP kept both copies equal
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last_epoch = max(r["epoch"] for r in records)
    # 128 training pairs, 8 per process and step, 2 processes: 6 steps are 0.75 of an epoch
    assert last_epoch == pytest.approx(0.75)
