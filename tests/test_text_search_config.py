"""The embedded server's text search configuration is valid for parallel workers too."""

from __future__ import annotations

import sqlalchemy as sa


def test_parallel_workers_start_with_the_default_text_search_config(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        setting = connection.execute(sa.text("SHOW default_text_search_config")).scalar()
        assert setting in ("pg_catalog.english", "pg_catalog.simple", "english")
        connection.execute(
            sa.text("CREATE TEMP TABLE numbers AS SELECT generate_series(1, 50000) AS n")
        )
        for name, value in {
            "max_parallel_workers_per_gather": "2",
            "parallel_setup_cost": "0",
            "parallel_tuple_cost": "0",
            "min_parallel_table_scan_size": "0",
        }.items():
            connection.execute(sa.text("SELECT set_config(:n, :v, true)"), {"n": name, "v": value})
        # temp tables are never scanned in parallel: use a real one
        connection.execute(sa.text("CREATE TABLE parallel_numbers AS SELECT * FROM numbers"))
        connection.execute(sa.text("ANALYZE parallel_numbers"))
        total = connection.execute(sa.text("SELECT sum(n) FROM parallel_numbers")).scalar()
        connection.execute(sa.text("DROP TABLE parallel_numbers"))
    assert total == 50000 * 50001 // 2
