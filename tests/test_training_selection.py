"""``semdb train --search``: a model selection whose Optuna study lives in semdb's PostgreSQL.

Through the command line, in new processes, with the tiny model and tiny data: trials run
and are stored in the database's own schema; a search killed midway continues (the killed
trial is marked failed and run again, once, nothing else repeats); two processes share one
study; bad input is refused before anything trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from semdb.errors import SelectionError
from training.selection import SearchSpace, hold_out_test, query_folds

from .conftest import run_semdb
from .tiny_retrieval import tiny_retrieval_set

ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
TINY_SPACE = """
[learning_rate]
low = 1e-4
high = 3e-3
log = true
[batch_size]
choices = [8, 16]
[max_steps]
low = 4
high = 8
[max_seq_length]
value = 16
[hard_negatives]
choices = [0, 1]
"""


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    with path.open("w") as handle:
        for pair in tiny_retrieval_set(120).pairs():
            handle.write(json.dumps({"query": pair.anchor, "positive": pair.positive}) + "\n")
    return path


@pytest.fixture(scope="module")
def space_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.toml"
    path.write_text(TINY_SPACE)
    return path


def search_args(
    pairs: Path, output: Path, model: Path, space: Path, study: str, trials: int
) -> list[str]:
    return [
        "train",
        str(pairs),
        "-o",
        str(output),
        "--base-model",
        str(model),
        "--search",
        str(trials),
        "--study",
        study,
        "--space",
        str(space),
        "--folds",
        "2",
        "--validation-queries",
        "30",
        "--heartbeat",
        "1",
    ]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "semdb", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV},
    )


def load_study(name: str):  # type: ignore[no-untyped-def]
    import optuna

    from training.selection.study import open_storage

    return optuna.load_study(study_name=name, storage=open_storage())


def states(name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in load_study(name).get_trials(deepcopy=False):
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def test_a_killed_search_continues_and_reports(
    pairs_file: Path, space_file: Path, tiny_model_dir: Path, tmp_path: Path, engine: sa.Engine
) -> None:
    run = tmp_path / "run"
    args = search_args(pairs_file, run, tiny_model_dir, space_file, "resume-me", trials=3)
    first = start(args)
    killed_number = None
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.3)
            try:
                trials = load_study("resume-me").get_trials(deepcopy=False)
            except KeyError:  # the study does not exist yet
                continue
            done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
            running = [t for t in trials if t.state.name == "RUNNING"]
            if done and running:
                killed_number = running[0].number
                first.send_signal(signal.SIGKILL)  # midway through its second trial
                break
    finally:
        first.wait(timeout=60)
    assert killed_number is not None, first.stderr.read()[-3000:] if first.stderr else ""
    assert states("resume-me").get("RUNNING") == 1  # the dead process's trial, not yet stale

    again = run_semdb(*args, env=ENV, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]

    trials = load_study("resume-me").get_trials(deepcopy=False)
    by_state: dict[str, list[int]] = {}
    for trial in trials:
        by_state.setdefault(trial.state.name, []).append(trial.number)
    # The killed trial is failed, not lost: run again once, with its parameters
    assert by_state["FAIL"] == [killed_number]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_number]
    assert len(retries) == 1 and retries[0].state.name in ("COMPLETE", "PRUNED")
    killed = next(t for t in trials if t.number == killed_number)
    assert retries[0].params == killed.params
    assert len(by_state.get("COMPLETE", [])) + len(by_state.get("PRUNED", [])) == 3
    assert "RUNNING" not in by_state and "WAITING" not in by_state

    # The study is in semdb's database, in a schema of its own
    with engine.connect() as connection:
        tables = connection.execute(
            sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": "semdb_optuna"},
        ).scalars()
        assert {"studies", "trials", "trial_params"} <= set(tables)

    report = json.loads((run / "selection.json").read_text())
    _, test, _ = hold_out_test(str(pairs_file))  # what the search never saw
    assert [t["number"] for t in report["trials"]] == sorted(t.number for t in trials)
    assert report["folds"] == 2
    chosen = report["chosen"]
    best = max(t["mean"] for t in report["trials"] if t["state"] == "complete")
    assert chosen["validation_ndcg@10"]["mean"] == best
    assert len(chosen["fold_scores"]) == 2 and chosen["validation_ndcg@10"]["std"] >= 0
    assert 0 <= report["test"]["metrics"]["ndcg@10"] <= 1 and report["test"]["queries"] == len(
        test.query_ids
    )
    assert (run / "selection.png").stat().st_size > 10_000
    assert (run / "model" / "modules.json").is_file()  # a run like any other: semdb export
    summary = json.loads((run / "training.json").read_text())
    assert summary["config"]["learning_rate"] == chosen["config"]["learning_rate"]
    assert summary["result"]["steps"] == chosen["config"]["max_steps"]
    assert f"retry of {killed_number}" in again.stdout and "chosen" in again.stdout


def test_two_processes_share_one_study(
    pairs_file: Path, space_file: Path, tiny_model_dir: Path, tmp_path: Path, engine: sa.Engine
) -> None:
    processes = [
        start(search_args(pairs_file, tmp_path / name, tiny_model_dir, space_file, "shared", 4))
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    ran = [int(out.split("this process ran ")[1].split()[0]) for out, _ in outputs]
    trials = load_study("shared").get_trials(deepcopy=False)
    assert sum(ran) == 4 == len(trials)  # none twice, none lost
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["process"] for t in trials}) == len([r for r in ran if r])
    # exactly one process retrains the chosen configuration and reports
    reported = [(tmp_path / name / "selection.json").is_file() for name in ("a", "b")]
    assert sorted(reported) == [False, True]
    assert sum("another process of this study retrains" in out for out, _ in outputs) == 1


def bad(tmp_path: Path, pairs: Path, model: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    result = run_semdb(
        "train",
        str(pairs),
        "-o",
        str(tmp_path / "run"),
        "--base-model",
        str(model),
        *extra,
        env=ENV,
        timeout=300,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "trials").exists()  # nothing trained
    return result


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[learning_rate]\nlow = 1e-3\nhigh = 1e-5\n", "the range is inverted (low 0.001 > high"),
        ("[max_steps]\nlow = 50\nhigh = 50\n", "the range is empty (low = high = 50)"),
        ("[batch_size]\nchoices = []\n", "the list of choices is empty"),
        ("[temperature]\nvalue = 0.05\n", "'temperature', which is not a parameter"),
    ],
)
def test_a_bad_search_space_is_refused_before_training(
    toml: str, expected: str, pairs_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.toml"
    space.write_text(toml)
    result = bad(tmp_path, pairs_file, tiny_model_dir, "--search", "3", "--space", str(space))
    assert expected in result.stderr and "Fix: " in result.stderr


def test_more_folds_than_queries_is_refused(
    pairs_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    result = bad(tmp_path, pairs_file, tiny_model_dir, "--search", "3", "--folds", "500")
    pool, _, _ = hold_out_test(str(pairs_file))
    assert f"--folds 500 is more than the {len(pool.query_ids)} training queries" in result.stderr
    assert "Fix: give --folds 5 or fewer" in result.stderr


def test_a_study_with_another_space_is_refused(
    pairs_file: Path, space_file: Path, tiny_model_dir: Path, tmp_path: Path, engine: sa.Engine
) -> None:
    from training.config import TrainConfig
    from training.selection.search import SelectionOptions, open_search, plan

    pool, _, _ = hold_out_test(str(pairs_file))
    base = TrainConfig(output_dir=tmp_path / "first", base_model=str(tiny_model_dir))
    options = SelectionOptions(trials=3, study="taken", space=SearchSpace.load(space_file), folds=2)
    open_search(base, options, plan(pool, base, options, 0.05))  # the study, with its space

    other = tmp_path / "other.toml"
    other.write_text(TINY_SPACE.replace("high = 8", "high = 9"))
    args = ["--search", "3", "--study", "taken", "--space", str(other), "--folds", "2"]
    result = bad(tmp_path, pairs_file, tiny_model_dir, *args)
    assert "the study 'taken' exists with another search space" in result.stderr
    assert '"max_steps": {"high": 9, "low": 4}' in result.stderr
    assert "Fix: give another --study name" in result.stderr
    # the same space with other folds is refused too (scores would not compare)
    same = ["--search", "3", "--study", "taken", "--space", str(space_file), "--folds", "3"]
    assert (
        "exists with another number of folds"
        in bad(tmp_path, pairs_file, tiny_model_dir, *same).stderr
    )


def test_space_defaults_and_overrides() -> None:
    space = SearchSpace.from_mapping({"batch_size": {"value": 32}})
    assert space.parameters["batch_size"].value == 32
    assert space.parameters["learning_rate"].log  # the default range stays
    with pytest.raises(SelectionError, match="a log range must start above 0"):
        SearchSpace.from_mapping({"warmup_ratio": {"low": 0.0, "high": 0.1, "log": True}})
    with pytest.raises(SelectionError, match="outside what a training run can use"):
        SearchSpace.from_mapping({"negative_margin": {"low": 0.0, "high": 1.5}})


def test_folds_keep_a_query_and_its_documents_on_one_side() -> None:
    data = tiny_retrieval_set(40)
    # two queries share a document: they must land in the same fold
    first, second = data.query_ids[:2]
    data.qrels[second] = dict(data.qrels[first])
    folds = query_folds(data, 4, seed=3)
    seen: list[str] = []
    for train, validation in folds:
        assert not set(train.query_ids) & set(validation.query_ids)
        held_docs = {d for q in validation.query_ids for d in validation.qrels[q]}
        assert not held_docs & {d for q in train.query_ids for d in train.qrels[q]}
        seen += validation.query_ids
    assert sorted(seen) == sorted(data.query_ids)


def test_a_search_does_not_replace_a_plain_run(
    pairs_file: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "run" / "model").mkdir(parents=True)  # an earlier `semdb train` run
    result = bad(tmp_path, pairs_file, tiny_model_dir, "--search", "3")
    assert "holds an earlier training run" in result.stderr
