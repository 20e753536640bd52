"""Fine-tuning that keeps what the base model knew: scores per set, the blend, the guard.

The tiny model (random weights, real tokenizer) trained at a high learning rate forgets: its
nDCG@10 on a held-out set of other sentences falls by several points, which is what the blend
and the activation guard are for. Everything runs as users type it (new processes).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from .conftest import run_semdb
from .tiny_retrieval import tiny_retrieval_set, write_beir_folder

ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("forgetting-data")
    pairs = root / "pairs.jsonl"
    with pairs.open("w") as handle:
        for pair in tiny_retrieval_set(160).pairs():
            handle.write(json.dumps({"query": pair.anchor, "positive": pair.positive}) + "\n")
    general = write_beir_folder(tiny_retrieval_set(60, offset=300), root / "general")
    in_domain = write_beir_folder(tiny_retrieval_set(40, offset=360), root / "in-domain")
    no_qrels = root / "no-qrels"
    shutil.copytree(general, no_qrels)
    shutil.rmtree(no_qrels / "qrels")
    return {"pairs": pairs, "general": general, "in_domain": in_domain, "no_qrels": no_qrels}


def train_args(data: dict[str, Path], output: Path, model: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(data["pairs"]),
        "-o",
        str(output),
        "--base-model",
        str(model),
        "--max-steps",
        "12",
        "--batch-size",
        "8",
        "--eval-steps",
        "6",
        "--validation-fraction",
        "0.2",
        "--lr",
        "1e-2",  # high on purpose: the tiny model forgets the general set
        *extra,
    ]


@pytest.fixture(scope="module")
def blended_run(
    data: dict[str, Path], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str]:
    run = tmp_path_factory.mktemp("forgetting-run") / "run"
    trained = run_semdb(
        *train_args(data, run, tiny_model_dir, "--general", str(data["general"])),
        env=ONE_THREAD,
        timeout=600,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    return run, trained.stdout


def test_train_with_a_general_set_chooses_a_blend_that_keeps_it(
    blended_run: tuple[Path, str],
) -> None:
    run, stdout = blended_run
    report = json.loads((run / "blend.json").read_text())
    alphas = [point["alpha"] for point in report["curve"]]
    assert alphas == pytest.approx([i / 10 for i in range(11)])  # the whole curve, step 0.1

    def change(alpha: float, name: str) -> float:
        points = {p["alpha"]: p["scores"][name]["ndcg@10"] for p in report["curve"]}
        return 100 * (points[alpha] - points[0.0])

    general = "general/test"
    assert change(1.0, general) < -1.0  # the fine-tuned model forgot (what the test is about)
    chosen = report["chosen"]
    assert 0.0 < chosen < 1.0
    assert change(chosen, general) >= -1.0  # within the bound
    allowed = [a for a in alphas if change(a, general) >= -1.0]
    assert change(chosen, "validation") == max(change(a, "validation") for a in allowed)
    assert report["changes_at_chosen"][general]["role"] == "general"

    assert f"chosen: a = {chosen:.1f}" in stdout
    assert "blend curve" in stdout and "validation (in-domain)" in stdout
    assert (run / "blend.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "blended" / "modules.json").is_file()
    summary = json.loads((run / "training.json").read_text())
    assert summary["blend"]["chosen"] == chosen


def test_the_blend_is_the_interpolation_of_the_weights(
    blended_run: tuple[Path, str], tiny_model_dir: Path
) -> None:
    from safetensors.numpy import load_file

    run, _ = blended_run
    chosen = json.loads((run / "blend.json").read_text())["chosen"]
    base = load_file(str(next(tiny_model_dir.rglob("model.safetensors"))))
    tuned = load_file(str(next((run / "model").rglob("model.safetensors"))))
    blended = load_file(str(next((run / "blended").rglob("model.safetensors"))))
    assert set(blended) == set(tuned) == set(base)
    moved = 0
    for key, value in blended.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        expected = (1 - chosen) * base[key] + chosen * tuned[key]
        np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-6)
        moved += int(not np.allclose(base[key], tuned[key]))
    assert moved > 0  # training changed weights, so the check above could fail


def test_export_takes_the_chosen_blend_or_the_weight_given(
    blended_run: tuple[Path, str], tmp_path: Path
) -> None:
    run, _ = blended_run
    chosen = json.loads((run / "blend.json").read_text())["chosen"]
    default = run_semdb(
        "export", str(run), "--name", "blended", "--out", str(tmp_path / "b1"), "--no-register",
        env=ONE_THREAD, timeout=300,
    )  # fmt: skip
    assert default.returncode == 0, default.stderr[-3000:]
    assert f"exporting the blend a = {chosen:.2f} (semdb train)" in default.stdout
    manifest = json.loads((tmp_path / "b1" / "manifest.json").read_text())
    blend = manifest["provenance"]["blend"]
    assert blend["alpha"] == chosen and blend["chosen_by"] == "semdb train"
    assert blend["sets"]["general/test"]["change_points"] >= -1.0

    unblended = run_semdb(
        "export", str(run), "--name", "tuned", "--out", str(tmp_path / "b2"), "--no-register",
        "--blend", "1", env=ONE_THREAD, timeout=300,
    )  # fmt: skip
    assert unblended.returncode == 0, unblended.stderr[-3000:]
    assert "exporting the blend" not in unblended.stdout

    from semdb.embed import Embedder
    from training.encoders import SentenceTransformerEncoder

    texts = ["a few words about files and paths", "how a subprocess is started"]
    for folder, model in (("b1", run / "blended"), ("b2", run / "model")):
        exported = Embedder.load(tmp_path / folder, provider="cpu", precision="fp32").embed(texts)
        reference = SentenceTransformerEncoder.load(model).embed(texts)
        assert np.min(np.sum(exported * reference, axis=1)) > 0.9999
    b1 = Embedder.load(tmp_path / "b1", provider="cpu", precision="fp32").embed(texts)
    b2 = Embedder.load(tmp_path / "b2", provider="cpu", precision="fp32").embed(texts)
    assert np.min(np.sum(b1 * b2, axis=1)) < 0.999  # two different models


def test_bad_input_fails_before_any_work(
    data: dict[str, Path], blended_run: tuple[Path, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from .tiny_model import build_tiny_sentence_transformer

    run = tmp_path / "run"
    no_qrels = run_semdb(*train_args(data, run, tiny_model_dir, "--general", str(data["no_qrels"])))
    assert no_qrels.returncode == 1 and "Traceback" not in no_qrels.stderr
    assert "no-qrels is not a BEIR folder: test.tsv is missing" in no_qrels.stderr
    assert not run.exists()

    negative = run_semdb(
        *train_args(data, run, tiny_model_dir, "--general", str(data["general"])),
        "--forgetting-bound",
        "-0.5",
    )
    assert negative.returncode == 1 and "Traceback" not in negative.stderr
    assert "the forgetting bound must be 0 or more points of nDCG@10, not -0.5" in negative.stderr
    assert not run.exists()

    trained, _ = blended_run
    wide = build_tiny_sentence_transformer(tmp_path / "wide", hidden_size=48, seed=11)
    other = run_semdb(
        "export", str(trained), "--name", "x", "--out", str(tmp_path / "x"), "--no-register",
        "--blend", "0.5", "--base-model", str(wide),
    )  # fmt: skip
    assert other.returncode == 1 and "Traceback" not in other.stderr
    assert "cannot be blended: they differ in dimension 48 vs 32" in other.stderr
    assert "hidden_size 48 vs 32" in other.stderr
    assert not (tmp_path / "x").exists()

    outside = run_semdb(
        "export", str(trained), "--name", "x", "--out", str(tmp_path / "x"), "--blend", "1.5"
    )
    assert outside.returncode == 1
    assert "between 0 (the base model) and 1 (the fine-tuned model), not 1.5" in outside.stderr
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def forgetful(engine: sa.Engine, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The tiny model as a bundle of its own name, registered."""
    from semdb.bundles import Bundle
    from semdb.bundles.registry import register_bundle
    from training.export import export_bundle

    folder = export_bundle(
        tiny_model_dir,
        tmp_path_factory.mktemp("forgetful") / "forgetful",
        name="forgetful",
        version="1",
        precisions=("fp32",),
    )
    register_bundle(engine, Bundle.load(folder))
    return folder


