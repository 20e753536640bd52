"""The model registry (semdb.models) on the real test database."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import semdb
from semdb.bundles import Bundle, Manifest
from semdb.bundles.registry import (
    activate,
    get_registered,
    list_registered,
    record_metrics,
    register_bundle,
)
from semdb.errors import BundleError, SchemaNotReadyError


def renamed(tiny_bundle: Path, tmp_path: Path, name: str, version: str) -> Bundle:
    folder = Path(shutil.copytree(tiny_bundle, tmp_path / f"{name}-{version}"))
    replace(Manifest.load(folder), name=name, version=version).save(folder)
    return Bundle.load(folder)


def test_register_is_idempotent_and_pins_the_weights(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = renamed(tiny_bundle, tmp_path, "reg-a", "1")
    row = register_bundle(engine, bundle)
    assert (row.name, row.version, row.dimension, row.pooling) == ("reg-a", "1", 32, "mean")
    assert (row.normalize, row.max_tokens, row.active) == (True, 64, False)
    assert row.onnx_sha256 == bundle.onnx_sha256 and row.metrics == {}
    assert register_bundle(engine, bundle).id == row.id

    other = Manifest.load(bundle.path)
    files = dict(other.files, **{"model.onnx": "f" * 64})
    impostor = Bundle(bundle.path, replace(other, files=files))
    with pytest.raises(BundleError, match="already registered with other weights"):
        register_bundle(engine, impostor)
    assert get_registered(engine, "reg-a", "1").onnx_sha256 == bundle.onnx_sha256


def test_one_active_version_per_name_and_metrics_merge(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    first = register_bundle(engine, renamed(tiny_bundle, tmp_path, "reg-b", "1"), activate=True)
    assert first.active
    register_bundle(engine, renamed(tiny_bundle, tmp_path, "reg-b", "2"))
    assert activate(engine, "reg-b", "2").active
    assert not get_registered(engine, "reg-b", "1").active

    record_metrics(engine, "reg-b", "2", {"ndcg@10": 0.71})
    row = record_metrics(engine, "reg-b", "2", {"mrr@10": 0.66})
    assert row.metrics == {"ndcg@10": 0.71, "mrr@10": 0.66}
    names = [(r.name, r.version) for r in list_registered(engine)]
    assert ("reg-b", "1") in names and ("reg-b", "2") in names
    with pytest.raises(BundleError, match="model reg-b version 3 is not registered"):
        record_metrics(engine, "reg-b", "3", {})


def test_a_connection_in_a_transaction_is_used_as_is(
    engine: sa.Engine, tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = renamed(tiny_bundle, tmp_path, "reg-c", "1")
    with engine.connect() as connection:
        transaction = connection.begin()
        register_bundle(connection, bundle)
        transaction.rollback()
    with pytest.raises(BundleError, match="not registered"):
        get_registered(engine, "reg-c", "1")


def test_an_unmigrated_database_says_to_upgrade(empty_database_url: URL, tiny_bundle: Path) -> None:
    engine = semdb.create_engine(empty_database_url, preflight=False)
    try:
        with pytest.raises(SchemaNotReadyError, match="Fix: run: semdb db upgrade"):
            register_bundle(engine, Bundle.load(tiny_bundle))
    finally:
        engine.dispose()