def test_eval_scores_every_set_beside_the_baseline_and_records_them(
    data: dict[str, Path], forgetful: Path, other_bundles: dict[str, Path], engine: sa.Engine,
    tmp_path: Path,
) -> None:  # fmt: skip
    from semdb.bundles.registry import get_registered

    report = tmp_path / "eval.json"
    scored = run_semdb(
        "eval", str(forgetful), str(data["in_domain"]), "--baseline", str(other_bundles["tiny@2"]),
        "--general", str(data["general"]), "--json", str(report), "--record",
        env={"SEMDB_HOME": str(tmp_path / "home"), **ONE_THREAD}, timeout=300,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    assert "nDCG@10 per set" in scored.stdout
    results = json.loads(report.read_text())
    assert [(s["name"], s["role"]) for s in results["sets"]] == [
        ("in-domain/test", "in-domain"),
        ("general/test", "general"),
    ]
    general = results["sets"][1]["models"]
    assert [m["documents"] for m in general] == [60, 60]
    change = 100 * (general[1]["metrics"]["ndcg@10"] - general[0]["metrics"]["ndcg@10"])
    assert f"{change:+.2f}" in scored.stdout  # the change per set, in the summary

    recorded = get_registered(engine, "forgetful", "1").metrics["eval"]
    assert recorded["general/test"]["role"] == "general"
    assert recorded["in-domain/test"]["role"] == "in-domain"
    assert recorded["general/test"]["ndcg@10"] == pytest.approx(general[1]["metrics"]["ndcg@10"])
    assert recorded["general/test"]["baseline"]["ndcg@10"] == pytest.approx(
        general[0]["metrics"]["ndcg@10"]
    )


def test_activate_shows_the_scores_and_refuses_a_model_that_forgot(
    forgetful: Path, engine: sa.Engine
) -> None:
    from training.publish import record_model_metrics

    record_model_metrics(
        engine,
        "forgetful",
        "1",
        {
            "eval": {
                "faq/test": {
                    "ndcg@10": 0.8010,
                    "role": "general",
                    "queries": 481,
                    "baseline": {"ndcg@10": 0.8294},
                },
                "debdesc/test": {
                    "ndcg@10": 0.7600,
                    "role": "in-domain",
                    "baseline": {"ndcg@10": 0.6950},
                },
            }
        },
    )
    column = "public.nowhere.embedding"
    refused = run_semdb("model", "activate", "forgetful@1", "--column", column)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "faq/test" in refused.stderr and "-2.84" in refused.stderr and "+6.50" in refused.stderr
    assert (
        "forgetful@1 lost more than 1 points of nDCG@10 on a general set: "
        "faq/test -2.84 points (semdb eval)" in refused.stderr
    )
    assert "--force" in refused.stderr

    looser = run_semdb(
        "model", "activate", "forgetful@1", "--column", column, "--forgetting-bound", "3"
    )
    forced = run_semdb("model", "activate", "forgetful@1", "--column", column, "--force")
    for passed in (looser, forced):  # past the check: the next problem is the missing column
        assert passed.returncode == 1
        last = passed.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: ") and "nowhere" in last and "lost more" not in last
    assert "forced: forgetful@1 forgot more than 1 points on faq/test" in forced.stderr
